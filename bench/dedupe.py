"""The writer's duplicate lookup (`batch.existing_ids`) on a file of a few million rows.

Dedupe is by event id whatever the resend's ``ts_start``; with no primary key
the lookup prunes by the ``id`` column's own zone maps (UUIDv7 ids carry their
creation time). Compared, per 10k-id batch (median of ``reps``):

- ``new``: a live batch of fresh ids (the common case: nothing found);
- ``resend``: a batch of 10k stored events resent with other ``ts_start``s;
- ``mixed``: 9k fresh + 1k replayed from a day earlier (two id clusters);
- ``by_ts_start``: the lookup it replaced, limited to the batch's ts_start range
  (misses a resend whose ts_start moved);
- the same ``new`` batch against a file of random (UUIDv4) ids: the fallback.

Run: ``python -m bench.dedupe [--rows 4000000] [--reps 7]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

from bench.common import tempdir
from bench.query import generate

# A UUIDv7 string from the row's epoch milliseconds `ms` and row number `i` (what new_event_id makes).
UUID7_SQL = (
    "printf('%08x-%04x-7%03x-%04x-%012x', ms >> 16, ms & 65535, hash(i) % 4096,"
    " 32768 + hash(i * 3) % 16384, hash(i * 5) % 281474976710656)"
)


def _time(fn: Any, reps: int) -> float:
    samples = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000)
    return statistics.median(samples)


def _events(ids: list[str], ts: float) -> list[Any]:
    from costwatch.events import UsageEvent

    return [
        UsageEvent(id=i, call_id=i, ts_start=ts, ts_end=ts, provider="openai", operation="chat") for i in ids
    ]


def _by_ts_start(con: Any, events: list[Any]) -> None:
    """The lookup the writer used before: only inside the batch's ts_start range."""
    import pyarrow as pa

    lo, hi = min(e.ts_start for e in events), max(e.ts_start for e in events)
    con.register("_cw_ids", pa.table({"id": [e.id for e in events]}))
    con.execute(
        "SELECT u.id FROM usage_events u WHERE u.ts_start BETWEEN to_timestamp(?) AND to_timestamp(?)"
        " AND u.id IN (SELECT id FROM _cw_ids)",
        [lo - 1e-6, hi + 1e-6],
    ).fetchall()
    con.unregister("_cw_ids")


def _measure(con: Any, rows: int, reps: int, uuid7: bool) -> dict[str, float]:
    import pyarrow as pa
    from costwatch.daemon.batch import distinct_ids, existing_ids
    from costwatch.events import new_event_id

    def _existing_ids(con: Any, events: list[Any]) -> set[str]:  # what the writer runs per commit
        return existing_ids(con, distinct_ids(pa.array([e.id for e in events], pa.string())))

    now = time.time()
    fresh = _events([new_event_id(now + i / 1e4) for i in range(10_000)], now)
    res = {"new_ms": _time(lambda: _existing_ids(con, fresh), reps)}
    if uuid7:
        stored = [
            r[0]
            for r in con.execute("SELECT id FROM usage_events LIMIT 10000 OFFSET ?", [rows // 2]).fetchall()
        ]
        resend = _events(stored, now)  # the same ids, ts_start moved to now
        assert len(_existing_ids(con, resend)) == 10_000
        res["resend_ms"] = _time(lambda: _existing_ids(con, resend), reps)
        mixed = fresh[:9000] + _events(stored[:1000], now)
        assert len(_existing_ids(con, mixed)) == 1000
        res["mixed_ms"] = _time(lambda: _existing_ids(con, mixed), reps)
        res["by_ts_start_new_ms"] = _time(lambda: _by_ts_start(con, fresh), reps)
    return res


def run(rows: int, reps: int, log: Any = print) -> dict[str, Any]:
    import duckdb

    out: dict[str, Any] = {"rows": rows}
    with tempdir("dedupe") as tmp:
        for kind, ids_sql in (("uuid7", UUID7_SQL), ("uuid4", "uuid()::VARCHAR")):
            path = Path(tmp) / f"{kind}.duckdb"
            took = generate(path, rows, days=60, ids=ids_sql)
            con = duckdb.connect(str(path), config={"threads": 2, "memory_limit": "1GB"})
            res = {"file_mb": path.stat().st_size / 1e6, "generate_s": took}
            res.update(_measure(con, rows, reps, kind == "uuid7"))
            con.close()
            out[kind] = res
            log(f"{kind}: {rows:,} rows: " + ", ".join(f"{k} {v:.1f}" for k, v in res.items()))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=4_000_000)
    parser.add_argument("--reps", type=int, default=7)
    args = parser.parse_args()
    run(args.rows, args.reps)


if __name__ == "__main__":
    main()
