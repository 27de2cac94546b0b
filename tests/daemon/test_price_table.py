"""The writer's columnar pricing (`Pricer.price_table`) gives exactly what `Pricer.price` gives per event."""

from __future__ import annotations

import math
import random

from genai_prices import data_snapshot

from costwatch.daemon.batch import events_table
from costwatch.events import UsageEvent
from costwatch.pricing import PRICE_COLUMNS, Pricer
from costwatch.settings import PriceOverride
from tests.daemon.conftest import make_event

USAGES = [
    (1_000, 0, 0, 200),
    (120_000, 30_000, 5_000, 4_000),
    (300_000, 100_000, 0, 9_000),  # above the usual 128k / 200k long-context tiers
    (None, None, None, 50),  # output only
    (40, 500, 900, None),  # more cached/written than input: clamped like `apply_rates`
]


def _per_event(pricer: Pricer, events: list[UsageEvent]) -> dict[str, list[object]]:
    prices = [pricer.price(e) for e in events]
    return {
        "cost_usd": [p.cost_usd if p else None for p in prices],
        "input_cost_usd": [p.input_cost_usd if p else None for p in prices],
        "output_cost_usd": [p.output_cost_usd if p else None for p in prices],
        "priced": [p is not None for p in prices],
        "price_source": [p.source if p else None for p in prices],
        "price_version": [p.version if p else None for p in prices],
        "computed_cost_usd": [p.computed_cost_usd if p else None for p in prices],
        "cost_source": [p.cost_source if p else None for p in prices],
    }


def _assert_same(pricer: Pricer, events: list[UsageEvent]) -> None:
    expected = _per_event(pricer, events)
    got = pricer.price_table(events_table(events))
    assert list(got) == list(PRICE_COLUMNS)
    for name, column in got.items():
        assert column.type == PRICE_COLUMNS[name], name
        values = column.to_pylist()
        assert len(values) == len(events)
        mismatches = [
            (i, events[i].provider, events[i].model, expected[name][i], v)
            for i, v in enumerate(values)
            if v != expected[name][i] and not (isinstance(v, float) and math.isnan(v))
        ]
        assert not mismatches, (name, len(mismatches), mismatches[:10])  # bit-for-bit, not approx


def test_every_shipped_model_bit_for_bit() -> None:
    """~2300 models x 5 usages in one table, shuffled so a model's rows are not contiguous."""
    events = []
    for provider in data_snapshot.get_snapshot().providers:
        for model in provider.models:
            for inp, cached, written, out in USAGES:
                events.append(
                    make_event(
                        provider=provider.id,
                        model=model.id,
                        input_tokens=inp,
                        cached_input_tokens=cached,
                        cache_write_tokens=written,
                        output_tokens=out,
                    )
                )
    random.Random(7).shuffle(events)
    assert len(events) > 10_000
    pricer = Pricer()
    _assert_same(pricer, events)
    priced = pricer.price_table(events_table(events))["priced"].to_pylist()
    assert sum(priced) > 5_000  # most of them really were priced, not all NULL


# (service_tier, speed, inference_geo) as responses report them, including tiers no model has.
CONTEXTS = [
    ("batch", None, None),
    ("flex", None, None),
    ("priority", None, None),
    ("scale", None, None),
    ("standard", "fast", "us"),
    (None, None, "us"),
    ("no-such-tier", None, None),
]


def test_every_shipped_model_and_tier_bit_for_bit() -> None:
    """Tiers, speed, geography, 1-hour cache writes and provider-reported cost, per column as per event."""
    events = []
    for provider in data_snapshot.get_snapshot().providers:
        for model in provider.models:
            for k, (tier, speed, geo) in enumerate(CONTEXTS):
                for inp, cached, written, out in USAGES[1:3]:
                    events.append(
                        make_event(
                            provider=provider.id,
                            model=model.id,
                            input_tokens=inp,
                            cached_input_tokens=cached,
                            cache_write_tokens=written,
                            cache_write_1h_tokens=written // 3 if written else None,
                            output_tokens=out,
                            service_tier=tier,
                            speed=speed,
                            inference_geo=geo,
                            provider_cost_usd=0.125 if k == 2 else None,
                        )
                    )
    random.Random(11).shuffle(events)
    pricer = Pricer()
    _assert_same(pricer, events)
    got = pricer.price_table(events_table(events))
    assert sum(got["priced"].to_pylist()) > 5_000
    assert set(got["cost_source"].to_pylist()) == {"provider", "computed", None}


