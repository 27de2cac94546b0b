"""The ingest path's columnar side: events to a priced Arrow table, and the duplicate lookup.

A request's events become one Arrow table in the request's own thread (`priced_table`:
``astuple`` + ``zip(*rows)`` transposes in C, one ``pa.array`` per column, prices computed per
(provider, model, price context) group by `Pricer.price_table`), so the writer thread only
concatenates tables, dedupes them by id, inserts and commits. No per-event Python work is
left on the writer but the id set of the dedupe.
"""

from __future__ import annotations

import importlib.util
import itertools
import sys
import time

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
from msgspec.structs import astuple

from costwatch.daemon import schema
from costwatch.events import UsageEvent
from costwatch.pricing import PRICE_COLUMNS, Pricer

__all__ = [
    "ALL_COLUMNS",
    "EVENT_COLUMNS",
    "INSERT_BATCH",
    "batch_table",
    "distinct_ids",
    "events_table",
    "existing_ids",
    "id_ranges",
    "priced_table",
    "range_bounds",
    "with_ingested_at",
]


def _absent_imports_fail_fast(names: tuple[str, ...] = ("dateutil",)) -> None:
    """Mark optional modules that are not installed as absent, so importing them fails at once.

    pyarrow tries ``import dateutil.relativedelta`` on *every* conversion that infers a type from
    Python objects (a Python scalar given to a compute function, ``pa.array`` without a type)
    and does not remember a failure: each call walked ``sys.path`` again, ~35 µs against ~7 µs
    (pricing and metrics make a few dozen such calls a batch). A ``None`` in ``sys.modules``
    makes the same import raise the same ``ImportError`` without the search. Only modules that
    cannot be found are marked, so nothing that could be imported changes. (Not pandas:
    pyarrow's pandas shim reads ``sys.modules`` itself.)
    """
    for name in names:
        if name not in sys.modules and importlib.util.find_spec(name) is None:
            sys.modules[name] = None  # type: ignore[assignment]


_absent_imports_fail_fast()

_ARROW_TYPES: dict[str, pa.DataType] = {
    "VARCHAR": pa.string(),
    "BIGINT": pa.int64(),
    "DOUBLE": pa.float64(),
    "BOOLEAN": pa.bool_(),
    "TIMESTAMPTZ": pa.timestamp("us", tz="UTC"),
    "MAP(VARCHAR, VARCHAR)": pa.map_(pa.string(), pa.string()),
}
EVENT_COLUMNS: dict[str, str] = schema.event_columns()
ALL_COLUMNS: list[str] = list(schema.stored_columns())
# What the writer's Arrow batch holds (inserted by name); `day` is computed by the INSERT itself,
# `seq` comes from its column default (a sequence: commit order, read by fleet replication).
_BATCH_COLUMNS: list[str] = [*EVENT_COLUMNS, *PRICE_COLUMNS, "ingested_at"]
assert sorted([*_BATCH_COLUMNS, "day", "seq"]) == sorted(ALL_COLUMNS)
INSERT_BATCH = (
    f"INSERT INTO usage_events ({', '.join(_BATCH_COLUMNS)}, day)"
    " SELECT *, CAST(ts_start AS DATE) FROM _cw_batch"
)
_TIMESTAMP = _ARROW_TYPES["TIMESTAMPTZ"]
_MICROS = pa.scalar(1_000_000.0, pa.float64())  # prebuilt: a Python literal is converted on every call


def _timestamps(values: tuple[float, ...] | list[float]) -> pa.Array:
    seconds = pa.array(values, pa.float64())
    micros = pc.round(pc.multiply(seconds, _MICROS)).cast(pa.int64())
    return micros.cast(_TIMESTAMP)


def events_table(events: list[UsageEvent]) -> pa.Table:
    """The event columns as an Arrow table, in `usage_events` column order.

    ``astuple`` + ``zip(*rows)`` transposes in C: ~3x faster than a getattr per cell.
    """
    columns = list(zip(*(astuple(e) for e in events), strict=True)) if events else [() for _ in EVENT_COLUMNS]
    arrays: list[pa.Array] = []
    for sql_type, values in zip(EVENT_COLUMNS.values(), columns, strict=True):
        if sql_type == "TIMESTAMPTZ":
            arrays.append(_timestamps(values))
        else:  # dicts convert to MAP directly
            arrays.append(pa.array(values, _ARROW_TYPES[sql_type]))
    return pa.Table.from_arrays(arrays, names=list(EVENT_COLUMNS))


def priced_table(events: list[UsageEvent], pricer: Pricer) -> pa.Table:
    """The event columns and their prices (`PRICE_COLUMNS`): a request's part of a commit."""
    table = events_table(events)
    prices = pricer.price_table(table)
    return pa.Table.from_arrays([*table.columns, *prices.values()], names=[*table.column_names, *prices])


def with_ingested_at(table: pa.Table, ingested_at: float) -> pa.Table:
    """``table`` with its ``ingested_at`` column: the batch `INSERT_BATCH` reads."""
    micros = round(ingested_at * 1_000_000)
    column = pa.array([micros] * table.num_rows, pa.int64()).cast(_TIMESTAMP)
    return table.append_column("ingested_at", column)


