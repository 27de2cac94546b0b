"""What the invoice prices (issue 21): tiers, batch, speed, geography, cache lifetimes, long
context and provider-reported cost, against the published rate cards, computed by hand.

Rates are USD per million tokens; each expected cost is written out as the hand computation
in micro-dollars. `_digits` rounds to 12 decimal places (a millionth of a micro-dollar), so
a cost matches "to the last digit" of its hand-computed value.
"""

from __future__ import annotations

from decimal import Decimal

import pytest

from costwatch.pricing import Pricer, price_context
from costwatch.settings import PriceOverride
from tests.daemon.conftest import make_event

pricer = Pricer()


def _digits(value: float | None) -> str | None:
    return None if value is None else format(Decimal(f"{value:.12f}").normalize(), "f")


def _usd(micro: str) -> str:
    """Hand-computed micro-dollars as the dollar string `_digits` gives."""
    return format((Decimal(micro) / 1_000_000).normalize(), "f")


def _cost(**fields) -> str | None:
    price = pricer.price(make_event(**fields))
    return None if price is None else _digits(price.cost_usd)


# -- OpenAI: flex = batch rates, priority per model, batch 50 % (developers.openai.com/api/docs/pricing)


@pytest.mark.parametrize(
    ("tier", "micro"),
    [
        (None, 8000 * 1.25 + 2000 * 0.125 + 1000 * 10),  # standard $1.25 / $0.125 / $10
        ("default", 8000 * 1.25 + 2000 * 0.125 + 1000 * 10),
        ("auto", 8000 * 1.25 + 2000 * 0.125 + 1000 * 10),
        ("flex", 8000 * 0.625 + 2000 * 0.0625 + 1000 * 5),  # flex $0.625 / $0.0625 / $5
        ("batch", 8000 * 0.625 + 2000 * 0.0625 + 1000 * 5),  # batch, the same
        ("priority", 8000 * 2.5 + 2000 * 0.25 + 1000 * 20),  # priority $2.50 / $0.25 / $20
    ],
)
def test_openai_gpt5_tiers(tier: str | None, micro: float) -> None:
    got = _cost(model="gpt-5-2025-08-07", service_tier=tier, input_tokens=10_000, cached_input_tokens=2_000,
                output_tokens=1_000)  # fmt: skip
    assert got == _usd(repr(micro))


def test_openai_priority_rates_per_model() -> None:
    # gpt-4.1 priority $3.50 / $0.875 cached / $14; gpt-4o priority $4.25 / $2.125 / $17
    assert _cost(model="gpt-4.1", service_tier="priority", input_tokens=1_000, output_tokens=100) == _usd(
        "4900"  # 1000*3.5 + 100*14
    )
    assert _cost(model="gpt-4o", service_tier="priority", input_tokens=1_000, cached_input_tokens=400,
                 output_tokens=100) == _usd("5100")  # fmt: skip  # 600*4.25 + 400*2.125 + 100*17


def test_openai_tiers_without_a_variant() -> None:
    # gpt-4.1 has no flex variant: flex is billed at its batch rates ($1 / $4).
    assert _cost(model="gpt-4.1", service_tier="flex", input_tokens=1_000, output_tokens=100) == _usd("1400")
    # codex-mini has no variant at all: flex and batch at 50 % of $1.50 / $6.
    for tier in ("flex", "batch"):
        assert _cost(model="codex-mini", service_tier=tier, input_tokens=1_000, output_tokens=100) == _usd(
            "1050"
        )
    # Priority on a model without a published priority rate: unpriced, not the standard rate.
    assert _cost(model="gpt-5-nano", service_tier="priority", input_tokens=1_000, output_tokens=100) is None
    assert _cost(model="gpt-5", service_tier="no-such-tier", input_tokens=1_000, output_tokens=100) is None
    # Scale tier is prepaid capacity: its tokens at list rates.
    assert _cost(model="gpt-5", service_tier="scale", input_tokens=1_000, output_tokens=100) == _usd("2250")


# -- Anthropic: batch 50 %, cache writes 1.25x (5 m) and 2x (1 h) base input, fast mode, US-only 1.1x
#    (platform.claude.com/docs/en/about-claude/pricing, .../api/service-tiers)


