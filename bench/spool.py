"""6. Spool replay after a daemon outage: events/s and time to drain 1M spooled events.

Per round: a process writes ``events`` events into the spool with
``costwatch.instrumentation.spool.Spool`` (as the emitter does while the daemon
is down: 2k-event batches) and exits; a daemon starts; a fresh process starts
an `Emitter` with default settings (except ``spool_max_bytes``, raised so 1M
events fit whatever the compression) and replays. Drain time is from the
emitter's start to the spool directory being empty; rows are counted after.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from bench.common import mmm, run_json, start_daemon, tempdir

MAX_BYTES = 2 * 1024 * 1024 * 1024


def run(quick: bool, log: Any = print) -> dict[str, Any]:
    events = 100_000 if quick else 1_000_000
    rounds = 2
    samples = []
    for r in range(rounds):
        with tempdir("spool") as tmp:
            state = tmp / "state"
            spool_dir = tmp / "app" / "spool"
            spec = {"spool_dir": str(spool_dir), "max_bytes": MAX_BYTES, "events": events,
                    "t0": time.time() - 86_400, "seed": 1000 + r}  # fmt: skip
            w = run_json([sys.executable, "-m", "bench.spool_worker", "write", json.dumps(spec)], timeout=900)
            daemon = start_daemon(state)
            try:
                spec.update(url=daemon.url, token=daemon.token)
                rep = run_json(
                    [sys.executable, "-m", "bench.spool_worker", "replay", json.dumps(spec)], timeout=900
                )
                rows = daemon.request("POST", "/v1/sql", {"sql": "SELECT count(*) FROM usage_events"})[
                    "rows"
                ][0][0]
            finally:
                daemon.stop()
            drain = rep["t1"] - rep["t0"]
            sample = {"round": r, "events": events, "spooled": w["written"], "spool_dropped": w["dropped"],
                      "spool_bytes": w["bytes"], "spool_write_s": w["write_s"], "drain_s": drain,
                      "events_per_s": rows / drain, "rows": rows, "lost": events - rows, "left_segments": rep["left"],
                      "emitter_cpu_ms_per_1k": rep["emitter_cpu_us"] / max(1, rep["replayed"]) }  # fmt: skip
            samples.append(sample)
            log(
                f"spool r{r}: {events:,} events ({w['bytes'] / 1e6:.0f} MB) drained in {drain:.1f} s"
                f" = {sample['events_per_s']:,.0f} events/s; rows {rows:,}"
            )
    return {
        "quick": quick, "events": events, "rounds": rounds, "samples": samples,
        "summary": {"drain_s": mmm([s["drain_s"] for s in samples]), "events_per_s": mmm([s["events_per_s"] for s in samples]),
                    "lost": sum(s["lost"] for s in samples), "spool_mb_per_million": mmm([s["spool_bytes"] / s["events"] for s in samples]),
                    "emitter_cpu_ms_per_1k": mmm([s["emitter_cpu_ms_per_1k"] for s in samples])},
    }  # fmt: skip
