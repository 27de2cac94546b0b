"""The cached-rate fast path equals genai-prices' own calc_price for every token-priced model it ships."""

from __future__ import annotations

import pytest
from genai_prices import Usage, calc_price, data_snapshot

from costwatch.pricing import Pricer
from tests.daemon.conftest import make_event

USAGES = [
    (1_000, 0, 0, 200),
    (120_000, 30_000, 5_000, 4_000),
    (300_000, 100_000, 0, 9_000),  # above the usual 128k / 200k long-context tiers
]


def _token_models() -> list[tuple[str, str]]:
    """Every (provider, model) genai-prices ships (~2300; ~1800 take the cached-rate path)."""
    return [(p.id, m.id) for p in data_snapshot.get_snapshot().providers for m in p.models]


def test_sweep_matches_calc_price() -> None:
    pricer = Pricer()
    checked = mismatched = 0
    problems = []
    for provider, model in _token_models():
        for inp, cached, written, out in USAGES:
            usage = Usage(
                input_tokens=inp, cache_read_tokens=cached, cache_write_tokens=written, output_tokens=out
            )
            try:
                expected = float(calc_price(usage, model, provider_id=provider).total_price)
            except (LookupError, ValueError):
                continue  # not priced by tokens (or invalid for this usage): nothing to compare
            event = make_event(
                provider=provider,
                model=model,
                input_tokens=inp,
                cached_input_tokens=cached,
                cache_write_tokens=written,
                output_tokens=out,
            )
            got = pricer.price(event)
            if got is None and expected == 0:
                continue  # no token prices at all (e.g. free gemma): we say unpriced, not $0
            checked += 1
            if got is None or got.cost_usd != pytest.approx(expected, rel=1e-9, abs=1e-12):
                mismatched += 1
                problems.append((provider, model, inp, expected, got and got.cost_usd))
    assert checked > 3000  # ~2300 models x 3 usages, all providers
    assert not problems, (len(problems), problems[:20])
