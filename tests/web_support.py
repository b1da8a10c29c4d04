"""Headless Chromium for the page tests: Debian's chromium driven by Playwright (which never
downloads a browser), and screenshots kept in test-artifacts/screens/ (gitignored)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from playwright.sync_api import Browser, ConsoleMessage, Error, Page, sync_playwright

from .lore import ROOT

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
SCREENS = ROOT / "test-artifacts" / "screens"


@contextmanager
def chromium() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


def shot(page: Page, name: str) -> None:
    SCREENS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SCREENS / f"{name}.png", full_page=True)


class Watched:
    """A page with what went wrong in it: uncaught errors, and console errors about the CSP."""

    def __init__(self, page: Page, ip: str):
        self.page = page
        self.ip = ip
        self.errors: list[Error] = []
        self.csp: list[str] = []
        page.on("pageerror", self._error)
        page.on("console", self._console)

    def _error(self, error: Error) -> None:
        self.errors.append(error)

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error" and "Content Security Policy" in message.text:
            self.csp.append(message.text)
