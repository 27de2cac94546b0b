"""The spend page shows this node's fleet line (replication lag, ledger connection) in a real browser."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from costwatch.daemon.server import RunningDaemon, build_daemon, start_in_thread
from costwatch.settings import DaemonSettings
from tests.support.postgres import PostgresServer
from tests.web.conftest import driver, loaded, wait_for

__all__ = ["driver"]  # the session's headless Chromium (skipped without it)


@pytest.fixture
def fleet_page(postgres: PostgresServer, tmp_path: Path) -> Iterator[RunningDaemon]:
    settings = DaemonSettings(state_dir=tmp_path, port=0, fleet_dsn=postgres.dsn, node="page-node")
    running = start_in_thread(build_daemon(settings, rules=False, leases=False))
    yield running
    running.stop()


def test_the_page_shows_the_fleet_line(
    driver: Any, fleet_page: RunningDaemon, postgres: PostgresServer
) -> None:
    driver.get(f"{fleet_page.url}/#token={fleet_page.token}")
    loaded(driver)
    text = wait_for(lambda: driver.find_element("id", "fleet").text, what="the fleet line")
    assert text.startswith("Fleet node page-node: ledger connected; replication lag 0 events")
    assert driver.find_element("id", "fleet").get_attribute("data-connected") == "true"
