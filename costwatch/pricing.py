"""Cost from tokens: genai-prices rates cached per (provider, model), user overrides first.

`genai_prices.calc_price` costs ~50-70 µs a call, too slow per event at ingest
rates. We call it once per (provider, model) to resolve the model, keep its
per-token rates (plain or tiered) and price each event with a few float
multiplications (~1-2 µs). Models whose price depends on the request time
(genai-prices ``ConditionalPrice``: start dates, off-peak hours) fall back to
``calc_price`` per event with the event's own timestamp, so they stay exact.

Token meaning follows `costwatch.events`: ``input_tokens`` includes cached
reads and cache writes; ``output_tokens`` includes reasoning. Cache reads are
priced at the cache-read rate, cache writes at the cache-write rate (the
input rate when the model has none, as genai-prices does); reasoning is
priced as output. Tiered (long-context) prices use genai-prices' "cliff"
rule: the tier reached by the request's total input tokens applies to all of
its tokens. A per-request fee (Perplexity) is added to the total. A test
sweeps every model genai-prices ships and checks the fast path against
``calc_price`` to the last digit.

The daemon prices a whole commit at once (`Pricer.price_table`): rates are
resolved once per distinct (provider, model) in the batch and applied with
Arrow compute in the same order of float operations as `_apply`, so every
cost is bit-for-bit what `Pricer.price` returns for the event (a test checks).

Unknown model, a model without any token price (genai-prices would say $0),
or missing usage -> no price (NULL), never a guess. Not modelled: service-tier
and batch price variants (the event does not carry the tier), the 1-hour
cache-write rate (priced at the 5-minute rate), hosted-tool fees (web search).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from importlib.metadata import version as _dist_version
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from costwatch.events import UsageEvent
from costwatch.settings import PriceOverride

__all__ = ["GENAI_PRICES_VERSION", "PRICE_COLUMNS", "Price", "Pricer", "event_model", "event_model_column"]

GENAI_PRICES_VERSION = f"genai-prices {_dist_version('genai-prices')}"
_MTOK = 1_000_000.0

# A rate is USD per token: a float, or ((threshold, rate), ...) tiers above a base rate.
Rate = float | tuple[float, tuple[tuple[int, float], ...]]


@dataclass(frozen=True, slots=True)
class Price:
    """The cost of one event, split the way genai-prices splits it."""

    cost_usd: float
    input_cost_usd: float
    output_cost_usd: float
    source: str  # "genai-prices" | "override"
    version: str


@dataclass(frozen=True, slots=True)
class _Rates:
    input: Rate
    cache_read: Rate
    cache_write: Rate
    output: Rate
    source: str
    version: str
    per_request: float = 0.0  # e.g. Perplexity's request fee; in cost_usd, in neither split


def event_model(event: UsageEvent) -> str | None:
    """The model that served the call (falls back to the response, then the request model)."""
    return event.model or event.response_model or event.request_model


def _nonempty(column: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """Empty strings as null: ``event_model`` skips falsy names, not only None."""
    return pc.if_else(pc.equal(column, ""), pa.scalar(None, pa.string()), column)


def event_model_column(table: pa.Table) -> pa.Array | pa.ChunkedArray:
    """`event_model` for every row of a table with the event columns (null where it is None)."""
    return pc.coalesce(
        _nonempty(table["model"]), _nonempty(table["response_model"]), _nonempty(table["request_model"])
    )


# What `price_table` returns, in `usage_events` column order.
PRICE_COLUMNS: dict[str, pa.DataType] = {
    "cost_usd": pa.float64(),
    "input_cost_usd": pa.float64(),
    "output_cost_usd": pa.float64(),
    "priced": pa.bool_(),
    "price_source": pa.string(),
    "price_version": pa.string(),
}


def _rate(value: Any) -> Rate | None:
    if value is None:
        return None
    if isinstance(value, Decimal | int | float):
        return float(value) / _MTOK
    tiers = tuple((int(t.start), float(t.price) / _MTOK) for t in value.tiers)  # TieredPrices
    return (float(value.base) / _MTOK, tiers)


def _at(rate: Rate, total_input: int) -> float:
    if isinstance(rate, float):
        return rate
    base, tiers = rate
    for start, tier_rate in reversed(tiers):
        if total_input > start:
            return tier_rate
    return base


class Pricer:
    """Prices events; thread-safe (the cache is filled under a lock)."""

    def __init__(self, overrides: list[PriceOverride] | None = None) -> None:
        self._overrides: dict[tuple[str | None, str], _Rates] = {}
        for o in overrides or []:
            inp = o.input_per_mtok / _MTOK
            self._overrides[(o.provider, o.model)] = _Rates(
                input=inp,
                cache_read=(o.cached_input_per_mtok / _MTOK) if o.cached_input_per_mtok is not None else inp,
                cache_write=(o.cache_write_per_mtok / _MTOK) if o.cache_write_per_mtok is not None else inp,
                output=o.output_per_mtok / _MTOK,
                source="override",
                version="override",
            )
        # (provider, model) -> _Rates | "conditional" (price per event) | None (unknown)
        self._cache: dict[tuple[str, str], _Rates | str | None] = {}
        self._lock = threading.Lock()

    def price(self, event: UsageEvent) -> Price | None:
        """The event's cost, or None when it cannot be priced (unknown model, no usage)."""
        model = event_model(event)
        if not model or event.usage_source == "missing":
            return None
        if event.input_tokens is None and event.output_tokens is None:
            return None
        rates = self._rates(event.provider, model)
        if rates is None:
            return None
        if rates == "conditional":
            return _calc_exact(event, model)
        return _apply(rates, event)  # type: ignore[arg-type]

    def _rates(self, provider: str, model: str) -> _Rates | str | None:
        rates = self._overrides.get((provider, model)) or self._overrides.get((None, model))
        if rates is not None:
            return rates
        key = (provider, model)
        cached = self._cache.get(key, _MISSING)
        if cached is _MISSING:
            with self._lock:
                cached = self._cache[key] = _resolve(provider, model)
        return cached  # type: ignore[return-value]

    def price_table(self, table: pa.Table) -> dict[str, pa.Array]:
        """`price` for every row of an Arrow table with the event columns, as `PRICE_COLUMNS` arrays.

        Rates are looked up once per distinct (provider, model); the arithmetic is
        `_apply`'s, vectorised, with the same operand order (so the same floats).
        Rows of time-dependent ("conditional") models go through `price` one by one.
        """
        n = table.num_rows
        model = event_model_column(table)
        eligible = pc.and_kleene(
            pc.is_valid(model),
            pc.and_kleene(
                pc.not_equal(table["usage_source"], "missing"),
                pc.or_kleene(pc.is_valid(table["input_tokens"]), pc.is_valid(table["output_tokens"])),
            ),
        )
        # One integer key per (provider, model): dictionary codes combined, no string building.
        prov = pc.dictionary_encode(_combine(table["provider"]))
        mod = pc.dictionary_encode(_combine(model))
        width = max(len(mod.dictionary), 1)
        code = pc.add(
            pc.multiply(prov.indices.cast(pa.int64()), width), mod.indices.cast(pa.int64())
        )  # null where the model is null
        code = pc.if_else(eligible, code, pa.scalar(None, pa.int64()))
        keys = pc.unique(code.drop_null()).to_pylist()
        providers = prov.dictionary.to_pylist()
        models = mod.dictionary.to_pylist()
        per_key: list[_Rates | None] = []
        conditional: list[int] = []
        for k in keys:
            rates = self._rates(providers[k // width], models[k % width])
            if rates == "conditional":
                conditional.append(k)
                per_key.append(None)
            else:
                per_key.append(rates)  # type: ignore[arg-type]
        slot = pc.index_in(code, value_set=pa.array(keys, pa.int64()))  # row -> index into keys
        known = pa.array([r is not None for r in per_key], pa.bool_())
        priced = (
            pc.fill_null(pc.take(known, slot), False) if keys else pa.nulls(n, pa.bool_()).fill_null(False)
        )
        columns = _apply_table(table, per_key, slot, priced) if keys else _unpriced(n)
        if conditional:
            columns = self._price_conditional(table, model, code, conditional, columns)
        return columns

    def _price_conditional(
        self,
        table: pa.Table,
        model: pa.Array | pa.ChunkedArray,
        code: pa.Array | pa.ChunkedArray,
        keys: list[int],
        columns: dict[str, pa.Array],
    ) -> dict[str, pa.Array]:
        """Rows whose price depends on the request time: `calc_price` per row (rare)."""
        rows = pc.indices_nonzero(pc.fill_null(pc.is_in(code, value_set=pa.array(keys, pa.int64())), False))
        lists = {name: col.to_pylist() for name, col in columns.items()}
        sub = table.take(rows)
        ts = pc.divide(sub["ts_start"].cast(pa.int64()), 1e6).to_pylist()
        models = pc.take(model, rows).to_pylist()
        for i, row in enumerate(rows.to_pylist()):
            price = _calc_exact(_TokenView(sub, i, ts[i]), models[i])
            values = (
                (
                    price.cost_usd,
                    price.input_cost_usd,
                    price.output_cost_usd,
                    True,
                    price.source,
                    price.version,
                )
                if price is not None
                else (None, None, None, False, None, None)
            )
            for name, value in zip(PRICE_COLUMNS, values, strict=True):
                lists[name][row] = value
        return {name: pa.array(lists[name], PRICE_COLUMNS[name]) for name in PRICE_COLUMNS}

    def is_known(self, provider: str, model: str) -> bool:
        """Whether `price` would find rates for this model (used by tests and the status page)."""
        probe = UsageEvent(
            id="probe", call_id="probe", ts_start=0, ts_end=0, provider=provider, operation="chat",
            model=model, input_tokens=1, output_tokens=1, usage_source="provider",
        )  # fmt: skip
        return self.price(probe) is not None


_MISSING = object()


def _combine(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


class _TokenView:
    """The fields `_calc_exact` reads, from one row of an Arrow table."""

    def __init__(self, table: pa.Table, i: int, ts_start: float) -> None:
        self.provider = table["provider"][i].as_py()
        self.input_tokens = table["input_tokens"][i].as_py()
        self.output_tokens = table["output_tokens"][i].as_py()
        self.cached_input_tokens = table["cached_input_tokens"][i].as_py()
        self.cache_write_tokens = table["cache_write_tokens"][i].as_py()
        self.ts_start = ts_start


def _unpriced(n: int) -> dict[str, pa.Array]:
    out = {name: pa.nulls(n, t) for name, t in PRICE_COLUMNS.items()}
    out["priced"] = pa.array([False] * n, pa.bool_())
    return out


def _rate_column(rates: list[_Rates | None], attr: str, slot: Any, total_in: Any) -> Any:
    """Per-row USD/token for one rate kind, tiers resolved by the row's total input ("cliff")."""
    base = [None if r is None else _base(getattr(r, attr)) for r in rates]
    column = pc.take(pa.array(base, pa.float64()), slot)
    for k, r in enumerate(rates):
        rate = None if r is None else getattr(r, attr)
        if isinstance(rate, tuple):
            in_key = pc.equal(slot, k)
            for start, tier_rate in rate[1]:  # later tiers win, as `_at` searches from the top
                column = pc.if_else(pc.and_(in_key, pc.greater(total_in, start)), tier_rate, column)
    return column


def _base(rate: Rate) -> float:
    return rate if isinstance(rate, float) else rate[0]


def _apply_table(table: pa.Table, rates: list[_Rates | None], slot: Any, priced: Any) -> dict[str, pa.Array]:
    """`_apply` on columns: the same operations in the same order, so the same floats."""
    f64 = pa.float64()
    total_in = pc.fill_null(table["input_tokens"], 0)
    cached = pc.min_element_wise(pc.fill_null(table["cached_input_tokens"], 0), total_in)
    written = pc.min_element_wise(pc.fill_null(table["cache_write_tokens"], 0), pc.subtract(total_in, cached))
    uncached = pc.subtract(pc.subtract(total_in, cached), written)
    out = pc.fill_null(table["output_tokens"], 0)
    r_in, r_read, r_write, r_out = (
        _rate_column(rates, attr, slot, total_in) for attr in ("input", "cache_read", "cache_write", "output")
    )
    per_request = pc.take(pa.array([None if r is None else r.per_request for r in rates], f64), slot)
    input_cost = pc.add(
        pc.add(pc.multiply(uncached.cast(f64), r_in), pc.multiply(cached.cast(f64), r_read)),
        pc.multiply(written.cast(f64), r_write),
    )
    output_cost = pc.multiply(out.cast(f64), r_out)
    total = pc.add(pc.add(input_cost, output_cost), per_request)
    none_f = pa.scalar(None, f64)
    none_s = pa.scalar(None, pa.string())
    source = pc.take(pa.array([None if r is None else r.source for r in rates], pa.string()), slot)
    version = pc.take(pa.array([None if r is None else r.version for r in rates], pa.string()), slot)
    return {
        "cost_usd": _combine(pc.if_else(priced, total, none_f)),
        "input_cost_usd": _combine(pc.if_else(priced, input_cost, none_f)),
        "output_cost_usd": _combine(pc.if_else(priced, output_cost, none_f)),
        "priced": _combine(priced),
        "price_source": _combine(pc.if_else(priced, source, none_s)),
        "price_version": _combine(pc.if_else(priced, version, none_s)),
    }


def _apply(rates: _Rates, event: UsageEvent) -> Price:
    total_in = event.input_tokens or 0
    cached = min(event.cached_input_tokens or 0, total_in)
    written = min(event.cache_write_tokens or 0, total_in - cached)
    uncached = total_in - cached - written
    out = event.output_tokens or 0
    input_cost = (
        uncached * _at(rates.input, total_in)
        + cached * _at(rates.cache_read, total_in)
        + written * _at(rates.cache_write, total_in)
    )
    output_cost = out * _at(rates.output, total_in)
    total = input_cost + output_cost + rates.per_request
    return Price(total, input_cost, output_cost, rates.source, rates.version)


def _resolve(provider: str, model: str) -> _Rates | str | None:
    """Ask genai-prices once which model this is and read its rates."""
    from genai_prices import Usage, calc_price
    from genai_prices.types import ModelPrice

    try:
        calc = calc_price(Usage(input_tokens=1, output_tokens=1), model, provider_id=provider)
    except LookupError:
        return None
    if not isinstance(calc.model.prices, ModelPrice):
        return "conditional"
    mp = calc.model_price
    inp = _rate(mp.input_mtok)
    out = _rate(mp.output_mtok)
    if inp is None and out is None:
        return None  # priced per request, image or second: not a token model we can price
    # One side unpriced (embeddings have no output price): genai-prices charges it nothing.
    inp = 0.0 if inp is None else inp
    out = 0.0 if out is None else out
    cache_read = _rate(mp.cache_read_mtok)
    cache_write = _rate(mp.cache_write_mtok)
    return _Rates(
        input=inp,
        cache_read=inp if cache_read is None else cache_read,
        cache_write=inp if cache_write is None else cache_write,
        output=out,
        source="genai-prices",
        version=GENAI_PRICES_VERSION,
        per_request=float(mp.requests_kcount) / 1000 if isinstance(mp.requests_kcount, Decimal) else 0.0,
    )


def _calc_exact(event: UsageEvent | _TokenView, model: str) -> Price | None:
    from genai_prices import Usage, calc_price

    usage = Usage(
        input_tokens=event.input_tokens or 0,
        output_tokens=event.output_tokens or 0,
        cache_read_tokens=event.cached_input_tokens or 0,
        cache_write_tokens=event.cache_write_tokens or 0,
    )
    try:
        calc = calc_price(
            usage,
            model,
            provider_id=event.provider,
            genai_request_timestamp=datetime.fromtimestamp(event.ts_start, tz=timezone.utc),
        )
    except (LookupError, ValueError):
        return None
    return Price(
        float(calc.total_price),
        float(calc.input_price),
        float(calc.output_price),
        "genai-prices",
        GENAI_PRICES_VERSION,
    )
