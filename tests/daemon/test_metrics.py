"""/metrics agrees with SQL, and passes promtool's lint when promtool is installed."""

from __future__ import annotations

import shutil
import subprocess

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.daemon.conftest import make_event, post_events, sql


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _sum(samples: dict, name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in samples.items() if n == name and labels.items() <= dict(ls).items())


def _populate(client: httpx.Client) -> None:
    events = [
        make_event(input_tokens=1000, cached_input_tokens=100, output_tokens=50, latency_ms=800, ttft_ms=120,
                   http_status=200, ratelimit_remaining_requests=99, ratelimit_remaining_tokens=50_000,
                   ratelimit_limit_requests=100, ratelimit_limit_tokens=200_000),
        make_event(provider="anthropic", operation="messages", model="claude-sonnet-4-20250514",
                   input_tokens=3000, cache_write_tokens=1000, output_tokens=400, reasoning_tokens=100,
                   latency_ms=4000, http_status=200),
        make_event(http_status=429, error_class="rate_limit", latency_ms=30, usage_source="missing"),
        make_event(model="unknown-model", input_tokens=5, output_tokens=5, http_status=200),
        make_event(input_tokens=200, output_tokens=30, latency_ms=900, http_status=200, stream=True,
                   usage_source="estimated"),  # a stream that ended without usage
    ]  # fmt: skip
    assert post_events(client, events).status_code == 200


def test_metrics_match_sql(client: httpx.Client) -> None:
    _populate(client)
    m = _samples(client.get("/metrics").text)
    row = sql(
        client,
        "SELECT count(*), sum(input_tokens), sum(output_tokens), sum(cached_input_tokens),"
        " sum(cache_write_tokens), sum(reasoning_tokens), sum(cost_usd) FROM usage_events",
    )[0]
    assert _sum(m, "costwatch_llm_requests_total") == row[0] == 5
    assert _sum(m, "costwatch_llm_tokens_total", type="input") == row[1]
    assert _sum(m, "costwatch_llm_tokens_total", type="output") == row[2]
    assert _sum(m, "costwatch_llm_tokens_total", type="cached_input") == row[3]
    assert _sum(m, "costwatch_llm_tokens_total", type="cache_write") == row[4]
    assert _sum(m, "costwatch_llm_tokens_total", type="reasoning") == row[5]
    assert _sum(m, "costwatch_llm_cost_usd_total") == pytest.approx(row[6])
    assert _sum(m, "costwatch_ingest_events_total") == 5
    assert _sum(m, "costwatch_llm_requests_total", status_class="4xx", error_class="rate_limit") == 1
    assert _sum(m, "costwatch_unpriced_events_total", model="unknown-model") == 1
    # the estimated event is counted apart, and its tokens and cost are in the totals above
    assert _sum(m, "costwatch_estimated_usage_events_total") == 1
    assert _sum(m, "costwatch_estimated_usage_events_total", provider="openai", model="gpt-4o-mini") == 1
    estimated = sql(
        client, "SELECT sum(input_tokens), sum(cost_usd) FROM usage_events WHERE usage_source = 'estimated'"
    )[0]
    assert estimated[0] == 200 and estimated[1] is not None and estimated[1] > 0
    assert _sum(m, "costwatch_llm_request_duration_seconds_count") == 4  # one event has no latency
    assert _sum(m, "costwatch_llm_request_duration_seconds_bucket", le="1.0") == 3
    assert _sum(m, "costwatch_llm_time_to_first_token_seconds_count") == 1
    assert _sum(m, "costwatch_llm_ratelimit_remaining_requests", model="gpt-4o-mini") == 99
    assert _sum(m, "costwatch_llm_ratelimit_limit_requests", model="gpt-4o-mini") == 100
    assert _sum(m, "costwatch_llm_ratelimit_limit_tokens", model="gpt-4o-mini") == 200_000
    assert _sum(m, "costwatch_ingest_batches_total") == 1
    assert _sum(m, "costwatch_ingest_commit_seconds_count") == 1
    assert _sum(m, "costwatch_up") == 1
    assert _sum(m, "costwatch_killswitch_engaged", scope="global") == 0
    assert _sum(m, "costwatch_last_ingest_timestamp_seconds") > 0
    assert not any("user" in dict(labels) for _, labels in m)


@pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool not installed (apt-get install prometheus)"
)
def test_promtool_check_metrics(client: httpx.Client) -> None:
    _populate(client)
    client.post("/v1/killswitch", json={"action": "engage", "scope": {"app": "a"}, "reason": "r"})
    text = client.get("/metrics").text
    result = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_status_counts_estimated_usage_and_its_spend(client: httpx.Client) -> None:
    _populate(client)
    status = client.get("/v1/status").json()
    row = sql(
        client,
        "SELECT count(*) FILTER (WHERE usage_source = 'estimated'), count(*) FILTER (WHERE usage_source = 'missing'),"
        " sum(cost_usd) FILTER (WHERE usage_source = 'estimated') FROM usage_events",
    )[0]
    assert (status["usage_estimated"], status["usage_missing"]) == (row[0], row[1]) == (1, 1)
    assert status["spend_month_estimated_usd"] == pytest.approx(row[2]) and row[2] > 0
    assert 0 < status["spend_month_estimated_usd"] < status["spend_month_usd"]


