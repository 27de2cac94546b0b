"""The spine end to end: a real app process using the real SDKs with `import costwatch.autoinstrument`,
a real `costwatch daemon` subprocess on a DuckDB file, the CLI, /metrics and the kill switch.

The expected figures form a ledger computed by hand from the fake provider's usage and
genai-prices' published per-MTok rates (not from costwatch's pricing code).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fakes.provider import FakeProvider
from tests.support.processes import DaemonProcess

pytestmark = pytest.mark.slow

MINI = "gpt-4o-mini-2024-07-18"  # gpt-4o-mini: $0.15 input, $0.075 cached input, $0.60 output per MTok
SONNET = (
    "claude-sonnet-4-20250514"  # claude-sonnet-4: $3 input, $0.30 cache read, $3.75 cache write, $15 output
)

# Five successful gpt-4o-mini calls (3 plain, 1 stream, 1 after a 429), each 25 input (10 cached),
# 9 output (3 reasoning): (15*0.15 + 10*0.075 + 9*0.60) / 1e6 = 8.4e-6 USD a call.
MINI_CALLS = 5
MINI_COST = MINI_CALLS * (15 * 0.15 + 10 * 0.075 + 9 * 0.60) / 1e6
# One Anthropic message: 14 uncached input + 100 cache read + 20 cache write, 11 output.
SONNET_COST = (14 * 3 + 100 * 0.30 + 20 * 3.75 + 11 * 15) / 1e6

APP_SCRIPT = """
import asyncio, json, sys, uuid
import costwatch.autoinstrument
import costwatch, openai, anthropic

base = sys.argv[1]
mini = {"x-fake-response-model": "MINI_MODEL"}
client = openai.OpenAI(base_url=base + "/v1", api_key="sk-test-0123456789abcdefghijklmnop", max_retries=2)
for _ in range(3):
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
                                   extra_headers=mini)
with costwatch.attribute(user="alice", tags={"feature": "search"}):
    stream = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
                                            stream=True, stream_options={"include_usage": True}, extra_headers=mini)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
assert text == "Hello from the fake", text
client.chat.completions.create(
    model="gpt-4o-mini", messages=[{"role": "user", "content": "retry me"}],
    extra_headers={**mini, "x-fake-scenario": "fail-then-ok:429:1", "x-fake-key": uuid.uuid4().hex})
client.chat.completions.create(model="my-local-llama", messages=[{"role": "user", "content": "hi"}])
try:
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}],
                                   extra_headers={"x-fake-scenario": "status:401"})
except openai.AuthenticationError:
    pass

async def claude():
    a = anthropic.AsyncAnthropic(base_url=base, api_key="sk-ant-test")
    m = await a.messages.create(model="claude-sonnet-4-0", max_tokens=64,
                                messages=[{"role": "user", "content": "hi"}],
                                extra_headers={"x-fake-response-model": "SONNET_MODEL"})
    return m.usage.output_tokens