def test_unpriceable_rows_and_model_fallbacks() -> None:
    events = [
        make_event(model=None, response_model="gpt-4o", input_tokens=10, output_tokens=5),
        make_event(model="", request_model="gpt-4o-mini", input_tokens=10, output_tokens=5),
        make_event(model=None, input_tokens=10, output_tokens=5),  # no name at all
        make_event(usage_source="missing", input_tokens=10, output_tokens=5),
        make_event(input_tokens=None, output_tokens=None),
        make_event(model="no-such-model-x", input_tokens=1, output_tokens=1),
        make_event(provider="no-such-provider", input_tokens=1, output_tokens=1),
        make_event(provider="anthropic", model="claude-sonnet-4-20250514", input_tokens=3, output_tokens=4),
    ]
    pricer = Pricer()
    _assert_same(pricer, events)
    priced = pricer.price_table(events_table(events))["priced"].to_pylist()
    assert priced == [True, True, False, False, False, False, False, True]


def test_overrides_and_empty_table() -> None:
    pricer = Pricer(
        [
            PriceOverride(model="house-model", input_per_mtok=1.0, output_per_mtok=2.0),
            PriceOverride(provider="openai", model="gpt-4o-mini", input_per_mtok=9.0, output_per_mtok=9.0),
        ]
    )
    events = [
        make_event(provider="vllm", model="house-model", input_tokens=1_000_000, output_tokens=10),
        make_event(model="gpt-4o-mini", input_tokens=100, output_tokens=100),
        make_event(provider="anthropic", model="gpt-4o-mini", input_tokens=100, output_tokens=100),
    ]
    _assert_same(pricer, events)
    assert pricer.price_table(events_table(events))["cost_usd"].to_pylist()[0] == 1.0 + 10 * 2.0 / 1e6
    empty = pricer.price_table(events_table([]))
    assert all(len(column) == 0 for column in empty.values())


def test_reprice_restores_what_ingest_priced(tmp_path) -> None:
    """`reprice` (columnar, from stored rows) writes back exactly the prices the writer stored."""
    from costwatch.daemon.queries import reprice
    from costwatch.daemon.store import Store

    models = [(p.id, m.id) for p in data_snapshot.get_snapshot().providers for m in p.models][::7]
    events = [
        make_event(
            provider=prov, model=model, input_tokens=120_000, cached_input_tokens=3_000, output_tokens=900
        )
        for prov, model in models
    ] + [
        make_event(model="no-such-model-x", input_tokens=1, output_tokens=1),
        make_event(usage_source="missing"),
        make_event(model="gpt-5", service_tier="flex", input_tokens=1_000, output_tokens=10),
        make_event(
            provider="anthropic",
            model="claude-opus-4-6",  # time-dependent price: the per-row path
            input_tokens=5_000,
            cache_write_tokens=3_000,
            cache_write_1h_tokens=1_000,
            output_tokens=10,
            service_tier="batch",
            inference_geo="us",
        ),
        make_event(model="router/some-model", input_tokens=10, output_tokens=10, provider_cost_usd=0.5),
    ]
    pricer = Pricer()
    store = Store(tmp_path / "r.duckdb", pricer)
    query = (
        "SELECT id, cost_usd, input_cost_usd, output_cost_usd, priced, price_source, price_version,"
        " computed_cost_usd, cost_source FROM usage_events ORDER BY id"
    )
    try:
        assert store.submit(events).result(30).accepted == len(events)
        stored = store.read(lambda cur: cur.execute(query).fetchall())
        store.call(
            lambda cur: cur.execute(
                "UPDATE usage_events SET cost_usd = NULL, priced = false, computed_cost_usd = NULL,"
                " cost_source = NULL"
            )
        )
        result = store.call(lambda cur: reprice(cur, pricer, None))
        assert result == {"repriced": len(events), "priced": sum(row[4] for row in stored)}
        assert store.read(lambda cur: cur.execute(query).fetchall()) == stored
        assert result["priced"] > 200
    finally:
        store.close()
