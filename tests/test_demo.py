"""The demo page: its search function in-process, its API under concurrent clients, a real browser."""
from __future__ import annotations

import importlib.util
import os
import shutil
import socket
from concurrent.futures import ThreadPoolExecutor

import pandas as pd
import pytest
from PIL import Image

from harness import ROOT
from harness.tracking.models import model_info
from tests.conftest import URI

pytestmark = pytest.mark.slow


def load_demo_module():
    spec = importlib.util.spec_from_file_location("demo", ROOT / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def page(served):
    demo = load_demo_module()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    blocks = demo.launch(served["searcher"], model_info(URI), "127.0.0.1", port,
                         prevent_thread_lock=True, quiet=True)
    yield {"demo": demo, "url": f"http://127.0.0.1:{port}/", **served}
    blocks.close()


def test_search_function_in_process(page, tmp_path):
    demo, searcher = page["demo"], page["searcher"]
    item = pd.read_csv(page["catalog"] / "manifest.csv").iloc[4]
    upload = {"path": str(page["catalog"] / item["path"])}  # what Gradio hands over for an upload
    gallery, status, history = demo.run_search(searcher, upload, 5, True, "margin", 0.0, [], "http://shop/",
                                               uploaded={upload["path"]})
    assert len(gallery) == 5 and gallery[0] == (f"http://shop/catalog/{item['item_id']}", gallery[0][1])
    assert gallery[0][1].startswith(f"#1 {item['item_id']}")
    assert "Predicted category: **" + item["category"] in status and history == [item["item_id"]]
    (tmp_path / "notes.jpg").write_text("not an image")
    (tmp_path / "empty.png").write_bytes(b"")
    Image.new("1", (10_000, 10_000)).save(tmp_path / "bomb.png")
    bad_files = [str(tmp_path / name) for name in ("notes.jpg", "empty.png", "bomb.png")]
    for bad in ({"path": bad_files[0]}, {"path": bad_files[1]}, {"path": bad_files[2]},
                {"path": "http://169.254.169.254/latest"}, {"url": "x"}, {"path": upload["path"]}):
        gallery, status, history2 = demo.run_search(searcher, bad, 5, False, "", 0.0, history, uploaded=bad_files)
        assert gallery == [] and status.startswith("**Cannot use this file:**") and history2 == history
    # the catalog image itself is refused as an upload when Gradio did not receive it as one
    assert "not a file uploaded to this page" in demo.run_search(searcher, upload, 5, False, "", 0.0, [])[1]
    assert demo.run_search(searcher, None, 5, False, "", 0.0, [])[0] == []


def raw_call(url: str, data: list) -> tuple[str, object]:
    """The page's public `search` through Gradio's raw HTTP API (what any client can send, no
    gradio_client): POST the inputs, then read the event stream; (event, data) of its last message."""
    import json
    import urllib.request

    data = data + [[], "", "", "", "", 0.5, False, False][max(0, len(data) - 6):]  # no filters, words 0.5, no collapse, one item
    request = urllib.request.Request(url + "gradio_api/call/search", json.dumps({"data": data}).encode(),
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        event_id = json.loads(response.read())["event_id"]
    with urllib.request.urlopen(f"{url}gradio_api/call/search/{event_id}", timeout=60) as response:
        lines = response.read().decode().splitlines()
    event = [line.split(":", 1)[1].strip() for line in lines if line.startswith("event:")][-1]
    payload = [line.split(":", 1)[1].strip() for line in lines if line.startswith("data:")][-1]
    return event, json.loads(payload)


def test_raw_api_never_opens_a_path_the_client_names(page, tmp_path):
    """FileData is only a dict: with or without its `meta` marker, a path Gradio did not receive as an
    upload gets the page's message before any read; the answers are the same whatever the path is."""
    outside = tmp_path / "outside.jpg"  # a real image, outside the catalog and the upload folder
    Image.new("RGB", (64, 64), (200, 30, 30)).save(outside)
    inside = str(page["catalog"] / "images" / "circle_red_0.jpg")
    said = set()
    for path in ("/etc/passwd", "/no/such/file.jpg", "/etc", str(outside), inside, "/tmp/gradio/../../etc/passwd"):
        # without FileData's marker Gradio passes the dict on as it is: the page refuses it
        event, data = raw_call(page["url"], [{"path": path}, "", 3, False, "", 0.0])
        assert event == "complete" and not data[0], (path, data)
        said.add(data[1])
        # with it, Gradio's own check refuses any path outside its upload folder, by name, reading nothing
        event, data = raw_call(page["url"], [{"path": path, "meta": {"_type": "gradio.FileData"}}, "", 3, False, "", 0.0])
        assert event == "error" and data["error"].endswith("because it was not uploaded by a user."), (path, data)
        said.add(data["error"].replace(os.path.abspath(path), "PATH"))
    assert said == {"**Cannot use this file:** not a file uploaded to this page.",
                    "Cannot move PATH to the gradio cache dir because it was not uploaded by a user."}


def test_one_request_cannot_ask_for_unbounded_answers(page):
    """k is bounded (serving.max_k, never more than the catalog) before any work; 0 is refused like -1."""
    limit = page["searcher"].max_k
    assert limit == min(100, len(page["searcher"].catalog))
    for k in (0, -1, 10**8, 10**9, limit + 1, 2.5, "5", True):
        event, (gallery, status, *_) = raw_call(page["url"], [None, "a red circle", k, False, "", 0.0])
        assert event == "complete" and not gallery and status.startswith("**Cannot search:** k must be"), (k, status)
        if isinstance(k, int) and not isinstance(k, bool) and k > 0:
            assert f"between 1 and {limit}" in status


def test_api_serves_concurrent_clients(page):
    """Answers name result images by URL; a client fetches them from the page's /catalog route."""
    import urllib.request

    from gradio_client import Client, handle_file

    paths = [str(page["catalog"] / p) for p in pd.read_csv(page["catalog"] / "manifest.csv")["path"][:20]]

    def client_session(path):
        client = Client(page["url"], verbose=False, download_files=False)
        return [client.predict(handle_file(path), "", 5, False, "", 0.0, api_name="/search") for _ in range(2)]

    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(client_session, paths))
    assert all(len(gallery) == 5 for session in answers for gallery, *_ in session)
    first = answers[0][0][0][0]["image"]["url"]
    assert first.startswith(page["url"] + "catalog/")
    with urllib.request.urlopen(first) as response:
        assert response.headers["content-type"] == "image/jpeg" and Image.open(response).size == (72, 96)


def test_filters_on_the_page_and_through_gradio_client(page):
    from pathlib import Path

    from gradio_client import Client, handle_file

    demo, searcher = page["demo"], page["searcher"]
    # the page's controls and its JSON box make one filters object
    assert demo.page_filters("category", ["square"], "margin", "0.2", "", '{"colour": "blue"}') == \
        {"colour": "blue", "category": ["square"], "margin": {"ge": 0.2}}
    assert demo.page_filters("category", [], "", "", "", "") == {}
    with pytest.raises(demo.BadImage, match="the upper bound must be a number"):
        demo.page_filters("category", [], "margin", "", "cheap", "")
    path = str(page["catalog"] / "images" / "circle_red_0.jpg")
    gallery, status, _ = demo.run_search(searcher, Path(path), 5, False, "", 0.0, [],
                                         filters={"category": ["square"], "colour": "blue"})
    assert len(gallery) == 5 and all(": square / square-blue" in caption for _, caption in gallery)
    assert 'Filters: `{"category": ["square"], "colour": "blue"}`' in status
    client = Client(page["url"], verbose=False, download_files=False)
    gallery, status = client.predict(handle_file(path), "", 5, False, "", 0.0, ["triangle"], "margin", "", "",
                                     '{"colour": "green"}', api_name="/search")
    assert gallery and all(": triangle / triangle-green" in item["caption"] for item in gallery)
    _, status = client.predict(handle_file(path), "", 5, False, "", 0.0, [], "", "", "", '{"size": "M"}',
                               api_name="/search")
    assert status.startswith("**Cannot search:** filter on 'size': not a catalog column")
    # every item (the API's last argument): a resize model's photo is one item, drawn first
    gallery, status = client.predict(handle_file(path), "", 3, False, "", 0.0, [], "", "", "", "", 0.5, False, True,
                                     api_name="/search")
    assert gallery[0]["caption"].startswith("1 item(s) found") and len(gallery) == 4 and "1 item(s) in the photo" in status


def test_public_api_is_search_only_and_a_bad_upload_gets_the_page_message(page, tmp_path):
    from gradio_client import Client, handle_file

    client = Client(page["url"], verbose=False, download_files=False)
    api = client.view_api(print_info=False, return_format="dict")
    assert list(api["named_endpoints"]) == ["/search"] and not api["unnamed_endpoints"]
    (tmp_path / "notes.jpg").write_text("not an image")
    gallery, status = client.predict(handle_file(str(tmp_path / "notes.jpg")), "", 5, False, "", 0.0, api_name="/search")
    assert gallery == [] and status == "**Cannot use this file:** not an image."


def test_no_server_path_in_config_or_answers_and_only_catalog_images_served(page):
    import json
    import urllib.error
    import urllib.request

    from gradio_client import Client, handle_file

    config = urllib.request.urlopen(page["url"] + "config").read().decode()
    client = Client(page["url"], verbose=False, download_files=False)
    answer = json.dumps(client.predict(handle_file(str(page["catalog"] / "images" / "circle_red_0.jpg")), "", 5, False,
                                       "", 0.0, api_name="/search"))
    for text in (config, answer):
        assert str(page["root"]) not in text and "/tmp/gradio" not in text and '"path": "/' not in text

    def status(path):
        try:
            return urllib.request.urlopen(page["url"] + path).status
        except urllib.error.HTTPError as err:
            return err.code

    assert status("catalog/circle-red-0") == 200
    assert status("catalog/..%2F..%2F..%2Fetc%2Fpasswd") == 404 and status("catalog/nope") == 404
    assert status("gradio_api/file=/etc/passwd") == 403
    assert status(f"gradio_api/file={page['catalog']}/images/circle_red_0.jpg") == 403


def test_words_box_only_for_a_backbone_with_a_text_tower(page, served_clip):
    import json
    import urllib.request

    def text_box(url):
        config = json.loads(urllib.request.urlopen(url + "config").read())
        return next(c["props"] for c in config["components"] if c["props"].get("elem_id") == "text")

    demo = page["demo"]
    gallery, status, _ = demo.run_search(served_clip["searcher"], None, 5, False, "", 0.0, [], "http://shop/",
                                         text="a red circle")
    assert len(gallery) == 5 and status.startswith("Top 5 products")
    _, status, _ = demo.run_search(page["searcher"], None, 5, False, "", 0.0, [], "", text="a red circle")
    assert status.startswith("**Cannot search by these words:**") and "no text tower" in status
    # a photo and words: one query, the words weighted (negative: away from them)
    photo = served_clip["catalog"] / "images" / "square_blue_1.jpg"
    gallery, status, _ = demo.run_search(served_clip["searcher"], photo, 5, False, "", 0.0, [], "http://shop/",
                                         text="a red circle", text_weight=-0.5)
    expected = served_clip["searcher"].search_terms([{"image": photo}, {"text": "a red circle", "weight": -0.5}], 5)
    assert [url for url, _ in gallery] == [demo.image_url("http://shop/", i) for i in expected["item_id"]]
    assert status.startswith("Top 5 products for the photo and “a red circle” (weight -0.5)")
    _, status, _ = demo.run_search(page["searcher"], photo, 5, False, "", 0.0, [], "", text="a red circle")
    assert "term 2 (text 'a red circle')" in status and "no text tower" in status
    assert text_box(page["url"])["visible"] is False
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    clip_page = demo.launch(served_clip["searcher"], model_info(URI), "127.0.0.1", port,
                            prevent_thread_lock=True, quiet=True)
    try:
        assert text_box(f"http://127.0.0.1:{port}/")["visible"] is True
        from gradio_client import Client, handle_file

        client = Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=False)
        gallery, status = client.predict(handle_file(str(photo)), "a red circle", 5, False, "", 0.0, [], "", "", "",
                                         "", -0.5, api_name="/search")
        assert [item["caption"].split(":")[0] for item in gallery] == \
            [f"#{n} {i}" for n, i in enumerate(expected["item_id"], start=1)]
        assert "(weight -0.5)" in status
    finally:
        clip_page.close()


