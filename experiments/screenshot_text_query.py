"""A page screenshot of a search by words against a served OpenCLIP model (headless Chromium).

    .venv/bin/python experiments/screenshot_text_query.py [--weights random] [--query "..."] [--limit 300]

Runs the harness on the products catalog with an OpenCLIP backbone (random weights unless told: no
download here, so the ranking is not meaningful, only the page), serves the registered model with
demo.py's launch() on 127.0.0.1, types the words into the page and saves
experiments/screenshots/text_query.png.
"""
from __future__ import annotations

import argparse
import importlib.util
import shutil
import socket
import tempfile
import time
from pathlib import Path

from harness import ROOT
from harness.tracking.models import load_served
from bench import DEFAULT_CATALOG
from harness.config import compose_config
from harness.run import run

URI = "models:/fashion-visual-search@champion"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--arch", default="ViT-B-32")
    parser.add_argument("--weights", default="random")
    parser.add_argument("--query", default="red floral summer dress")
    parser.add_argument("--limit", type=int, default=300)
    parser.add_argument("--out", type=Path, default=ROOT / "experiments" / "screenshots" / "text_query.png")
    args = parser.parse_args()
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_config("dataset=products", f"dataset.root={DEFAULT_CATALOG}", f"dataset.limit={args.limit}",
                             "backbone=open_clip", f"backbone.arch={args.arch}", f"backbone.weights={args.weights}",
                             f"paths.root={tmp}", "extract.progress=false")
        run(cfg)
        _, searcher, info = load_served(cfg)
        spec = importlib.util.spec_from_file_location("demo", ROOT / "demo.py")
        demo = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(demo)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        page = demo.launch(searcher, info, "127.0.0.1", port, prevent_thread_lock=True, quiet=True)
        options = webdriver.ChromeOptions()
        options.binary_location = shutil.which("chromium")
        for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--disable-background-networking", "--window-size=1400,950"):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=webdriver.ChromeService(shutil.which("chromedriver")), options=options)
        try:
            driver.get(f"http://127.0.0.1:{port}/")
            box = WebDriverWait(driver, 60).until(lambda d: d.find_element(By.CSS_SELECTOR, "#text textarea"))
            box.send_keys(args.query, Keys.ENTER)
            WebDriverWait(driver, 60).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results img")) >= 5)
            time.sleep(2)  # thumbnails finish loading
            args.out.parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(args.out))
        finally:
            driver.quit()
            page.close()
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
