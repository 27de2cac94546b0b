"""The estimate's error, measured on the fixture corpus, and the table in docs/architecture.md.

Every fixture stream whose real usage is known is replayed with its usage removed (chat's
usage chunk and ``"usage"`` members, Responses' terminal ``usage``, Anthropic's
``message_start`` and ``message_delta`` usage) through the real record path, and the
estimate is compared with the provider's numbers. The corpus holds responses only (no
requests), so only the output side can be measured here.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from costwatch.instrumentation.providers import Endpoint
from costwatch.instrumentation.record import CallId, CallRecord
from tests.fakes.provider import FIXTURES
from tests.instrumentation.conftest import HTTP

DOC = Path(__file__).resolve().parents[2] / "docs" / "architecture.md"
PATHS = {"chat": "/v1/chat/completions", "responses": "/v1/responses", "messages": "/v1/messages"}
# The documented bound on the corpus (docs/architecture.md): median |error| of output tokens.
MEDIAN_ABS_OUTPUT_ERROR = 0.90
# The billing fixtures (service tiers, speed, long-context thresholds: docs/pricing.md) carry token
# counts chosen to cross price thresholds, unrelated to their few words of text: not a corpus to
# measure a text-based estimate on.
BILLING_FIXTURES = ("_priority", "_flex", "_fast_us")


def strip_usage(api: str, raw: bytes, keep_message_start: bool = False) -> bytes:
    """The stream as a server that sends no usage would have sent it."""
    out = []
    for block in raw.split(b"\n\n"):
        if not block.strip():
            continue
        lines = block.split(b"\n")
        others = [line for line in lines if not line.startswith(b"data: ")]
        [data] = [line[6:] for line in lines if line.startswith(b"data: ")]
        if data != b"[DONE]":
            event = json.loads(data)
            if api == "chat":
                if event.get("usage") and event.get("choices") == []:
                    continue  # the include_usage chunk
                event.pop("usage", None)
            elif api == "responses":
                if isinstance(event.get("response"), dict):
                    event["response"]["usage"] = None
            elif event.get("type") == "message_start" and not keep_message_start:
                event["message"].pop("usage", None)
            elif event.get("type") == "message_delta":
                event.pop("usage", None)
            data = json.dumps(event, separators=(",", ":")).encode()
        out.append(b"\n".join([*others, b"data: " + data]))
    return b"\n\n".join(out) + b"\n\n"


def replay(api: str, raw: bytes) -> Any:
    request = HTTP.Request(
        "POST",
        "http://compat.local" + PATHS[api],
        json={"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]},
    )
    provider = "anthropic" if api == "messages" else "openai"
    rec = CallRecord(Endpoint(provider, api), request, True, "app", CallId(), "0", None, None, lambda r: None)
    rec.response = HTTP.Response(200, headers={"content-type": "text/event-stream"})
    rec.add_chunk(raw)
    rec.finish()
    return rec.to_event()


def measure() -> list[dict[str, Any]]:
    rows = []
    for path in sorted(FIXTURES.glob("*.sse")):
        name = path.name.removesuffix(".sse")
        expected = json.loads((FIXTURES / f"{name}.expected.json").read_text())
        if expected["usage_source"] != "provider" or name.endswith(BILLING_FIXTURES):
            continue  # no real usage to compare with, or usage unrelated to the text
        raw = strip_usage(expected["api"], path.read_bytes())
        assert b'"usage":{' not in raw, name
        event = replay(expected["api"], raw)
        real = expected["usage"]
        rows.append(
            {
                "name": name,
                "api": expected["api"],
                "usage_source": event.usage_source,
                "real": real["output_tokens"],
                "reasoning": real["reasoning_tokens"],
                "estimate": event.output_tokens,
                "error": (event.output_tokens - real["output_tokens"]) / real["output_tokens"],
                "real_input": real["input_tokens"],
            }
        )
    return rows


def table(rows: list[dict[str, Any]]) -> list[str]:
    """The rows of the table in docs/architecture.md, exactly as written there."""
    lines = []
    for r in rows:
        reasoning = "n/a" if r["reasoning"] is None else str(r["reasoning"])
        visible = r["real"] - (r["reasoning"] or 0)
        lines.append(
            f"| `{r['name']}` | {r['real']} | {reasoning} | {visible} | {r['estimate']} | {r['error']:+.0%} |"
        )
    return lines


def test_output_estimate_error_on_the_corpus_is_the_documented_one() -> None:
    rows = measure()
    assert len(rows) >= 6
    assert {r["api"] for r in rows} == {"chat", "responses", "messages"}
    for r in rows:
        assert r["usage_source"] == "estimated", r["name"]
        assert 0 < r["estimate"] <= r["real"], r  # on this corpus the text never over-counts
    # Where the streamed text is the whole output (no reasoning, no tool call), within a token.
    plain = [r for r in rows if r["reasoning"] == 0 and "tool" not in r["name"]]
    assert len(plain) >= 2
    assert all(abs(r["estimate"] - r["real"]) <= 1 for r in plain), plain
    median = statistics.median(abs(r["error"]) for r in rows)
    assert median <= MEDIAN_ABS_OUTPUT_ERROR
    doc = DOC.read_text()
    for line in table(rows):
        assert line in doc, f"docs/architecture.md lacks the measured row:\n{line}"
    assert f"median |error| {median:.0%}" in doc


def test_anthropic_message_start_keeps_the_input_exact() -> None:
    """A stream cut after ``message_start``'s usage: the input side is the provider's, not estimated."""
    for path in sorted(FIXTURES.glob("anthropic_stream_*.sse")):
        expected = json.loads(path.with_suffix("").with_suffix(".expected.json").read_text())
        event = replay("messages", strip_usage("messages", path.read_bytes(), keep_message_start=True))
        assert event.usage_source == "estimated"
        assert event.input_tokens == expected["usage"]["input_tokens"]
        assert event.cached_input_tokens == expected["usage"]["cached_input_tokens"]
        assert event.cache_write_tokens == expected["usage"]["cache_write_tokens"]


if __name__ == "__main__":  # print the table for the docs
    measured = measure()
    print("\n".join(table(measured)))
    print(f"median |error| {statistics.median(abs(r['error']) for r in measured):.0%}")
