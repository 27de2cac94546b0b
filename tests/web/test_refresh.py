"""Auto-refresh: new traffic shows up on an open page without touching it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

from costwatch.daemon.server import build_daemon, start_in_thread
from costwatch.events import UsageEvent, encode_many, new_event_id
from costwatch.settings import DaemonSettings
from tests.web.conftest import PageDaemon, loaded, wait_for
from tests.web.traffic import PRICE_OVERRIDES, PRICES, make_traffic


def test_open_page_picks_up_new_spend_on_its_own(open_page: Any, page_daemon: PageDaemon) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    driver = open_page()
    # The same timer as the menu's 10 s .. 1 min choices, with a 1 s choice added to keep the test short.
    driver.execute_script("document.getElementById('refresh').add(new Option('1 s', '1'))")
    Select(driver.find_element(By.ID, "refresh")).select_by_value("1")
    today = float(driver.find_element(By.ID, "kpi-today").get_attribute("data-value"))
    now = time.time()
    big = UsageEvent(
        id=new_event_id(now),
        call_id="refresh-test",
        ts_start=now,
        ts_end=now + 1,
        provider="openai",
        operation="chat",
        app="refresh-test",
        model="cw-large",
        input_tokens=1_000_000,
        output_tokens=0,
        usage_source="provider",
    )
    assert page_daemon.http.post("/v1/events", content=encode_many([big])).status_code == 200
    added = PRICES["cw-large"][0]  # $ for 1M input tokens

    def shown() -> float:
        return float(driver.find_element(By.ID, "kpi-today").get_attribute("data-value"))

    wait_for(lambda: abs(shown() - (today + added)) < 1e-9, timeout=15, what="the page to refresh itself")
    assert driver.find_element(By.ID, "updated").text.startswith("updated ")


def test_a_stopped_daemon_leaves_the_last_numbers_and_says_so(driver: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    settings = DaemonSettings(state_dir=tmp_path, port=0, prices=PRICE_OVERRIDES)
    running = start_in_thread(build_daemon(settings, rules=False, leases=False))
    try:
        auth = {"Authorization": f"Bearer {running.token}"}
        events = make_traffic(seed=3).events
        assert (
            httpx.post(running.url + "/v1/events", content=encode_many(events), headers=auth).status_code
            == 200
        )
        driver.get(f"{running.url}/#token={running.token}")
        loaded(driver)
        month = driver.find_element(By.ID, "kpi-month").text
    finally:
        running.stop()
    driver.find_element(By.ID, "reload").click()
    text = wait_for(lambda: driver.find_element(By.ID, "banner").text, what="the banner")
    assert text.startswith("Cannot reach the daemon") and "showing data from" in text
    assert driver.find_element(By.ID, "kpi-month").text == month
