"""`costwatch status`, the spend page, the SQL views, data_quality rules and /metrics count the same unpriced events.

All four use `schema.UNPRICED_SQL` (or `schema.unpriced_mask`, its Arrow twin); the events below
sit on each edge of the definition, so a consumer that drifts from it gets another count.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any

import httpx

from costwatch.daemon import web
from costwatch.daemon.rules import DataQualityRule
from costwatch.daemon.rules.conditions import quality_observations
from costwatch.daemon.server import RunningDaemon
from tests.daemon.conftest import make_event, post_events
from tests.daemon.test_metrics import _samples, _sum

UNKNOWN = "no-price-anywhere-1"


def _column(client: httpx.Client, query: str, name: str) -> list[Any]:
    response = client.post("/v1/sql", json={"sql": query})
    assert response.status_code == 200, response.text
    index = response.json()["columns"].index(name)
    return [row[index] for row in response.json()["rows"]]


def test_every_consumer_counts_the_same_unpriced_events(daemon: RunningDaemon, client: httpx.Client) -> None:
    events = [
        make_event(input_tokens=100, output_tokens=10),  # priced
        make_event(model=UNKNOWN, input_tokens=5, output_tokens=5),  # unpriced
        make_event(model=UNKNOWN, input_tokens=0, output_tokens=7, usage_source="estimated"),  # unpriced
        make_event(model=UNKNOWN, input_tokens=0, output_tokens=0),  # no tokens: nothing to price
        make_event(model=UNKNOWN),  # usage reported without token counts
        make_event(model=UNKNOWN, usage_source="missing"),  # missing usage: counted apart
        make_event(model=UNKNOWN, input_tokens=3, output_tokens=3, usage_source="missing"),
        make_event(model=UNKNOWN, input_tokens=5, output_tokens=5, provider_cost_usd=0.01),  # reported cost
        make_event(http_status=429, error_class="rate_limit", usage_source="missing"),
    ]
    assert post_events(client, events).status_code == 200
    expected = 2

    status = client.get("/v1/status").json()["unpriced"]
    kpis_unpriced = sum(_column(client, web.render("kpis", "24h"), "unpriced"))
    by_model = sum(_column(client, web.render("spend_by_model", "24h"), "unpriced"))
    metrics = _sum(_samples(client.get("/metrics").text), "costwatch_unpriced_events_total")
    rule = DataQualityRule(kind="data_quality", name="unpriced", checks=["unpriced"], window="1h")
    now = datetime.fromtimestamp(time.time() + 1, timezone.utc)
    observed = daemon.daemon.store.read(lambda cur: quality_observations(cur, rule, now))
    rules = sum(o.value or 0 for o in observed)

    views = {
        view: sum(_column(client, f"SELECT unpriced_requests FROM {view}", "unpriced_requests"))
        for view in ("spend_by_day", "spend_by_model")
    }

    counts = {
        "status": status,
        "kpis": kpis_unpriced,
        "spend_by_model": by_model,
        "metrics": metrics,
        **views,
    }
    assert counts == {name: expected for name in counts} and rules == expected, (counts, rules)
