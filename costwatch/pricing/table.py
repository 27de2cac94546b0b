"""`Pricer.price_table`: a whole commit priced at once, on Arrow columns.

The daemon's writer prices each commit here (`costwatch.daemon.store.batch_table`), so
this is the ingest hot path: rates are resolved once per distinct (provider, model, price
context) in the batch and applied with Arrow compute, never per row in Python. The
arithmetic is `costwatch.pricing.pricer.apply_rates`' in the same order of float
operations, so every cost is bit-for-bit what `Pricer.price` returns for the event
(tests/daemon/test_price_table.py checks it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from costwatch.pricing.costs import PRICE_COLUMNS
from costwatch.pricing.lookup import calc_exact
from costwatch.pricing.rates import Conditional, Rates, base
from costwatch.pricing.tiers import Context, price_context

__all__ = ["price_table"]

_SEP = "\x1f"  # joins a row's (service_tier, speed, inference_geo) into one dictionary key


def price_table(
    table: pa.Table, rates_for: Callable[[str, str, Context], Rates | Conditional | None]
) -> dict[str, pa.Array]:
    """`Pricer.price` for every row of a table with the event columns, as `PRICE_COLUMNS` arrays.

    ``rates_for`` is the pricer's cached lookup. Rows of time-dependent ("conditional")
    models go through `calc_price` one by one. A provider-reported cost then wins, as in
    `Pricer.price`.
    """
    n = table.num_rows
    model = _event_model_column(table)
    eligible = pc.and_kleene(
        pc.is_valid(model),
        pc.and_kleene(
            pc.not_equal(table["usage_source"], "missing"),
            pc.or_kleene(pc.is_valid(table["input_tokens"]), pc.is_valid(table["output_tokens"])),
        ),
    )
    # One integer key per (provider, model, context): dictionary codes combined, no string building
    # per row beyond the context's three labels.
    prov = pc.dictionary_encode(_combine(table["provider"]))
    mod = pc.dictionary_encode(_combine(model))
    ctx = pc.dictionary_encode(_combine(_context_column(table)))
    width = max(len(mod.dictionary), 1)
    cwidth = max(len(ctx.dictionary), 1)
    code = pc.add(
        pc.multiply(
            pc.add(pc.multiply(prov.indices.cast(pa.int64()), width), mod.indices.cast(pa.int64())),
            cwidth,
        ),
        ctx.indices.cast(pa.int64()),
    )  # null where the model is null
    code = pc.if_else(eligible, code, pa.scalar(None, pa.int64()))
    keys = pc.unique(code.drop_null()).to_pylist()
    providers = prov.dictionary.to_pylist()
    models = mod.dictionary.to_pylist()
    contexts = ctx.dictionary.to_pylist()
    per_key: list[Rates | None] = []
    conditional: dict[int, Conditional] = {}
    for k in keys:
        provider = providers[(k // cwidth) // width]
        labels = contexts[k % cwidth].split(_SEP)
        context = price_context(provider, labels[0] or None, labels[1] or None, labels[2] or None)
        rates = rates_for(provider, models[(k // cwidth) % width], context)
        if isinstance(rates, Conditional):
            conditional[k] = rates
            per_key.append(None)
        else:
            per_key.append(rates)
    slot = pc.index_in(code, value_set=pa.array(keys, pa.int64()))  # row -> index into keys
    known = pa.array([r is not None for r in per_key], pa.bool_())
    priced = pc.fill_null(pc.take(known, slot), False) if keys else pa.nulls(n, pa.bool_()).fill_null(False)
    columns = _apply_table(table, per_key, slot, priced) if keys else _unpriced(n)
    if conditional:
        columns = _price_conditional(table, model, code, conditional, columns)
    return _provider_cost(table, columns)


def _event_model_column(table: pa.Table) -> pa.Array | pa.ChunkedArray:
    """`pricer.event_model` for every row (null where it is None)."""
    return pc.coalesce(
        _nonempty(table["model"]), _nonempty(table["response_model"]), _nonempty(table["request_model"])
    )


def _nonempty(column: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """Empty strings as null: the per-event rule skips falsy names, not only None."""
    return pc.if_else(pc.equal(column, ""), pa.scalar(None, pa.string()), column)


def _combine(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


def _context_column(table: pa.Table) -> pa.Array | pa.ChunkedArray:
    def label(name: str) -> Any:
        return pc.fill_null(table[name], "")

    return pc.binary_join_element_wise(label("service_tier"), label("speed"), label("inference_geo"), _SEP)


def _unpriced(n: int) -> dict[str, pa.Array]:
    out = {name: pa.nulls(n, t) for name, t in PRICE_COLUMNS.items()}
    out["priced"] = pa.array([False] * n, pa.bool_())
    return out


def _rate_column(rates: list[Rates | None], attr: str, slot: Any, total_in: Any) -> Any:
    """Per-row USD/token for one rate kind, tiers resolved by the row's total input ("cliff")."""
    column = pc.take(
        pa.array([None if r is None else base(getattr(r, attr)) for r in rates], pa.float64()), slot
    )
    for k, r in enumerate(rates):
        rate = None if r is None else getattr(r, attr)
        if isinstance(rate, tuple):
            in_key = pc.equal(slot, k)
            for start, tier_rate in rate[1]:  # later tiers win, as `rates.at` searches from the top
                column = pc.if_else(pc.and_(in_key, pc.greater(total_in, start)), tier_rate, column)
    return column


