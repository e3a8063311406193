"""The demo page in a real headless browser: `sdcore demo` (its gRPC server in the same process,
the shipped model) is started as a command, and Debian's chromium, driven by Playwright, opens
it, types a prompt, generates, downloads the PNG and reads its `parameters` chunk back; then
the page's messages for invalid input, a cancelled job and a server that is not there.

A screenshot of the page with its result is saved to test-artifacts/demo-page.png (the README
shows one). No browser is downloaded: without /usr/bin/chromium (`apt-get install chromium`)
these tests are skipped.
"""

import os
import pathlib
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from PIL import Image

import sdcore
from sdcore.pipeline import SHIPPED_MODEL_GUIDANCE

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = pathlib.Path(__file__).resolve().parent.parent / "test-artifacts"
PROMPT = "a red circle on a blue background"
STEPS = 20
SEED = 1
# the page starts at the model's default guidance, 5 for the shipped model
CFG = f"{SHIPPED_MODEL_GUIDANCE:g}"

if not os.path.exists(CHROMIUM):
    pytest.skip(
        f"no {CHROMIUM}: the browser tests need Debian's chromium (apt-get install chromium)",
        allow_module_level=True,
    )

from playwright.sync_api import expect, sync_playwright  # noqa: E402


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_demo(tmp_path, name, *flags, timeout=120):
    """`sdcore demo` as a command; returns (process, page URL) once the page answers."""
    port = free_port()
    log = open(tmp_path / f"{name}.log", "w")
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False")
    proc = subprocess.Popen(
        [sys.executable, "-m", "sdcore.cli", "demo", "--port", str(port), *flags],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    url = f"http://127.0.0.1:{port}/"
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            break
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                if reply.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.2)
    stop(proc)
    raise AssertionError(f"sdcore demo did not start:\n{(tmp_path / f'{name}.log').read_text()}")


def stop(proc):
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def demo_url(tmp_path_factory):
    proc, url = start_demo(tmp_path_factory.mktemp("demo"), "demo")
    yield url
    stop(proc)


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1100, "height": 1000}, accept_downloads=True)
    page = context.new_page()
    yield page
    context.close()


def open_page(page, url):
    page.goto(url)
    page.wait_for_selector("#sd-prompt textarea")
    expect(page.locator("#sd-status")).to_contain_text("ready")


def test_generate_in_the_browser(page, demo_url, tmp_path):
    open_page(page, demo_url)
    page.fill("#sd-prompt textarea", PROMPT)
    page.fill("#sd-steps input", str(STEPS))
    page.uncheck("#sd-random-seed input")
    page.fill("#sd-seed input", str(SEED))
    page.click("#sd-generate")

    expect(page.locator("#sd-gallery img").first).to_be_visible(timeout=60_000)
    expect(page.locator("#sd-progress")).to_contain_text("Done: 1 image", timeout=10_000)
    expect(page.locator("#sd-progress")).to_contain_text(f"seed used: {SEED}")
    expect(page.locator("#sd-parameters textarea")).to_have_value(
        f"{PROMPT}\nSteps: {STEPS}, Sampler: Euler a, CFG scale: {CFG}, Seed: {SEED}, "
        f"Size: 128x128, Model: sdcore-shapes, Version: sdcore {sdcore.__version__}"
    )
    expect(page.locator("#sd-message")).to_have_text("")
    # visible is not loaded: the browser may still be fetching the PNG; wait for it to
    # finish (it fails the wait, not just the check, if it never decodes)
    page.wait_for_function(
        "() => { const i = document.querySelector('#sd-gallery img'); "
        "return i !== null && i.complete; }",
        timeout=10_000,
    )
    loaded = page.locator("#sd-gallery img").first.evaluate("img => img.naturalWidth")
    assert loaded > 0

    with page.expect_download() as download_info:
        page.locator("#sd-downloads a.download-link").first.click()
    download = download_info.value
    path = tmp_path / download.suggested_filename
    download.save_as(path)
    assert download.suggested_filename == f"sdcore-{SEED}-0.png"
    png = Image.open(path)
    assert png.format == "PNG" and png.size == (128, 128)
    info = png.text["parameters"]
    assert info.startswith(PROMPT + "\n")
    for field in (f"Steps: {STEPS}", "Sampler: Euler a", f"CFG scale: {CFG}", f"Seed: {SEED}"):
        assert field in info

    # the status panel counts the image once it refreshes
    expect(page.locator("#sd-status")).to_contain_text("Images made 1", timeout=10_000)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / "demo-page.png", full_page=True)
    path.replace(ARTIFACTS / "demo-download.png")


