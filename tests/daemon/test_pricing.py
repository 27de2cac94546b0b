"""Pricing: cached per-token rates agree with genai-prices' published rates and its own calc_price."""

from __future__ import annotations

import time

import httpx
import pytest
from genai_prices import Usage, calc_price

from costwatch.pricing import GENAI_PRICES_VERSION, Pricer
from costwatch.settings import PriceOverride
from tests.daemon.conftest import make_event, post_events, sql


def test_published_rates_by_hand() -> None:
    p = Pricer()
    # gpt-4o-mini: $0.15 in, $0.075 cached, $0.60 out; no cache-write rate -> input rate.
    price = p.price(
        make_event(input_tokens=1_000, cached_input_tokens=200, cache_write_tokens=50, output_tokens=100)
    )
    assert price is not None
    assert price.cost_usd == pytest.approx((750 * 0.15 + 200 * 0.075 + 50 * 0.15 + 100 * 0.6) / 1e6)
    assert price.version == GENAI_PRICES_VERSION and price.source == "genai-prices"
    # claude-sonnet-4: $3 in, $0.30 read, $3.75 write, $15 out; reasoning is inside output.
    ev = make_event(
        provider="anthropic",
        model="claude-sonnet-4-20250514",
        input_tokens=1_000,
        cached_input_tokens=200,
        cache_write_tokens=50,
        output_tokens=100,
        reasoning_tokens=60,
    )
    assert p.price(ev).cost_usd == pytest.approx((750 * 3 + 200 * 0.3 + 50 * 3.75 + 100 * 15) / 1e6)


@pytest.mark.parametrize(
    ("provider", "model", "tokens"),
    [
        ("openai", "gpt-4o-mini", (12_345, 2_000, 0, 777)),
        ("anthropic", "claude-sonnet-4-20250514", (50_000, 30_000, 5_000, 1_200)),
        ("google", "gemini-2.5-pro", (150_000, 0, 0, 1_000)),
        ("google", "gemini-2.5-pro", (250_000, 10_000, 0, 1_000)),  # long-context tier
        ("openai", "gpt-4o", (1_000, 0, 0, 1_000)),
    ],
)
def test_fast_path_equals_calc_price(provider: str, model: str, tokens: tuple[int, int, int, int]) -> None:
    inp, cached, written, out = tokens
    ev = make_event(
        provider=provider,
        model=model,
        input_tokens=inp,
        cached_input_tokens=cached,
        cache_write_tokens=written,
        output_tokens=out,
    )
    usage = Usage(input_tokens=inp, cache_read_tokens=cached, cache_write_tokens=written, output_tokens=out)
    expected = calc_price(usage, model, provider_id=provider)
    got = Pricer().price(ev)
    assert got is not None
    assert got.cost_usd == pytest.approx(float(expected.total_price), rel=1e-9)
    assert got.input_cost_usd == pytest.approx(float(expected.input_price), rel=1e-9)


def test_unpriceable() -> None:
    p = Pricer()
    assert p.price(make_event(model="no-such-model-x", input_tokens=1, output_tokens=1)) is None
    assert p.price(make_event(usage_source="missing")) is None
    assert p.price(make_event(model=None, input_tokens=1, output_tokens=1)) is None
    assert p.price(make_event(provider="no-such-provider", input_tokens=1, output_tokens=1)) is None


def test_price_is_fast() -> None:
    p = Pricer()
    events = [
        make_event(input_tokens=1000 + i, output_tokens=10, cached_input_tokens=100) for i in range(20_000)
    ]
    p.price(events[0])
    started = time.perf_counter()
    for e in events:
        p.price(e)
    per_event_us = (time.perf_counter() - started) / len(events) * 1e6
    assert per_event_us < 20, per_event_us  # calc_price is ~50-70 µs


def test_reprice_after_adding_an_override(start_daemon) -> None:
    d = start_daemon()
    with httpx.Client(base_url=d.url, headers={"Authorization": f"Bearer {d.token}"}) as c:
        post_events(c, [make_event(provider="acme", model="acme-1", input_tokens=1_000_000, output_tokens=0)])
        assert sql(c, "SELECT cost_usd, priced FROM usage_events") == [[None, False]]
    d.stop()
    override = PriceOverride(provider="acme", model="acme-1", input_per_mtok=0.5, output_per_mtok=1)
    d2 = start_daemon(prices=[override])
    with httpx.Client(base_url=d2.url, headers={"Authorization": f"Bearer {d2.token}"}) as c:
        assert c.post("/v1/admin/reprice", json={"since": None}).json() == {"repriced": 1, "priced": 1}
        assert sql(c, "SELECT cost_usd, priced, price_source FROM usage_events") == [[0.5, True, "override"]]
        assert c.post("/v1/admin/reprice", json={"since": "yesterday"}).status_code == 400
