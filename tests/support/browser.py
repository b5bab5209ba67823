"""A real browser for tests of the status page: Debian's Chromium driven by Playwright (with
the system executable: Playwright's own browser builds are never downloaded), and a loopback
HTTP server handing it a rendered page.

Without Chromium or Playwright the browser tests are skipped with the reason, except under
CI (`CI=true`) or `./dev test` (`--require-pg`), where they fail: CI must never pass on a
skipped browser test.
"""

from __future__ import annotations

import http.server
import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser

CHROMIUM = Path("/usr/bin/chromium")


def missing() -> str | None:
    """Why no browser test can run here, or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright Python package is not installed (./dev setup installs it)"
    if not CHROMIUM.exists() or shutil.which(str(CHROMIUM)) is None:
        return f"{CHROMIUM} is missing (./dev test installs Debian's chromium package)"
    return None


def require(strict: bool) -> None:
    """Skip the calling test when no browser can run here; fail instead when `strict` or
    under CI."""
    why = missing()
    if why is None:
        return
    if strict or os.environ.get("CI", "").lower() in ("true", "1", "yes"):
        pytest.fail(f"browser test cannot run: {why}", pytrace=False)
    pytest.skip(why)


@contextmanager
def chromium() -> Iterator[Browser]:
    """Headless Chromium (the system's), closed on exit."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            yield browser
        finally:
            browser.close()


class _PageHandler(http.server.BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # quiet: the test reports what matters


@contextmanager
def serving(html: str) -> Iterator[str]:
    """Serve `html` at every path of a loopback HTTP server; yields its URL."""
    handler = type("Handler", (_PageHandler,), {"body": html.encode()})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
