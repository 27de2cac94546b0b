"""Spend-page fixtures: a real daemon (uvicorn in a thread, temp DuckDB) with the page's routes and
known traffic, and Debian's headless Chromium driven by Selenium through /usr/bin/chromedriver.

Without Chromium the browser tests are skipped, unless COSTWATCH_REQUIRE_BROWSER=1 (CI), where
they fail instead. Install: apt-get install -y chromium chromium-driver.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from costwatch.daemon.server import RunningDaemon, build_daemon, start_in_thread
from costwatch.events import encode_many
from costwatch.settings import DaemonSettings
from tests.web.traffic import PRICE_OVERRIDES, Traffic, make_traffic

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("COSTWATCH_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("COSTWATCH_CHROMEDRIVER", "/usr/bin/chromedriver")
LAPTOP = (1440, 900)

BUDGET_RULES = """
rules:
  - name: daily-spend
    kind: budget
    limit: 5
    window: day
  - name: monthly-spend
    kind: budget
    limit: 40
    window: month
"""


class PageDaemon:
    """A running daemon with the spend page mounted, plus helpers to query it like a user would."""

    def __init__(self, running: RunningDaemon, state_dir: Path, traffic: Traffic) -> None:
        self.running = running
        self.state_dir = state_dir
        self.traffic = traffic
        self.url = running.url
        self.token = running.token
        auth = {"Authorization": f"Bearer {self.token}"}
        self.http = httpx.Client(base_url=self.url, headers=auth, timeout=30)

    def sql(self, query: str) -> list[dict[str, Any]]:
        """Through POST /v1/sql."""
        response = self.http.post("/v1/sql", json={"sql": query})
        assert response.status_code == 200, response.text
        data = response.json()
        return [dict(zip(data["columns"], row, strict=True)) for row in data["rows"]]

    def cli_sql(self, query: str) -> list[dict[str, Any]]:
        """Through `costwatch sql --format json` in a subprocess, as a user types it."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("COSTWATCH_")}
        env.update(
            COSTWATCH_STATE_DIR=str(self.state_dir), COSTWATCH_URL=self.running.url, PYTHONPATH=str(ROOT)
        )
        result = subprocess.run(
            [sys.executable, "-m", "costwatch.cli", "sql", "--format", "json", query],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def killswitch(self) -> dict[str, Any]:
        return httpx.get(self.url + "/v1/killswitch", timeout=10).json()


@pytest.fixture(scope="module")
def page_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PageDaemon]:
    state_dir = tmp_path_factory.mktemp("state")
    rules_dir = state_dir / "rules"
    rules_dir.mkdir()
    (rules_dir / "budgets.yml").write_text(BUDGET_RULES)

    settings = DaemonSettings(
        state_dir=state_dir,
        port=0,
        host="127.0.0.1",
        prices=PRICE_OVERRIDES,
        timezone="UTC",
        rules=rules_dir,
        evaluation_interval_s=3600,
    )
    running = start_in_thread(build_daemon(settings, leases=False))  # the rules engine and the page
    page = PageDaemon(running, state_dir, make_traffic())
    response = page.http.post("/v1/events", content=encode_many(page.traffic.events))
    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == len(page.traffic.events)
    try:
        yield page
    finally:
        page.http.close()
        running.stop()


def _chromium_missing() -> str | None:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not (os.path.exists(path) or shutil.which(path)):
            return f"{path} not found (apt-get install -y chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install selenium)"
    return None


@pytest.fixture(scope="session")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    missing = _chromium_missing()
    if missing:
        if os.environ.get("COSTWATCH_REQUIRE_BROWSER") == "1":
            pytest.fail(missing)
        pytest.skip(missing)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        f"--window-size={LAPTOP[0]},{LAPTOP[1]}",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=CHROMEDRIVER)
    drv = webdriver.Chrome(service=service, options=options)
    drv.set_page_load_timeout(20)
    try:
        yield drv
    finally:
        drv.quit()


def wait_for(predicate: Callable[[], Any], timeout: float = 10, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except Exception as exc:  # a stale element while the page re-renders
            last = exc
        else:
            if last:
                return last
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


@pytest.fixture
def open_page(driver: Any, page_daemon: PageDaemon) -> Callable[..., Any]:
    """Open the page in a clean state (no stored token/range) and wait for the first full render."""

    def open_(with_token: bool = True, range_key: str | None = None) -> Any:
        driver.get(page_daemon.url + "/spend-page/vendor/uPlot.LICENSE.txt")  # same origin, to clear storage
        driver.execute_script("localStorage.clear()")
        driver.get_log("browser")  # drain: browser_errors() then sees only this page's messages
        if range_key:
            driver.execute_script("localStorage.setItem('costwatch.range', arguments[0])", range_key)
        fragment = f"#token={page_daemon.token}" if with_token else ""
        driver.get(page_daemon.url + "/" + fragment)
        if with_token:
            loaded(driver)
        return driver

    return open_


def loaded(driver: Any, after: int = 0) -> int:
    """Wait until the page finished its refresh number ``after + 1`` (body[data-loaded])."""

    def count() -> int:
        value = driver.execute_script("return document.body.dataset.loaded || '0'")
        return int(value) if int(value) > after else 0

    return wait_for(count, 15, "the page to load its data")


def browser_errors(driver: Any) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