def test_invalid_input_shows_the_servers_message(page, demo_url):
    open_page(page, demo_url)
    page.fill("#sd-prompt textarea", "a green star")
    page.fill("#sd-width input", "100")
    page.click("#sd-generate")
    expect(page.locator("#sd-message")).to_contain_text(
        "Invalid input: width: must be a multiple of 32", timeout=20_000
    )


def test_cancel_from_the_page(page, demo_url):
    open_page(page, demo_url)
    page.fill("#sd-prompt textarea", "a blue square on a white background")
    page.fill("#sd-steps input", "150")
    page.click("#sd-generate")
    expect(page.locator("#sd-progress")).to_contain_text("Step", timeout=20_000)
    page.click("#sd-cancel")
    expect(page.locator("#sd-message")).to_have_text(
        "Cancelled: cancelled by a Cancel request", timeout=20_000
    )
    expect(page.locator("#sd-gallery img")).to_have_count(0)


def test_server_unavailable_is_said_on_the_page(page, tmp_path):
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    proc, url = start_demo(tmp_path, "unavailable", "--server", address)
    try:
        page.goto(url)
        page.wait_for_selector("#sd-prompt textarea")
        expect(page.locator("#sd-status")).to_contain_text("The server is unavailable")
        page.fill("#sd-prompt textarea", "a blue square")
        page.click("#sd-generate")
        expect(page.locator("#sd-message")).to_contain_text(
            f"The server is unavailable at {address}: no sdcore server answers there",
            timeout=20_000,
        )
    finally:
        stop(proc)


def test_generate_in_the_browser_over_http(page, tmp_path):
    """`sdcore demo --http`: the page reaches its server through the HTTP API instead."""
    proc, url = start_demo(tmp_path, "http", "--http")
    try:
        open_page(page, url)
        expect(page.locator("#sd-status")).to_contain_text("HTTP API")
        page.fill("#sd-prompt textarea", PROMPT)
        page.fill("#sd-steps input", str(STEPS))
        page.uncheck("#sd-random-seed input")
        page.fill("#sd-seed input", str(SEED))
        page.click("#sd-generate")
        expect(page.locator("#sd-gallery img").first).to_be_visible(timeout=60_000)
        expect(page.locator("#sd-progress")).to_contain_text("Done: 1 image", timeout=10_000)
        expect(page.locator("#sd-parameters textarea")).to_have_value(
            f"{PROMPT}\nSteps: {STEPS}, Sampler: Euler a, CFG scale: {CFG}, Seed: {SEED}, "
            f"Size: 128x128, Model: sdcore-shapes, Version: sdcore {sdcore.__version__}"
        )
        expect(page.locator("#sd-message")).to_have_text("")
        with page.expect_download() as download_info:
            page.locator("#sd-downloads a.download-link").first.click()
        path = tmp_path / download_info.value.suggested_filename
        download_info.value.save_as(path)
        png = Image.open(path)
        assert png.size == (128, 128) and f"Seed: {SEED}" in png.text["parameters"]

        page.fill("#sd-width input", "100")
        page.click("#sd-generate")
        expect(page.locator("#sd-message")).to_contain_text(
            "Invalid input: width: must be a multiple of 32", timeout=20_000
        )
    finally:
        stop(proc)