def batch_table(events: list[UsageEvent], pricer: Pricer, ingested_at: float | None = None) -> pa.Table:
    """What the writer inserts: the event columns, their prices and ``ingested_at``."""
    return with_ingested_at(priced_table(events, pricer), time.time() if ingested_at is None else ingested_at)


def _unregister(cur: duckdb.DuckDBPyConnection, name: str) -> None:
    """Drop a registered Arrow view without masking the error that aborted the transaction."""
    try:
        cur.unregister(name)
    except duckdb.Error:
        pass


def distinct_ids(ids: pa.Array | pa.ChunkedArray) -> pa.Array:
    """The distinct ids, sorted (in Arrow: no Python string per id)."""
    unique = pc.unique(ids)
    return pc.take(unique, pc.sort_indices(unique))


def existing_ids(cur: duckdb.DuckDBPyConnection, ids: pa.Array) -> set[str]:
    """Which of ``ids`` (sorted, distinct: `distinct_ids`) are already stored, whatever their ``ts_start``.

    There is no primary key (docs/architecture.md), so the lookup must prune by
    itself: it filters on the ``id`` column's own range. UUIDv7 ids start with
    their creation time and the writer stores them roughly in that order, so the
    zone maps of ``id`` skip every row group outside the batch's ids; ids are
    grouped into clusters of nearby creation times (a replayed spool next to live
    traffic is two small ranges, not one wide one). Ids of any other form are
    looked up in one range from their minimum to their maximum: correct, only
    less pruned (random ids scan the whole ``id`` column).
    """
    if not len(ids):
        return set()
    ranges = id_ranges(range_bounds(ids))
    selects = " UNION ALL ".join(
        "SELECT u.id FROM usage_events u WHERE u.id BETWEEN ? AND ? AND u.id IN (SELECT id FROM _cw_ids)"
        for _ in ranges
    )
    cur.register("_cw_ids", pa.table({"id": ids}))
    try:
        rows = cur.execute(selects, [bound for r in ranges for bound in r]).fetchall()
    finally:
        _unregister(cur, "_cw_ids")
    return {row[0] for row in rows}


_DASH = pa.scalar("-", pa.string())
_SEVEN = pa.scalar("7", pa.string())
_UUID_LENGTH = pa.scalar(36, pa.int32())
_TRUE_1 = pa.array([True], pa.bool_())


def range_bounds(ids: pa.Array) -> list[str]:
    """The ids of ``ids`` (sorted, distinct) that can bound a range of `id_ranges`, in order.

    `id_ranges` cuts only where the 8-digit time prefix changes and keeps ids of another form
    apart, so its bounds are the first and last ids of runs that share both the prefix and the
    form: ``id_ranges(range_bounds(ids)) == id_ranges(ids.to_pylist())``, with a few ids a second
    going through Python instead of every id of the batch.
    """
    n = len(ids)
    if n <= 2:
        return ids.to_pylist()
    v7 = pc.and_(
        pc.equal(pc.utf8_length(ids), _UUID_LENGTH),
        pc.and_(
            pc.equal(pc.utf8_slice_codeunits(ids, 14, 15), _SEVEN),
            pc.equal(pc.utf8_slice_codeunits(ids, 8, 9), _DASH),
        ),
    )
    run = pc.binary_join_element_wise(
        pc.utf8_slice_codeunits(ids, 0, 8), pc.if_else(v7, _SEVEN, _DASH), _DASH
    )
    changed = pc.not_equal(run.slice(0, n - 1), run.slice(1))  # between i and i + 1
    first = pa.concat_arrays([_TRUE_1, changed])  # the first id of a run ...
    last = pa.concat_arrays([changed, _TRUE_1])  # ... or the last
    return ids.filter(pc.or_(first, last)).to_pylist()


_CLUSTER_GAP = 10  # in units of 2**16 ms (~65 s, the first 8 hex digits): ~11 min apart → new range
_MAX_RANGES = 8


def id_ranges(ids: list[str]) -> list[tuple[str, str]]:
    """(low, high) id ranges covering ``ids`` (sorted): clusters of UUIDv7 times, one range for the rest.

    Cheap on 10k ids (~1 µs each): a UUIDv7's creation time is read from its first 8 hex
    digits, and only where they change.
    """
    v7: list[str] = []
    other: list[str] = []
    gaps: list[tuple[int, int]] = []  # (gap, index in v7 of the id that starts a new range)
    prefix, prev = "", -1
    for i in ids:
        if len(i) != 36 or i[14] != "7" or i[8] != "-":
            other.append(i)
            continue
        if i[:8] != prefix:
            try:
                t = int(i[:8], 16)
            except ValueError:
                other.append(i)
                continue
            if prev >= 0 and t - prev > _CLUSTER_GAP:
                gaps.append((t - prev, len(v7)))
            prefix, prev = i[:8], t
        v7.append(i)
    ranges: list[tuple[str, str]] = []
    if v7:
        cuts = sorted(n for _, n in sorted(gaps, reverse=True)[: _MAX_RANGES - 1])
        ranges += [(v7[a], v7[b - 1]) for a, b in itertools.pairwise([0, *cuts, len(v7)])]
    if other:
        ranges.append((other[0], other[-1]))
    return ranges