def test_page_in_headless_chromium(page):
    driver_path = shutil.which("chromedriver")
    if not (shutil.which("chromium") and driver_path):
        pytest.skip("Debian chromium + chromium-driver not installed (make test installs them as root)")
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--no-first-run"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(driver_path), options=options)
    try:
        driver.get(page["url"])
        upload = WebDriverWait(driver, 60).until(
            ec.presence_of_element_located((By.CSS_SELECTOR, "#query input[type=file]")))
        upload.send_keys(str(page["catalog"] / "images" / "square_blue_1.jpg"))
        WebDriverWait(driver, 60).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results img")) >= 5)
        assert "Top 5 products" in driver.find_element(By.ID, "status").text
        # the result thumbnails are loaded from the page's catalog route
        sources = [img.get_attribute("src") for img in driver.find_elements(By.CSS_SELECTOR, "#results img")]
        assert sources and all("/catalog/" in src for src in sources)
        assert driver.execute_script("return document.querySelector('#results img').naturalWidth") > 0
        # a catalog example is searched by its id
        driver.find_elements(By.CSS_SELECTOR, "#examples img")[0].click()
        WebDriverWait(driver, 60).until(lambda d: "Query: catalog example" in d.find_element(By.ID, "status").text)
    finally:
        driver.quit()
