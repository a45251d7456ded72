"""Headless Chromium for the tests that check what a person sees (TensorBoard, optuna-dashboard).

Skipped where Chromium or chromedriver is missing, except under CI (CI=true), where a missing browser fails the
test: `.ci/run` installs Debian's chromium and chromium-driver. Each browser gets a fresh profile and no network
beyond what the page asks for (no updates, no sync, no QUIC).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.waiting import wait_until

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")

# Walks every shadow root: TensorBoard's HParams dashboard is Polymer, each component behind its own shadow DOM.
FIND_JS = """
function findAll(root, pred, out) {
  for (const el of root.querySelectorAll('*')) {
    if (pred(el)) out.push(el);
    if (el.shadowRoot) findAll(el.shadowRoot, pred, out);
  }
  return out;
}
function find(root, pred) { return findAll(root, pred, [])[0] || null; }
"""


def require_browser() -> None:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip install -e '.[test]')")
    if missing:
        message = f"browser test needs {', '.join(missing)}"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}; CI must run it (.ci/run installs chromium and chromium-driver)")
        pytest.skip(message)


@contextlib.contextmanager
def chromium(width: int = 1600, height: int = 1000):
    """A headless Chromium WebDriver with a fresh profile, quit (and its profile removed) on exit."""
    require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="gce-search-chromium-")
    options = webdriver.ChromeOptions()
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={width},{height}")
    options.binary_location = str(CHROMIUM)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_for_js(driver, script: str, timeout: float | None = None, what: str = "the page"):
    """Run `script` (FIND_JS is prepended) until it returns something truthy; that value. `timeout` is a hang guard
    only (default: tests/waiting.py's hang_s()): a page that a loaded machine renders slowly is waited for."""
    last = []

    def shown():
        last[:] = [driver.execute_script(FIND_JS + script)]
        return last[0]

    try:
        return wait_until(shown, what=what, hang=timeout)
    except AssertionError as hang:
        raise AssertionError(f"{hang} (last: {last[0] if last else None!r})") from None