def test_request_model_keeps_a_models_successes_and_failures_together(client: httpx.Client) -> None:
    """Successes carry the served snapshot in `model`, failures the requested name: `request_model`
    is the same on both, so one series per requested model gives its error rate."""
    events = [
        *(make_event(request_model="gpt-4o", response_model="gpt-4o-2024-08-06", model="gpt-4o-2024-08-06",
                     http_status=200, input_tokens=10, output_tokens=1, latency_ms=100) for _ in range(9)),
        make_event(request_model="gpt-4o", model="gpt-4o", http_status=500, error_class="server",
                   usage_source="missing"),
        make_event(request_model=None, model="gpt-4o-mini", http_status=200),
    ]  # fmt: skip
    assert post_events(client, events).status_code == 200
    m = _samples(client.get("/metrics").text)
    name = "costwatch_llm_requests_total"
    assert {dict(ls)["model"] for n, ls in m if n == name and dict(ls)["request_model"] == "gpt-4o"} == {
        "gpt-4o-2024-08-06",
        "gpt-4o",
    }
    total = _sum(m, name, request_model="gpt-4o")
    failed = _sum(m, name, request_model="gpt-4o", error_class="server")
    assert (total, failed) == (10, 1)
    assert _sum(m, name, request_model="unknown", model="gpt-4o-mini") == 1
    # The histograms and the other counters keep their labels (cardinality: docs/api.md).
    for family in ("costwatch_llm_request_duration_seconds_bucket", "costwatch_llm_tokens_total"):
        assert any(n == family for n, _ in m)
        assert not any("request_model" in dict(ls) for n, ls in m if n == family)


def _observe_events_before(metrics, events: list, costs: list) -> None:
    """The per-event `observe_commit` the columnar one replaced (the oracle for its counts)."""
    from costwatch.events import status_class

    for event, cost in zip(events, costs, strict=True):
        model = event.model or event.response_model or event.request_model or "unknown"
        labels = (event.provider, model, event.app)
        status, error = status_class(event.http_status), event.error_class or "none"
        metrics.requests.labels(*labels, event.request_model or "unknown", status, error).inc()
        for type_name, field in (("input", "input_tokens"), ("output", "output_tokens"),
                                 ("cached_input", "cached_input_tokens"), ("cache_write", "cache_write_tokens"),
                                 ("reasoning", "reasoning_tokens")):  # fmt: skip
            if getattr(event, field):
                metrics.tokens.labels(*labels, type_name).inc(getattr(event, field))
        if cost is not None:
            metrics.cost.labels(*labels).inc(cost)
        elif event.usage_source != "missing" and (event.input_tokens or event.output_tokens):
            metrics.unpriced.labels(event.provider, model).inc()
        if event.usage_source == "estimated":
            metrics.estimated.labels(event.provider, model).inc()
        if event.latency_ms is not None:
            metrics.duration.labels(*labels).observe(event.latency_ms / 1000)
        if event.ttft_ms is not None:
            metrics.ttft.labels(*labels).observe(event.ttft_ms / 1000)
        for field, gauge in (("ratelimit_remaining_requests", metrics.rl_requests),
                             ("ratelimit_remaining_tokens", metrics.rl_tokens),
                             ("ratelimit_limit_requests", metrics.rl_limit_requests),
                             ("ratelimit_limit_tokens", metrics.rl_limit_tokens)):  # fmt: skip
            if getattr(event, field) is not None:
                gauge.labels(*labels).set(getattr(event, field))


def test_columnar_observe_commit_counts_what_the_per_event_loop_counted() -> None:
    from bench.eventgen import make_events
    from costwatch.daemon.batch import priced_table
    from costwatch.daemon.metrics import DaemonMetrics
    from costwatch.pricing import Pricer

    events = make_events(3_000, 1_767_225_600.0, 7)
    events += [
        make_event(model="", response_model="", request_model="", input_tokens=3, output_tokens=1),
        make_event(model="", response_model="gpt-4o-mini", request_model="", input_tokens=3, output_tokens=1),
        make_event(model="unknown-model", input_tokens=0, output_tokens=0),  # no tokens: not unpriced
        make_event(model="unknown-model", input_tokens=5, usage_source="estimated", latency_ms=500_000.0),
        make_event(http_status=None, error_class="timeout", latency_ms=0.0, ttft_ms=50.0),
        make_event(ratelimit_remaining_requests=None, ratelimit_limit_tokens=7, latency_ms=120_000.0),
        make_event(ratelimit_remaining_requests=5, ratelimit_limit_tokens=None, latency_ms=100.0),
    ]
    table = priced_table(events, Pricer())
    new, old = DaemonMetrics(), DaemonMetrics()
    new.observe_commit(table, 0.01)
    old.observe_commit(table.slice(0, 0), 0.01)  # the commit histogram and nothing else
    old.batches.inc()
    old.ingested.inc(len(events))
    _observe_events_before(old, events, table["cost_usd"].to_pylist())
    skip = ("costwatch_last_ingest_timestamp_seconds", "_created")
    got = {k: v for k, v in _samples(new.render().decode()).items() if not k[0].endswith(skip)}
    want = {k: v for k, v in _samples(old.render().decode()).items() if not k[0].endswith(skip)}
    assert got.keys() == want.keys()
    assert got == {k: pytest.approx(v, rel=1e-9) for k, v in want.items()}
