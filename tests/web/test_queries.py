"""The page's SQL agrees with `costwatch status` on "today" and "this month" in the daemon's time zone."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from costwatch.daemon import web
from costwatch.daemon.server import build_daemon, start_in_thread
from costwatch.events import encode_many
from costwatch.settings import DaemonSettings
from tests.web.traffic import PRICE_OVERRIDES, make_traffic


@pytest.mark.parametrize("tz", ["UTC", "Pacific/Kiritimati", "America/Los_Angeles"])
def test_today_and_month_match_status_in_the_daemon_time_zone(tmp_path: Path, tz: str) -> None:
    settings = DaemonSettings(state_dir=tmp_path, port=0, prices=PRICE_OVERRIDES, timezone=tz)
    running = start_in_thread(build_daemon(settings, rules=False, leases=False))
    try:
        auth = {"Authorization": f"Bearer {running.token}"}
        with httpx.Client(base_url=running.url, headers=auth, timeout=30) as client:
            events = make_traffic(seed=11).events
            assert client.post("/v1/events", content=encode_many(events)).status_code == 200
            status = client.get("/v1/status").json()
            assert status["timezone"] == tz
            response = client.post("/v1/sql", json={"sql": web.render("kpis", "24h", tz)})
            assert response.status_code == 200, response.text
            kpis = dict(zip(response.json()["columns"], response.json()["rows"][0], strict=True))
    finally:
        running.stop()
    assert kpis["spend_today_usd"] == pytest.approx(status["spend_today_usd"], abs=1e-9)
    assert kpis["spend_month_usd"] == pytest.approx(status["spend_month_usd"], abs=1e-9)
    assert kpis["spend_today_usd"] > 0 or status["spend_today_usd"] == 0
