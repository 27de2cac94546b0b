"""Where the daemon's CPU goes per ingested event, stage by stage, in one process (no HTTP).

``python -m bench.ingest_stages [EVENTS] [EVENTS_PER_COMMIT]``: `bench.eventgen` events encoded
as 2k-event bodies (what emitters POST), then for each commit of EVENTS_PER_COMMIT events the
ingest path's own functions: decode (`app.decode_batch`), the priced Arrow table of each body
(`batch.priced_table`, built in the request's thread in the daemon), the writer's dedupe
(`store._dedupe`: concatenation, distinct ids, stored-id lookup), the INSERT, the COMMIT, the
metrics (`DaemonMetrics.observe_commit`) and the checkpoint every `store.CHECKPOINT_ROWS` rows.
Process CPU time (`time.process_time`: DuckDB's threads included) per event for each stage.

A diagnostic, not a section of docs/benchmarks.md: HTTP, the event loop and two threads
sharing the GIL are missing here (`python -m bench ingest` measures the whole daemon).
"""

from __future__ import annotations

import gc
import sys
import tempfile
import time
from pathlib import Path


def main(n: int = 240_000, per_commit: int = 8_000, body: int = 2_000) -> dict[str, float]:
    import pyarrow as pa
    from costwatch.daemon import store
    from costwatch.daemon.app import decode_batch
    from costwatch.daemon.batch import INSERT_BATCH, priced_table, with_ingested_at
    from costwatch.daemon.database import open_database
    from costwatch.daemon.metrics import DaemonMetrics
    from costwatch.events import encode_many
    from costwatch.pricing import Pricer

    from bench.eventgen import make_events

    gc.freeze()
    gc.set_threshold(50_000, 20, 100)  # as `costwatch daemon` does (server.tune_gc)
    events = make_events(n, time.time() - 86_400, 1, 0.0005)
    bodies = [encode_many(events[i : i + body]) for i in range(0, n, body)]
    del events
    stages = dict.fromkeys(
        ("decode", "build+price", "dedupe", "insert", "commit", "metrics", "checkpoint"), 0.0
    )
    clock = time.process_time
    with tempfile.TemporaryDirectory(prefix="cwbench-stages-") as tmp:
        con = open_database(Path(tmp) / "s.duckdb")
        cur = con.cursor()
        pricer, metrics = Pricer(), DaemonMetrics()
        uncheckpointed = 0
        per = per_commit // body
        for start in range(0, len(bodies), per):
            tables = []
            for raw in bodies[start : start + per]:
                t = clock()
                decoded, _ = decode_batch(raw, False)
                stages["decode"] += clock() - t
                t = clock()
                tables.append(priced_table(decoded, pricer))
                stages["build+price"] += clock() - t
            t = clock()
            fresh, _ = store._dedupe(cur, pa.concat_tables(tables), [x.num_rows for x in tables])
            batch = with_ingested_at(fresh, time.time())
            stages["dedupe"] += clock() - t
            t = clock()
            cur.execute("BEGIN")
            cur.register("_cw_batch", batch)
            cur.execute(INSERT_BATCH)
            cur.unregister("_cw_batch")
            stages["insert"] += clock() - t
            t = clock()
            cur.execute("COMMIT")
            stages["commit"] += clock() - t
            t = clock()
            metrics.observe_commit(fresh, 0.0)
            stages["metrics"] += clock() - t
            uncheckpointed += fresh.num_rows
            if uncheckpointed >= store.CHECKPOINT_ROWS:
                t = clock()
                cur.execute("CHECKPOINT")
                stages["checkpoint"] += clock() - t
                uncheckpointed = 0
        con.close()
    return {k: v / n * 1e6 for k, v in stages.items()}


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:3]]
    result = main(*args)
    for name, us in result.items():
        print(f"{name:12} {us:6.2f} µs/event")
    print(f"{'total':12} {sum(result.values()):6.2f} µs/event")
