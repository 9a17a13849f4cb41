"""`sdcpp serve`'s page at /: served self-contained (nothing loaded from elsewhere), and driven in Debian's
headless Chromium (Selenium and chromedriver) against a server over the tiny synthetic Flux parts: Generate
shows the live progress and preview, then the image the Context makes; Stop cancels a long job. The server
has an API key, which the page sends from its key field. Screenshots go to the test's tmp_path."""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import time

import numpy as np
import pytest

import sdcpp_py

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
Image = pytest.importorskip("PIL.Image")

from servers import serving, wait_for  # noqa: E402

SIZE = 64
STEPS = 4
LONG = 5000  # steps of a job that runs until it is stopped
KEY = "page-test-key"


@pytest.fixture(scope="module")
def served(flux_parts_with_encoder):
    with sdcpp_py.Context(**flux_parts_with_encoder, n_threads=2) as context:
        yield context


@pytest.fixture(scope="module")
def base(served):
    with serving(served, api_key=KEY, queue_size=1) as url:
        yield url


def test_the_page_is_served_without_a_key_and_loads_nothing_from_elsewhere(base):
    response = httpx.get(base + "/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    page = response.text
    assert "<title>sdcpp-py</title>" in page
    # No absolute addresses at all: no CDN, fonts, scripts or styles from anywhere but this page.
    assert not re.search(r"https?:|wss?:|//[\w.-]+\.\w", page), "the page names an absolute address"
    assert not re.search(r"<script[^>]*\ssrc=|<link\b|@import|url\(", page), "the page loads a resource"
    # The API it calls is addressed relative to the page (so it also works under a proxy's path prefix).
    called = re.findall(r"fetch\(\s*[\"'`]([^\"'`]*)", page)
    assert called and all(not url.startswith("/") for url in called), called
    # The rest of the API wants the key.
    assert httpx.get(base + "/v1/models").status_code == 401


def _chromium():
    browser = next(filter(None, map(shutil.which, ("chromium", "chromium-browser"))), None)
    driver = shutil.which("chromedriver")
    if driver is None and os.path.exists("/usr/lib/chromium/chromedriver"):  # Debian's own place for it
        driver = "/usr/lib/chromium/chromedriver"
    if browser is None or driver is None:
        pytest.skip("Chromium or chromedriver is missing (Debian: apt-get install chromium chromium-driver)")
    return browser, driver


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (the test extra)")
    binary, driver = _chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1200,860"):
        options.add_argument(flag)
    # The driver's path is given, so Selenium looks for (and downloads) nothing.
    chrome = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver))
    try:
        yield chrome
    finally:
        chrome.quit()


def _page(browser):
    """The page's element by id, and its properties by name."""
    def element(id):
        return browser.find_element("id", id)

    def prop(id, name):
        return browser.execute_script(f"return document.getElementById({id!r}).{name}")

    return element, prop


def _type(field, text):
    field.clear()
    field.send_keys(str(text))


def _screenshot(browser, path):
    browser.save_screenshot(str(path))
    print(f"screenshot: {path}")


def _health(base):
    return httpx.get(base + "/health").json()


def test_generate_shows_progress_a_preview_and_the_image(browser, base, served, tmp_path):
    element, prop = _page(browser)
    browser.get(base + "/")
    browser.execute_script("localStorage.clear()")
    browser.get(base + "/")
    # Without the key, the page says the server wants one.
    wait_for(lambda: element("status").get_attribute("data-state") == "failed")
    assert "API key" in element("status").text
    _type(element("apikey"), KEY)
    element("prompt").click()  # leaving the key field stores it and lists the models again
    wait_for(lambda: element("status").get_attribute("data-state") == "idle")
    assert element("served").text == "sdcpp"
    assert element("model-field").get_attribute("hidden") is not None  # one model: no choice to offer

    _type(element("prompt"), "a lighthouse")
    _type(element("width"), SIZE)
    _type(element("height"), SIZE)
    assert prop("size", "value") == ""  # a typed size is "custom"
    _type(element("steps"), STEPS)
    _type(element("seed"), 7)
    assert prop("stop", "disabled")
    element("generate").click()
    wait_for(lambda: (prop("result", "src") or "").startswith("data:image/png;base64,"), 60)

    assert prop("result", "naturalWidth") == SIZE and prop("result", "naturalHeight") == SIZE
    assert (prop("progress", "value"), prop("progress", "max")) == (STEPS, STEPS)
    assert element("progress-text").text.startswith(f"step {STEPS}/{STEPS}")
    assert prop("preview", "src").startswith("data:image/png;base64,")  # previews were shown while it ran
    assert int(prop("preview", "dataset.step")) >= 1
    assert (element("status").get_attribute("data-state"), element("status").text) == ("done", "done, seed 7")
    wait_for(lambda: not prop("generate", "disabled") and prop("stop", "disabled"))
    # The image is the Context's, for the same request.
    data = base64.b64decode(prop("result", "src").split(",", 1)[1])
    with Image.open(io.BytesIO(data)) as picture:
        shown = np.asarray(picture.convert("RGB"))
    np.testing.assert_array_equal(shown, served.txt2img("a lighthouse", width=SIZE, height=SIZE, steps=STEPS,
                                                        seed=7)[0])
    _screenshot(browser, tmp_path / "page_done.png")
    browser.refresh()
    assert prop("apikey", "value") == KEY  # the key is kept in this browser (localStorage)


def test_stop_cancels_the_running_job(browser, base, tmp_path):
    element, prop = _page(browser)
    browser.get(base + "/")
    browser.execute_script(f"localStorage.setItem('sdcpp-api-key', {KEY!r})")
    browser.get(base + "/")
    assert prop("apikey", "value") == KEY
    wait_for(lambda: element("status").get_attribute("data-state") == "idle")
    # A request the server refuses: its message is shown, and the page is ready again.
    _type(element("width"), 65)
    _type(element("height"), SIZE)
    element("generate").click()
    wait_for(lambda: element("status").get_attribute("data-state") == "failed")
    assert "must be multiples of" in element("status").text, element("status").text
    wait_for(lambda: not prop("generate", "disabled") and prop("stop", "disabled"))
    _type(element("width"), SIZE)
    _type(element("steps"), LONG)
    _type(element("seed"), -1)
    element("generate").click()
    wait_for(lambda: prop("progress", "value") >= 2 and prop("preview", "src"), 30)
    assert prop("progress", "max") == LONG
    assert element("status").get_attribute("data-state") == "running"
    assert prop("generate", "disabled") and not prop("stop", "disabled")
    assert _health(base)["running"]
    _screenshot(browser, tmp_path / "page_running.png")
    started = time.monotonic()
    element("stop").click()
    wait_for(lambda: element("status").get_attribute("data-state") == "cancelled", 20)
    assert element("status").text == "cancelled"
    assert time.monotonic() - started < 10
    assert prop("progress", "value") < LONG
    assert not prop("generate", "disabled") and prop("stop", "disabled")
    assert not prop("result", "src")
    wait_for(lambda: not _health(base)["running"] and not _health(base)["queued"])
