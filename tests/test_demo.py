"""The demo page: its search function in-process, its API under concurrent clients, a real browser."""
from __future__ import annotations

import importlib.util
import shutil
import socket
from concurrent.futures import ThreadPoolExecutor

import pandas as pd
import pytest
from PIL import Image

from harness import ROOT, tracking
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
    blocks = demo.build_demo(served["searcher"], tracking.model_info(URI))
    blocks.queue(default_concurrency_limit=4).launch(
        server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
        allowed_paths=[str(served["catalog"] / "images")])
    yield {"demo": demo, "url": f"http://127.0.0.1:{port}/", **served}
    blocks.close()


def test_search_function_in_process(page, tmp_path):
    demo, searcher = page["demo"], page["searcher"]
    item = pd.read_csv(page["catalog"] / "manifest.csv").iloc[4]
    gallery, status, history = demo.run_search(searcher, str(page["catalog"] / item["path"]), 5, True, "margin", 0.0, [])
    assert len(gallery) == 5 and gallery[0][1].startswith(f"#1 {item['item_id']}")
    assert "Predicted category: **" + item["category"] in status and history == [item["item_id"]]
    (tmp_path / "notes.jpg").write_text("not an image")
    (tmp_path / "empty.png").write_bytes(b"")
    Image.new("1", (10_000, 10_000)).save(tmp_path / "bomb.png")
    for bad in ("notes.jpg", "empty.png", "bomb.png"):
        gallery, status, history2 = demo.run_search(searcher, str(tmp_path / bad), 5, False, "", 0.0, history)
        assert gallery == [] and status.startswith("**Cannot use this file:**") and history2 == history
    assert demo.run_search(searcher, None, 5, False, "", 0.0, [])[0] == []


def test_api_serves_concurrent_clients(page):
    from gradio_client import Client, handle_file

    paths = [str(page["catalog"] / p) for p in pd.read_csv(page["catalog"] / "manifest.csv")["path"][:20]]

    def client_session(path):
        client = Client(page["url"], verbose=False)
        return [client.predict(handle_file(path), 5, False, "", 0.0, api_name="/search") for _ in range(2)]

    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(client_session, paths))
    assert all(len(gallery) == 5 for session in answers for gallery, *_ in session)


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
    finally:
        driver.quit()