def test_anthropic_batch_variant_and_rule() -> None:
    # Haiku 4.5 batch (genai-prices variant): $0.50 in / $0.05 read / $0.625 5m write / $1 1h / $2.50 out
    got = _cost(provider="anthropic", model="claude-haiku-4-5", service_tier="batch", input_tokens=10_000,
                cached_input_tokens=2_000, cache_write_tokens=3_000, cache_write_1h_tokens=1_000,
                output_tokens=1_000)  # fmt: skip
    assert got == _usd("7350")  # 5000*0.5 + 2000*0.05 + 2000*0.625 + 1000*1 + 1000*2.5
    # Sonnet 4 has no batch variant in genai-prices 0.2.3: 50 % of $3 / $0.30 / $3.75 / $6 / $15.
    got = _cost(provider="anthropic", model="claude-sonnet-4-20250514", service_tier="batch", input_tokens=10_000,
                cached_input_tokens=2_000, cache_write_tokens=3_000, cache_write_1h_tokens=1_000,
                output_tokens=1_000)  # fmt: skip
    assert got == _usd("22050")  # 5000*1.5 + 2000*0.15 + 2000*1.875 + 1000*3 + 1000*7.5


def test_anthropic_cache_writes_by_lifetime() -> None:
    base = dict(provider="anthropic", model="claude-opus-4-1", input_tokens=10_000, cache_write_tokens=4_000,
                output_tokens=0)  # fmt: skip
    # Opus 4.1: $15 in, 5 m write $18.75 (1.25x), 1 h write $30 (2x)
    assert _cost(**base) == _usd("165000")  # 6000*15 + 4000*18.75
    assert _cost(**base, cache_write_5m_tokens=1_000, cache_write_1h_tokens=3_000) == _usd("198750")
    # 6000*15 + 1000*18.75 + 3000*30
    assert _cost(**base, cache_write_1h_tokens=9_999) == _usd("210000")  # clamped: 6000*15 + 4000*30


def test_anthropic_priority_speed_and_geography() -> None:
    std = dict(provider="anthropic", model="claude-opus-4-8", input_tokens=1_000, output_tokens=100)
    assert _cost(**std) == _usd("7500")  # $5 / $25
    # Priority Tier capacity is committed spend; its tokens are priced at list rates.
    assert _cost(**std, service_tier="priority") == _usd("7500")
    assert _cost(**std, speed="fast") == _usd("15000")  # fast mode $10 / $50
    assert _cost(**std, inference_geo="us") == _usd("8250")  # x1.1: $5.50 / $27.50
    assert _cost(**std, inference_geo="global") == _usd("7500")
    assert _cost(**std, speed="fast", inference_geo="us") == _usd("16500")  # (1000*10 + 100*50) * 1.1
    # US-only is 1.1x only on Opus 4.6 and newer: Opus 4.1 keeps its rate.
    assert _cost(provider="anthropic", model="claude-opus-4-1", input_tokens=1_000, output_tokens=100,
                 inference_geo="us") == _usd("22500")  # fmt: skip  # 1000*15 + 100*75
    # Fast mode on a model without a fast rate: unpriced.
    assert (
        _cost(provider="anthropic", model="claude-sonnet-4-5", input_tokens=1, output_tokens=1, speed="fast")
        is None
    )


def test_time_dependent_model_with_context() -> None:
    """Opus 4.6's price list is time-dependent (per-event calc_price): batch and US-only still apply."""
    got = _cost(provider="anthropic", model="claude-opus-4-6", service_tier="batch", inference_geo="us",
                input_tokens=5_000, cache_write_tokens=3_000, cache_write_1h_tokens=1_000,
                output_tokens=10)  # fmt: skip
    # batch $2.50 in / $3.125 5m / $5 1h / $12.50 out, x1.1 (in Decimal):
    # (2000*2.5 + 2000*3.125 + 1000*5 + 10*12.5) * 1.1 = 16375 * 1.1 = 18012.5
    assert got == _usd("18012.5")


# -- Long context: crossing the threshold re-prices every token of the request


