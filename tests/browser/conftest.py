"""The built docs, served on localhost and opened in headless Chromium.

Run by ``nox -s browser`` (it builds the docs or reuses a fresh build). The browser is
Debian's ``chromium`` driven by Playwright; Playwright's own browser download is not
used. Without Playwright these tests are not collected, so a plain ``pytest`` works.
"""

import functools
import http.server
import importlib.util
import os
import threading
from pathlib import Path
from urllib.parse import urlsplit

import pytest

if importlib.util.find_spec("playwright") is None:
    collect_ignore_glob = ["test_*.py"]

ROOT = Path(__file__).resolve().parents[2]
HTML = ROOT / "docs" / "_build" / "html"
SCREENSHOTS = ROOT / "docs" / "_build" / "screenshots"
CHROMIUM = os.environ.get("EXPORTCHECK_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


@pytest.fixture(scope="session")
def html_dir() -> Path:
    if not (HTML / "index.html").exists():
        pytest.fail(f"{HTML / 'index.html'} is missing: build the docs first (nox -s docs)")
    return HTML


@pytest.fixture(scope="session")
def base_url(html_dir):
    """The docs served over HTTP on localhost, as a user's web server would serve them."""
    handler = functools.partial(_QuietHandler, directory=str(html_dir))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


class Visit:
    """A browser page that records JS errors and every request leaving localhost."""

    def __init__(self, page, base_url):
        self.page = page
        self.base_url = base_url
        self.errors = []
        self.outside = []
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.route("**/*", self._route)

    def _route(self, route):
        if urlsplit(route.request.url).hostname in {"127.0.0.1", None}:
            route.continue_()
        else:  # the docs must work offline
            self.outside.append(route.request.url)
            route.abort()

    def open(self, path: str):
        response = self.page.goto(self.base_url + path, wait_until="load")
        assert response is not None and response.ok, f"{path}: HTTP {response and response.status}"
        return self.page


@pytest.fixture
def visit(browser, base_url):
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    v = Visit(context.new_page(), base_url)
    yield v
    context.close()
    assert not v.errors, f"JavaScript errors: {v.errors}"
    assert not v.outside, f"requests outside the docs (they must work offline): {v.outside}"


@pytest.fixture(scope="session")
def screenshots() -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS
