"""Engage and lift the kill switch from the page, and watch a real instrumented process obey.

The process (tests/web/instrumented_app.py) runs ``import costwatch.autoinstrument`` and the real
openai SDK against the fake provider on loopback; it prints one JSON line per call.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.provider import FakeProvider
from tests.web.conftest import ROOT, PageDaemon, wait_for

APP = "web-ks-app"
HERE = Path(__file__).resolve().parent


class InstrumentedApp:
    """The subprocess and a reader thread feeding its JSON lines into a queue."""

    def __init__(self, page_daemon: PageDaemon, provider_url: str, workdir: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("COSTWATCH_")}
        env.update(
            PYTHONPATH=str(ROOT),
            COSTWATCH_URL=page_daemon.url,
            COSTWATCH_TOKEN=page_daemon.token,
            COSTWATCH_APP=APP,
            COSTWATCH_STATE_DIR=str(workdir),
            COSTWATCH_KILLSWITCH_POLL_S="0.2",
        )
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "instrumented_app.py"), provider_url],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(json.loads(line))

    def next_matching(self, key: str, timeout: float = 10) -> dict[str, Any]:
        """Skip lines until one has ``key`` (e.g. "ok" or "blocked")."""
        deadline = time.monotonic() + timeout
        seen: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                if self.proc.poll() is not None:
                    stderr = self.proc.stderr.read() if self.proc.stderr else ""
                    raise AssertionError(f"the instrumented app exited: {stderr[-2000:]}") from None
                continue
            if key in line:
                return line
            seen.append(line)
        raise AssertionError(f"no {key!r} line within {timeout} s; saw {seen[-5:]}")

    def drain(self) -> None:
        while not self.lines.empty():
            self.lines.get_nowait()

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


@pytest.fixture
def instrumented_app(
    page_daemon: PageDaemon, fake_provider: FakeProvider, tmp_path: Path
) -> Iterator[InstrumentedApp]:
    app = InstrumentedApp(page_daemon, fake_provider.openai_url, tmp_path)
    try:
        yield app
    finally:
        app.stop()


def test_engage_and_lift_from_the_page_block_and_release_an_instrumented_process(
    open_page: Any, page_daemon: PageDaemon, instrumented_app: InstrumentedApp
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    assert "ok" in instrumented_app.next_matching("ok", timeout=20)  # calls go through
    driver = open_page()
    find = driver.find_element
    assert find(By.ID, "ks-state").get_attribute("data-engaged") == "false"

    # Fill the form: scope app=<the instrumented app>, a reason.
    find(By.CSS_SELECTOR, "#ks-engage summary").click()
    Select(find(By.ID, "ks-scope-key")).select_by_value("app")
    find(By.ID, "ks-scope-value").send_keys(APP)
    find(By.ID, "ks-reason").send_keys("runaway loop (browser test)")
    engage = find(By.CSS_SELECTOR, "#ks-form button[type=submit]")

    # The confirmation is a real step: cancelling it changes nothing.
    engage.click()
    dialog = find(By.ID, "confirm")
    wait_for(dialog.is_displayed, what="the confirmation dialog")
    assert APP in find(By.ID, "confirm-text").text
    find(By.ID, "confirm-cancel").click()
    wait_for(lambda: not dialog.is_displayed(), what="the dialog to close")
    time.sleep(0.3)
    assert page_daemon.killswitch()["engaged"] == []

    engage.click()
    wait_for(dialog.is_displayed, what="the confirmation dialog")
    find(By.ID, "confirm-ok").click()
    state = wait_for(lambda: page_daemon.killswitch()["engaged"], what="GET /v1/killswitch to show it")
    assert [(ks["scope"], ks["source"], ks["reason"]) for ks in state] == [
        ({"app": APP}, "web", "runaway loop (browser test)")
    ]
    wait_for(lambda: find(By.ID, "ks-state").get_attribute("data-engaged") == "true", what="the page")

    # The instrumented process is refused with costwatch.KillSwitchEngaged.
    instrumented_app.drain()
    blocked = instrumented_app.next_matching("blocked")
    assert "KillSwitchEngaged" in blocked["blocked"] or "kill switch" in blocked["error"].lower()

    # Lift from the page (again with a confirmation): calls go through again.
    lift = wait_for(lambda: find(By.CSS_SELECTOR, f"#ks-list li[data-scope='app={APP}'] button.lift"))
    lift.click()
    wait_for(dialog.is_displayed, what="the confirmation dialog")
    find(By.ID, "confirm-ok").click()
    wait_for(lambda: page_daemon.killswitch()["engaged"] == [], what="the switch to be lifted")
    wait_for(lambda: find(By.ID, "ks-state").get_attribute("data-engaged") == "false", what="the page")
    instrumented_app.drain()
    assert "ok" in instrumented_app.next_matching("ok")


def test_engaging_needs_the_token(open_page: Any, page_daemon: PageDaemon) -> None:
    """A stale token in the browser cannot engage anything: the page falls back to the token form."""
    from selenium.webdriver.common.by import By

    driver = open_page()
    driver.execute_script("localStorage.setItem('costwatch.token', 'stale')")
    find = driver.find_element
    find(By.CSS_SELECTOR, "#ks-engage summary").click()
    find(By.ID, "ks-reason").send_keys("should not happen")
    find(By.CSS_SELECTOR, "#ks-form button[type=submit]").click()
    wait_for(find(By.ID, "confirm").is_displayed, what="the confirmation dialog")
    find(By.ID, "confirm-ok").click()
    wait_for(lambda: find(By.ID, "login").is_displayed(), what="the token form")
    assert page_daemon.killswitch()["engaged"] == []
