"""The response corpus: every fixture through a real client, checked field by field."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from costwatch.pricing import Pricer
from tests.fakes.provider import FIXTURES, FakeProvider
from tests.instrumentation.conftest import HTTP

NAMES = sorted(p.name.removesuffix(".expected.json") for p in FIXTURES.glob("*.expected.json"))
PATHS = {
    "chat": "/v1/chat/completions",
    "responses": "/v1/responses",
    "embeddings": "/v1/embeddings",
    "completions": "/v1/completions",
    "messages": "/v1/messages",
}
USAGE_FIELDS = (
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
)
# What the response says it was billed at (issue 21): checked for every fixture.
BILLING_FIELDS = (
    "service_tier",
    "speed",
    "inference_geo",
    "cache_write_5m_tokens",
    "cache_write_1h_tokens",
    "provider_cost_usd",
)
PRICED = [n for n in NAMES if "price" in json.loads((FIXTURES / f"{n}.expected.json").read_text())]
_PRICER = Pricer()


def test_corpus_is_broad() -> None:
    models = {json.loads((FIXTURES / f"{n}.expected.json").read_text())["response_model"] for n in NAMES}
    assert len(NAMES) >= 20
    assert len(models) >= 20
    assert any(Path(FIXTURES / f"{n}.sse").exists() for n in NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_fixture_normalized(name: str, fake_provider: FakeProvider, make_instrumented) -> None:
    emitter = make_instrumented(inject_stream_usage="off")
    expected = json.loads((FIXTURES / f"{name}.expected.json").read_text())
    body = {"model": "requested-model", "stream": expected["stream"], **expected.get("request", {})}
    headers = {"x-fake-scenario": f"fixture:{name}"}
    url = fake_provider.url + PATHS[expected["api"]]
    with HTTP.Client() as client:
        if expected["stream"]:
            with client.stream("POST", url, json=body, headers=headers) as response:
                raw = b"".join(response.iter_bytes())
            assert raw == (FIXTURES / f"{name}.sse").read_bytes()
        else:
            response = client.post(url, json=body, headers=headers)
            assert response.json() == json.loads((FIXTURES / f"{name}.json").read_text())
    [event] = emitter.wait_events(1)
    assert event.operation == expected["api"]
    assert event.provider == ("anthropic" if expected["api"] == "messages" else "openai")
    assert event.stream is expected["stream"]
    assert event.request_model == "requested-model"
    assert event.response_model == expected["response_model"]
    assert event.model == expected["response_model"]
    assert event.usage_source == expected["usage_source"]
    for field in USAGE_FIELDS:
        assert getattr(event, field) == expected["usage"][field], field
    assert (event.ttft_ms is not None) is expected["ttft"]
    assert event.http_status == 200
    assert event.error_class is None
    for field in BILLING_FIELDS:
        assert getattr(event, field) == expected["billing"][field], field
    if "price" in expected:
        _assert_priced_by_hand(event, expected["price"])


def _digits(value: float | None) -> str | None:
    """A cost to 12 decimal places (a millionth of a micro-dollar), trailing zeros dropped."""
    return None if value is None else format(Decimal(f"{value:.12f}").normalize(), "f")


def _assert_priced_by_hand(event, price: dict) -> None:
    got = _PRICER.price(event)
    assert got is not None
    assert _digits(got.cost_usd) == price["cost_usd"], price["by_hand"]
    assert _digits(got.computed_cost_usd) == price["computed_cost_usd"], price["by_hand"]
    assert got.cost_source == price["cost_source"]


def test_priced_fixtures_cover_every_case() -> None:
    """One hand-priced fixture per case of issue 21."""
    assert len(PRICED) >= 11
    billed = [json.loads((FIXTURES / f"{n}.expected.json").read_text())["billing"] for n in PRICED]
    tiers = {b["service_tier"] for b in billed}
    assert {"flex", "priority", "default", "batch", "standard"} <= tiers
    assert any(b["speed"] == "fast" and b["inference_geo"] == "us" for b in billed)
    assert any(b["cache_write_1h_tokens"] for b in billed)
    assert any(b["provider_cost_usd"] is not None for b in billed)
