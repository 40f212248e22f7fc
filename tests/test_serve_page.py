"""The page of `seglab serve` in a real browser: headless Chromium (the system's) driven by Playwright.

It asks for the token, uploads an ISBI test slice, draws image | mask | overlay, and the mask it
shows and the file its download button saves equal `seglab predict`'s. Nothing is fetched from
anywhere but the server. SEGLAB_SCREENSHOT=PATH also saves the screenshot there (docs/serve.png).
"""
from __future__ import annotations

import base64
import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import SERVE_TOKEN

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    pytest.skip("no chromium on this machine (apt-get install chromium; .ci/run installs it)", allow_module_level=True)

CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]

# A canvas's pixels as a (lossless) PNG data URL: one string crosses to Python, not a million numbers.
READ_CANVAS = "(id) => document.getElementById(id).toDataURL('image/png')"


def canvas_pixels(page, canvas_id: str) -> np.ndarray:
    """(H, W, 4) uint8 of what a canvas of the page shows."""
    data_url = page.evaluate(READ_CANVAS, canvas_id)
    with Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))) as picture:
        return np.asarray(picture.convert("RGBA"))


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        yield chromium
        chromium.close()


def open_page(browser, served, path: str = "/"):
    """A fresh page at `path`, with every request it makes recorded, after giving the token it asks for."""
    page = browser.new_page(viewport={"width": 1320, "height": 900}, accept_downloads=True)
    requested = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto(served.url + path)
    page.wait_for_selector("#token-box:not([hidden])")
    page.fill("#token", SERVE_TOKEN)
    page.click("#token-box button")
    return page, requested


def test_the_page_shows_the_mask_seglab_predict_writes_and_downloads_it(browser, served, serve_images,
                                                                        served_predictions, tmp_path):
    page, requested = open_page(browser, served)
    page.wait_for_selector("#model-line:has-text('unet')")
    page.set_input_files("#file", str(serve_images["whole"]))  # ISBI test slice 00, 512x512
    page.wait_for_selector("#overlay-canvas[data-ready='true']", timeout=60_000)

    model = page.evaluate("() => fetch('/v1/model').then((r) => r.json())")
    colours = {tuple(c["color"]): c["value"] for c in model["classes"]}
    rgb = canvas_pixels(page, "mask-canvas")[..., :3]
    assert set(map(tuple, rgb.reshape(-1, 3))) <= set(colours), "the mask canvas holds colours of no class"
    values = np.zeros(rgb.shape[:2], dtype=np.int64)
    for colour, value in colours.items():
        values[(rgb == colour).all(axis=-1)] = value
    with Image.open(served_predictions["whole"]) as expected:
        assert np.array_equal(values, np.asarray(expected)), "the page shows another mask than seglab predict"

    legend = page.inner_text("#legend")
    assert "255" in legend and "%" in legend
    image_pixels = canvas_pixels(page, "image-canvas")
    assert not np.array_equal(canvas_pixels(page, "overlay-canvas"), image_pixels), "the overlay colours nothing"
    page.fill("#opacity", "0")
    page.dispatch_event("#opacity", "input")
    assert np.array_equal(canvas_pixels(page, "overlay-canvas"), image_pixels), "opacity 0 shows the image alone"
    page.fill("#opacity", "60")
    page.dispatch_event("#opacity", "input")

    with page.expect_download() as download:
        page.click("#download")
    saved = tmp_path / download.value.suggested_filename
    download.value.save_as(saved)
    assert saved.name == "00_mask.png" and saved.read_bytes() == served_predictions["whole"].read_bytes()

    screenshot = tmp_path / "page.png"
    page.screenshot(path=str(screenshot), full_page=True)
    with Image.open(screenshot) as picture:
        pixels = np.asarray(picture.convert("RGB"))
    assert pixels.shape[0] > 500 and pixels.std() > 20 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 500, \
        "the screenshot is blank"
    if os.environ.get("SEGLAB_SCREENSHOT"):
        shutil.copyfile(screenshot, os.environ["SEGLAB_SCREENSHOT"])
    assert all(url.startswith(served.url) or url.startswith(("blob:", "data:")) for url in requested), requested
    page.close()


def test_the_runs_page_lists_the_run_with_its_curves_and_report(browser, served):
    page, requested = open_page(browser, served, "/runs")
    row = page.wait_for_selector("tr[data-run='run']")
    page.wait_for_function("() => document.querySelector(\"tr[data-run='run'] img\")?.naturalWidth > 0")
    assert "val_dice" in row.inner_text() and "epochs" in row.inner_text()
    with page.expect_popup() as popup:
        row.query_selector("a").click()
    popup.value.wait_for_load_state()
    assert "report" in popup.value.title().lower() or popup.value.query_selector("h1") is not None
    assert all(url.startswith(served.url) or url.startswith(("blob:", "data:")) for url in requested), requested
    page.close()