@pytest.mark.parametrize(
    ("provider", "model", "inp", "cached", "micro"),
    [
        # OpenAI gpt-5.4: > 272K input: $2.50 -> $5, cached $0.25 -> $0.50, out $15 -> $22.50
        ("openai", "gpt-5.4", 272_000, 72_000, "548000"),  # 200000*2.5 + 72000*0.25 + 2000*15
        ("openai", "gpt-5.4", 272_001, 72_000, "1081005"),  # 200001*5 + 72000*0.5 + 2000*22.5
        # Google gemini-2.5-pro: > 200K: $1.25 -> $2.50, cached $0.125 -> $0.25, out $10 -> $15
        ("google", "gemini-2.5-pro", 200_000, 50_000, "213750"),  # 150000*1.25 + 50000*0.125 + 2000*10
        ("google", "gemini-2.5-pro", 200_001, 50_000, "417502.5"),  # 150001*2.5 + 50000*0.25 + 2000*15
        # xAI grok-4.3: >= 200K (inclusive): $1.25 -> $2.50, cached $0.20 -> $0.40, out $2.50 -> $5
        ("x-ai", "grok-4.3", 199_999, 0, "254998.75"),  # 199999*1.25 + 2000*2.5
        ("x-ai", "grok-4.3", 200_000, 0, "510000"),  # 200000*2.5 + 2000*5
        # Anthropic Sonnet 4.5: > 200K: $3 -> $6, read $0.30 -> $0.60, out $15 -> $22.50
        ("anthropic", "claude-sonnet-4-5", 200_000, 60_000, "468000"),  # 140000*3 + 60000*0.3 + 2000*15
        ("anthropic", "claude-sonnet-4-5", 200_001, 60_000, "921006"),  # 140001*6 + 60000*0.6 + 2000*22.5
    ],
)
def test_long_context_thresholds(provider: str, model: str, inp: int, cached: int, micro: str) -> None:
    got = _cost(
        provider=provider, model=model, input_tokens=inp, cached_input_tokens=cached, output_tokens=2_000
    )
    assert got == _usd(micro)


def test_long_context_tier_of_a_service_tier() -> None:
    # gpt-5.4 flex is tiered too: $1.25 -> $2.50 in, $7.50 -> $11.25 out above 272K.
    got = _cost(model="gpt-5.4", service_tier="flex", input_tokens=272_001, output_tokens=1_000)
    assert got == _usd("691252.5")  # 272001*2.5 + 1000*11.25


# -- Provider-reported cost wins, the computed cost stays beside it


def test_provider_cost_wins() -> None:
    event = make_event(model="gpt-4o-mini", input_tokens=1_000, output_tokens=200, provider_cost_usd=0.000285)
    price = pricer.price(event)
    assert price is not None and price.cost_source == "provider"
    assert price.cost_usd == 0.000285
    assert _digits(price.computed_cost_usd) == _usd("270")  # 1000*0.15 + 200*0.6
    assert price.source == "genai-prices"
    # A model costwatch cannot price: the provider's figure still counts.
    price = pricer.price(make_event(model="openai/gpt-4o-mini", input_tokens=1, output_tokens=1,
                                    provider_cost_usd=0.5))  # fmt: skip
    assert price is not None and (price.cost_usd, price.computed_cost_usd, price.cost_source) == (
        0.5,
        None,
        "provider",
    )
    assert price.input_cost_usd is None and price.source is None
    computed = pricer.price(make_event(model="gpt-4o-mini", input_tokens=1_000, output_tokens=200))
    assert computed is not None and computed.cost_source == "computed"
    assert computed.cost_usd == computed.computed_cost_usd


def test_overrides_price_every_tier_alike() -> None:
    p = Pricer(
        [PriceOverride(model="house", input_per_mtok=1.0, output_per_mtok=2.0, cache_write_per_mtok=1.5)]
    )
    for tier in (None, "batch", "priority"):
        ev = make_event(provider="vllm", model="house", service_tier=tier, input_tokens=1_000,
                        cache_write_tokens=200, cache_write_1h_tokens=100, output_tokens=10)  # fmt: skip
        price = p.price(ev)
        assert price is not None and _digits(price.cost_usd) == _usd("1120")  # 800*1 + 200*1.5 + 10*2


def test_price_context_normalization() -> None:
    assert price_context("openai", "default", None, None) == (None, None, None)
    assert price_context("openai", "Flex", None, None) == ("flex", None, None)
    assert price_context("anthropic", "priority", "standard", "global") == (None, None, None)
    assert price_context("openai", "priority", None, None) == ("priority", None, None)
    assert price_context("anthropic", "batch", "fast", "US") == ("batch", "fast", "us")
