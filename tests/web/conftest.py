"""Browser fixtures: one headless Chromium for the session, one live site per module.

The browser is the system Chromium (``apt-get install chromium``; ``make test``
installs it when missing), driven by Playwright. Where it is missing the browser
tests skip, unless TUNEBACK_REQUIRE_SERVICES=1 (CI) makes that a failure.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import service_missing
from tests.web.support import HostPages, Site

CHROMIUM = os.environ.get("TUNEBACK_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="session")
def browser() -> Iterator:
    if not os.access(CHROMIUM, os.X_OK):
        service_missing("Chromium", FileNotFoundError(CHROMIUM))
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as error:
        service_missing("Playwright", error)
    playwright = sync_playwright().start()
    try:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    except Exception as error:  # noqa: BLE001
        playwright.stop()
        service_missing("Chromium", error)
    yield browser
    browser.close()
    playwright.stop()


@pytest.fixture
def page(browser) -> Iterator:
    """A fresh browser context (no cookies) and page; fails the test on page errors."""
    context = browser.new_context(viewport={"width": 1100, "height": 720})
    context.set_default_timeout(10_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    context.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Iterator[Site]:
    """The app on loopback with the dashboard's actions wired as ``tuneback up`` wires them."""
    from tuneback.apps import wire_admin_actions

    site = Site(tmp_path_factory.mktemp("site"), wire=wire_admin_actions)
    yield site
    site.stop()


@pytest.fixture(scope="module")
def hosts() -> Iterator[tuple[HostPages, HostPages]]:
    """Two other sites (two origins): the widget key allows the first only."""
    allowed, other = HostPages(), HostPages()
    yield allowed, other
    allowed.stop()
    other.stop()


@pytest.fixture
def shots(tmp_path_factory) -> Path:
    """Where this session's screenshots go (also TUNEBACK_SCREENSHOTS when set)."""
    return tmp_path_factory.getbasetemp() / "screenshots"