assert asyncio.run(claude()) == 11
assert costwatch.flush(10), "events not delivered"
print(json.dumps({"ok": True}))
""".replace("MINI_MODEL", MINI).replace("SONNET_MODEL", SONNET)


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonProcess]:
    with DaemonProcess(tmp_path / "state") as d:
        yield d


def cli(daemon: DaemonProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "costwatch.cli", *args],
        env=daemon.env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def metric_samples(url: str) -> list[tuple[str, dict[str, str], float]]:
    text = httpx.get(url + "/metrics", timeout=5).text
    return [(s.name, s.labels, s.value) for fam in text_string_to_metric_families(text) for s in fam.samples]


def _run_app(daemon: DaemonProcess, fake: FakeProvider) -> None:
    result = subprocess.run(
        [sys.executable, "-c", APP_SCRIPT, fake.url],
        env=daemon.app_env(),
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"ok": True}


def test_instrumented_calls_land_priced_in_duckdb_sql_and_metrics(daemon: DaemonProcess) -> None:
    with FakeProvider() as fake:
        _run_app(daemon, fake)
        provider_requests = fake.count

    # Every HTTP attempt is one event: 3 + stream + (429, retry) + unknown model + 401 + anthropic.
    assert provider_requests == 9
    rows = daemon.sql(
        "SELECT model, count(*) AS n, sum(input_tokens) AS input, sum(cached_input_tokens) AS cached,"
        " sum(cache_write_tokens) AS cache_write, sum(output_tokens) AS output,"
        " sum(reasoning_tokens) AS reasoning, sum(cost_usd) AS cost, bool_and(priced) AS priced"
        " FROM usage_events WHERE error_class IS NULL GROUP BY model ORDER BY model"
    )
    by_model = {r["model"]: r for r in rows}
    assert set(by_model) == {MINI, SONNET, "my-local-llama-snap"}
    mini = by_model[MINI]
    assert (mini["n"], mini["input"], mini["cached"], mini["output"], mini["reasoning"]) == (
        5,
        125,
        50,
        45,
        15,
    )
    assert mini["cost"] == pytest.approx(MINI_COST, rel=1e-9)
    sonnet = by_model[SONNET]
    assert (sonnet["input"], sonnet["cached"], sonnet["cache_write"], sonnet["output"]) == (134, 100, 20, 11)
    assert sonnet["cost"] == pytest.approx(SONNET_COST, rel=1e-9)
    # An unknown model is stored unpriced: NULL cost, never a guess and never $0.
    llama = by_model["my-local-llama-snap"]
    assert llama["cost"] is None and llama["priced"] is False and llama["input"] == 25

    errors = daemon.sql(
        "SELECT error_class, http_status, retry_attempt, usage_source FROM usage_events"
        " WHERE error_class IS NOT NULL ORDER BY error_class"
    )
    assert errors == [
        {"error_class": "authentication", "http_status": 401, "retry_attempt": 0, "usage_source": "missing"},
        {"error_class": "rate_limit", "http_status": 429, "retry_attempt": 0, "usage_source": "missing"},
    ]
    retried = daemon.sql(
        "SELECT count(DISTINCT call_id) AS calls, list(retry_attempt ORDER BY retry_attempt) AS attempts"
        " FROM usage_events WHERE call_id IN (SELECT call_id FROM usage_events WHERE http_status = 429)"
    )
    assert retried == [{"calls": 1, "attempts": [0, 1]}]
    streamed = daemon.sql(
        "SELECT \"user\", tags['feature'] AS feature, ttft_ms > 0 AS has_ttft, app FROM usage_events WHERE stream"
    )
    assert streamed == [{"user": "alice", "feature": "search", "has_ttft": True, "app": "e2e-app"}]

    # The CLI goes through the running daemon (DuckDB lets no other process open the file).
    out = cli(daemon, "sql", "SELECT round(sum(cost_usd), 12) AS usd FROM usage_events", "--format", "json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)[0]["usd"] == pytest.approx(MINI_COST + SONNET_COST, rel=1e-9)

    # /metrics shows the same totals.
    samples = metric_samples(daemon.url)

    def total(name: str, **labels: str) -> float:
        return sum(
            v for n, lab, v in samples if n == name and all(lab.get(k) == x for k, x in labels.items())
        )

    assert total("costwatch_llm_cost_usd_total") == pytest.approx(MINI_COST + SONNET_COST, rel=1e-9)
    assert total("costwatch_llm_tokens_total", model=MINI, type="input") == 125
    assert total("costwatch_llm_tokens_total", model=SONNET, type="cache_write") == 20
    assert total("costwatch_llm_requests_total", error_class="rate_limit") == 1
    assert total("costwatch_llm_requests_total") == 9
    assert total("costwatch_llm_time_to_first_token_seconds_count") == 1


BLOCKED_SCRIPT = """
import sys, time
import costwatch.autoinstrument
import costwatch, openai
client = openai.OpenAI(base_url=sys.argv[1] + "/v1", api_key="sk-test", max_retries=3)
deadline = time.monotonic() + float(sys.argv[2])
outcome = "allowed"
while time.monotonic() < deadline:
    try:
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    except costwatch.KillSwitchEngaged as exc:
        outcome = "blocked: " + str(exc)
        break
    time.sleep(0.05)
costwatch.flush(5)
print(outcome)
"""


def _run_until_blocked(daemon: DaemonProcess, fake: FakeProvider, app: str, seconds: float) -> str:
    result = subprocess.run(
        [sys.executable, "-c", BLOCKED_SCRIPT, fake.url, str(seconds)],
        env=daemon.app_env(app=app),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


def test_cli_kill_switch_blocks_other_processes_until_resumed(daemon: DaemonProcess) -> None:
    out = cli(daemon, "kill", "--scope", "app=billing", "--reason", "runaway loop")
    assert out.returncode == 0, out.stderr
    with FakeProvider() as fake:
        outcome = _run_until_blocked(daemon, fake, "billing", 5)
        assert outcome.startswith("blocked: ")
        assert "runaway loop" in outcome and "costwatch resume --scope app=billing" in outcome
        assert fake.count == 0, "a blocked call must not reach the provider (nor be retried)"
        # Another app is not in scope.
        assert _run_until_blocked(daemon, fake, "search", 0.3) == "allowed"

        status = cli(daemon, "status")
        assert status.returncode == 0 and "runaway loop" in status.stdout

        assert cli(daemon, "resume", "--scope", "app=billing").returncode == 0
        before = fake.count
        assert _run_until_blocked(daemon, fake, "billing", 0.3) == "allowed"
        assert fake.count > before

    blocked = daemon.sql("SELECT count(*) AS n FROM usage_events WHERE blocked AND error_class = 'blocked'")
    assert blocked == [{"n": 1}]


def test_daemon_restart_keeps_events_and_kill_switch(daemon: DaemonProcess) -> None:
    assert cli(daemon, "kill", "--reason", "maintenance").returncode == 0
    with FakeProvider() as fake:
        outcome = _run_until_blocked(daemon, fake, "any", 5)
        assert outcome.startswith("blocked: ") and "maintenance" in outcome
        assert fake.count == 0
    n_before = daemon.sql("SELECT count(*) AS n FROM usage_events")[0]["n"]
    assert n_before == 1
    assert daemon.stop() == 0
    daemon.start()
    assert daemon.sql("SELECT count(*) AS n FROM usage_events")[0]["n"] == n_before
    state = httpx.get(
        daemon.url + "/v1/killswitch", headers={"Authorization": f"Bearer {daemon.token}"}
    ).json()
    assert [s["reason"] for s in state["engaged"]] == ["maintenance"]
