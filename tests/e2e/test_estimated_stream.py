"""A stream that completes without usage is stored estimated and priced, end to end.

A real app process (`import costwatch.autoinstrument`, default settings, so no
``include_usage`` is injected for a base URL that is not api.openai.com) streams from
the fake provider with the real SDKs: a chat stream that never asked for usage, a
Responses stream and an Anthropic stream whose server sends none. A real
`costwatch daemon` stores and prices them. The expected tokens are worked out by hand
from the estimate's rule (docs/architecture.md) and the costs from genai-prices'
published per-MTok rates.
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

MINI = "gpt-4o-mini-2024-07-18"  # $0.15 input, $0.60 output per MTok
SONNET = "claude-sonnet-4-20250514"  # $3 input, $15 output per MTok
# Every request's prompt is one user message "hi": ⌈2/4⌉ = 1 + 4 (the message) + 3 (the reply) = 8.
# Every answer is "Hello from the fake": 19 characters → ⌈19/4⌉ = 5.
INPUT, OUTPUT = 8, 5
MINI_COST = (INPUT * 0.15 + OUTPUT * 0.60) / 1e6
SONNET_COST = (INPUT * 3 + OUTPUT * 15) / 1e6

APP_SCRIPT = """
import sys
import costwatch.autoinstrument
import costwatch, openai, anthropic

base = sys.argv[1]
mini = {"x-fake-response-model": "MINI_MODEL"}
client = openai.OpenAI(base_url=base + "/v1", api_key="sk-test-0123456789abcdefghijklmnop")
stream = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
                                        stream=True, extra_headers=mini)
text = "".join(c.choices[0].delta.content or "" for c in stream)
assert text == "Hello from the fake", text
events = list(client.responses.create(model="gpt-4o-mini", input="hi", stream=True,
                                      extra_headers={**mini, "x-fake-scenario": "no-usage"}))
assert events[-1].type == "response.completed" and events[-1].response.usage is None
a = anthropic.Anthropic(base_url=base, api_key="sk-ant-test")
raw = a.messages.create(model="claude-sonnet-4-0", max_tokens=64, messages=[{"role": "user", "content": "hi"}],
                        stream=True,
                        extra_headers={"x-fake-response-model": "SONNET_MODEL", "x-fake-scenario": "no-usage"})
text = "".join(e.delta.text for e in raw if e.type == "content_block_delta")
assert text == "Hello from the fake", text
assert costwatch.flush(10), "events not delivered"
print("ok")
""".replace("MINI_MODEL", MINI).replace("SONNET_MODEL", SONNET)


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonProcess]:
    with DaemonProcess(tmp_path / "state") as d:
        yield d


def test_completed_streams_without_usage_are_estimated_and_priced(daemon: DaemonProcess) -> None:
    with FakeProvider() as fake:
        result = subprocess.run(
            [sys.executable, "-c", APP_SCRIPT, fake.url],
            env=daemon.app_env(),
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip().splitlines()[-1] == "ok"
        assert "stream_options" not in fake.requests[0].body  # nothing asked the host for usage

    rows = daemon.sql(
        "SELECT operation, model, stream, usage_source, input_tokens, output_tokens, reasoning_tokens,"
        " cost_usd, priced FROM usage_events ORDER BY ts_start"
    )
    assert [(r["operation"], r["model"], r["stream"], r["usage_source"]) for r in rows] == [
        ("chat", MINI, True, "estimated"),
        ("responses", MINI, True, "estimated"),
        ("messages", SONNET, True, "estimated"),
    ]
    for r in rows:
        assert (r["input_tokens"], r["output_tokens"], r["reasoning_tokens"]) == (INPUT, OUTPUT, None)
        assert r["priced"] is True
    assert [r["cost_usd"] for r in rows] == pytest.approx([MINI_COST, MINI_COST, SONNET_COST], rel=1e-9)

    # /metrics counts them apart, and their tokens and cost are in the totals.
    text = httpx.get(daemon.url + "/metrics", timeout=5).text
    samples = [
        (s.name, s.labels, s.value) for fam in text_string_to_metric_families(text) for s in fam.samples
    ]

    def total(name: str, **labels: str) -> float:
        return sum(
            v for n, lab, v in samples if n == name and all(lab.get(k) == x for k, x in labels.items())
        )

    assert total("costwatch_estimated_usage_events_total", provider="openai", model=MINI) == 2
    assert total("costwatch_estimated_usage_events_total", provider="anthropic", model=SONNET) == 1
    assert total("costwatch_llm_tokens_total", type="output") == 3 * OUTPUT
    assert total("costwatch_llm_cost_usd_total") == pytest.approx(2 * MINI_COST + SONNET_COST, rel=1e-9)

    # `costwatch status` says how many events and how much spend rest on estimates.
    with daemon.client() as c:
        status = c.get("/v1/status").json()
    assert (status["usage_estimated"], status["usage_missing"]) == (3, 0)
    assert status["spend_month_estimated_usd"] == pytest.approx(2 * MINI_COST + SONNET_COST, rel=1e-9)
    out = subprocess.run(
        [sys.executable, "-m", "costwatch.cli", "status"],
        env={**daemon.env, "COSTWATCH_PORT": str(daemon.port)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "estimated usage: 3 events" in out.stdout, out.stdout
    assert json.dumps(status)  # the reply is plain JSON