def _apply_table(table: pa.Table, rates: list[Rates | None], slot: Any, priced: Any) -> dict[str, pa.Array]:
    """`apply_rates` on columns: the same operations in the same order, so the same floats."""
    f64 = pa.float64()
    total_in = pc.fill_null(table["input_tokens"], 0)
    cached = pc.min_element_wise(pc.fill_null(table["cached_input_tokens"], 0), total_in)
    written = pc.min_element_wise(pc.fill_null(table["cache_write_tokens"], 0), pc.subtract(total_in, cached))
    written_1h = pc.min_element_wise(pc.fill_null(table["cache_write_1h_tokens"], 0), written)
    written_5m = pc.subtract(written, written_1h)
    uncached = pc.subtract(pc.subtract(total_in, cached), written)
    out = pc.fill_null(table["output_tokens"], 0)
    r_in, r_read, r_write, r_out = (
        _rate_column(rates, attr, slot, total_in) for attr in ("input", "cache_read", "cache_write", "output")
    )
    r_write_1h = _rate_column(rates, "cache_write_1h", slot, total_in)
    per_request = pc.take(pa.array([None if r is None else r.per_request for r in rates], f64), slot)
    input_cost = pc.add(
        pc.add(
            pc.add(pc.multiply(uncached.cast(f64), r_in), pc.multiply(cached.cast(f64), r_read)),
            pc.multiply(written_5m.cast(f64), r_write),
        ),
        pc.multiply(written_1h.cast(f64), r_write_1h),
    )
    output_cost = pc.multiply(out.cast(f64), r_out)
    total = pc.add(pc.add(input_cost, output_cost), per_request)
    none_f = pa.scalar(None, f64)
    none_s = pa.scalar(None, pa.string())
    source = pc.take(pa.array([None if r is None else r.source for r in rates], pa.string()), slot)
    version = pc.take(pa.array([None if r is None else r.version for r in rates], pa.string()), slot)
    cost = _combine(pc.if_else(priced, total, none_f))
    return {
        "cost_usd": cost,
        "input_cost_usd": _combine(pc.if_else(priced, input_cost, none_f)),
        "output_cost_usd": _combine(pc.if_else(priced, output_cost, none_f)),
        "priced": _combine(priced),
        "price_source": _combine(pc.if_else(priced, source, none_s)),
        "price_version": _combine(pc.if_else(priced, version, none_s)),
        "computed_cost_usd": cost,
        "cost_source": _combine(pc.if_else(priced, pa.scalar("computed"), none_s)),
    }


class _TokenView:
    """The fields `calc_exact` reads, from one row of an Arrow table."""

    def __init__(self, table: pa.Table, i: int, ts_start: float) -> None:
        self.provider = table["provider"][i].as_py()
        self.input_tokens = table["input_tokens"][i].as_py()
        self.output_tokens = table["output_tokens"][i].as_py()
        self.cached_input_tokens = table["cached_input_tokens"][i].as_py()
        self.cache_write_tokens = table["cache_write_tokens"][i].as_py()
        self.cache_write_1h_tokens = table["cache_write_1h_tokens"][i].as_py()
        self.ts_start = ts_start


def _price_conditional(
    table: pa.Table,
    model: pa.Array | pa.ChunkedArray,
    code: pa.Array | pa.ChunkedArray,
    keys: dict[int, Conditional],
    columns: dict[str, pa.Array],
) -> dict[str, pa.Array]:
    """Rows whose price depends on the request time: `calc_price` per row (rare)."""
    rows = pc.indices_nonzero(pc.fill_null(pc.is_in(code, value_set=pa.array(list(keys), pa.int64())), False))
    lists = {name: col.to_pylist() for name, col in columns.items()}
    sub = table.take(rows)
    ts = pc.divide(sub["ts_start"].cast(pa.int64()), 1e6).to_pylist()
    models = pc.take(model, rows).to_pylist()
    codes = pc.take(code, rows).to_pylist()
    for i, row in enumerate(rows.to_pylist()):
        price = calc_exact(_TokenView(sub, i, ts[i]), models[i], keys[codes[i]])
        values = (
            (
                price.cost_usd,
                price.input_cost_usd,
                price.output_cost_usd,
                True,
                price.source,
                price.version,
                price.cost_usd,
                "computed",
            )
            if price is not None
            else (None, None, None, False, None, None, None, None)
        )
        for name, value in zip(PRICE_COLUMNS, values, strict=True):
            lists[name][row] = value
    return {name: pa.array(lists[name], PRICE_COLUMNS[name]) for name in PRICE_COLUMNS}


def _provider_cost(table: pa.Table, columns: dict[str, pa.Array]) -> dict[str, pa.Array]:
    """A provider-reported cost wins: `Pricer.price`'s rule on columns."""
    reported = _combine(table["provider_cost_usd"])
    has = pc.is_valid(reported)
    computed = columns["cost_usd"]
    out = dict(columns)
    out["computed_cost_usd"] = computed
    out["cost_usd"] = _combine(pc.if_else(has, reported, computed))
    out["priced"] = _combine(pc.or_(has, columns["priced"]))
    out["cost_source"] = _combine(
        pc.if_else(
            has,
            pa.scalar("provider"),
            pc.if_else(columns["priced"], pa.scalar("computed"), pa.scalar(None, pa.string())),
        )
    )
    return out
