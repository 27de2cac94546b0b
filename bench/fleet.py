"""Fleet mode on PostgreSQL: replication throughput and fleet kill-switch propagation.

- Replication: a daemon without fleet mode ingests N events (the backlog of a host that turns
  fleet mode on, or that was cut off from Postgres); it is restarted with ``COSTWATCH_FLEET_DSN``
  and the time until its lag is 0 gives events/s into Postgres (COPY + ON CONFLICT, one
  throw-away local Postgres 15 with fsync off — commit durability is not what is measured).
  Also: the same backlog again after the watermark is reset (every row a conflict).
- Fleet kill: two daemons (processes) on one ledger, an instrumented app calling the fake
  provider every 5 ms on host B; `costwatch kill --fleet` runs against host A; the time from
  the CLI's start to the app's first `KillSwitchEngaged`, then `resume --fleet`; repeated.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from tests.fakes.provider import FakeProvider
from tests.support.fleet import Watcher, fleet_daemon, kill_to_blocked_trial
from tests.support.postgres import PostgresServer
from tests.support.processes import DaemonProcess

TARGET_P99_S = 1.0


def _p(values: list[float], q: float) -> float:
    vals = sorted(values)
    return vals[min(len(vals) - 1, round(q * (len(vals) - 1)))]


def _summary(values: list[float]) -> dict[str, float]:
    return {
        "min": min(values),
        "median": statistics.median(values),
        "p99": _p(values, 0.99),
        "max": max(values),
        "n": len(values),
    }


def _status(d: DaemonProcess) -> dict[str, Any]:
    with d.client() as c:
        return c.get("/v1/status").json()


def _ingest(d: DaemonProcess, total: int, batch: int = 10_000) -> None:
    from costwatch.events import encode_many
    from tests.daemon.conftest import make_event

    with httpx.Client(base_url=d.url, headers={"Authorization": f"Bearer {d.token}"}, timeout=120) as c:
        for _ in range(0, total, batch):
            events = [make_event(input_tokens=100, output_tokens=10, user=f"u{i % 50}") for i in range(batch)]
            c.post("/v1/events", content=encode_many(events)).raise_for_status()


def _drain(d: DaemonProcess, total: int, timeout: float = 600) -> float:
    """Seconds from the daemon's start until the ledger holds its whole backlog (lag 0)."""
    started = time.perf_counter()
    d.start()
    while True:
        rep = _status(d)["fleet"]["replication"]
        if rep["connected"] and rep["lag_events"] == 0 and rep["watermark"] > 0:
            return time.perf_counter() - started
        if time.perf_counter() - started > timeout:
            raise RuntimeError(f"replication did not drain: {rep}")
        time.sleep(0.05)


def replication(pg: PostgresServer, work: Path, total: int, log: Any) -> dict[str, Any]:
    plain = DaemonProcess(work / "rep", "--rules", str(work / "rules"))
    (work / "rules").mkdir(exist_ok=True)
    plain.start()
    try:
        t0 = time.perf_counter()
        _ingest(plain, total)
        ingest_s = time.perf_counter() - t0
    finally:
        plain.stop()
    log(f"  ingested {total} events locally in {ingest_s:.1f} s")
    fleet = fleet_daemon(work / "rep", pg.dsn, "bench-rep")
    fleet.db = plain.db
    first = _drain(fleet, total)
    fleet.stop()
    log(f"  shipped {total} events in {first:.1f} s ({total / first:,.0f}/s)")
    # Every row again (watermark reset): all conflicts, none inserted.
    import duckdb

    con = duckdb.connect(str(plain.db))
    con.execute("UPDATE fleet_watermarks SET seq = 0")
    con.close()
    again = _drain(fleet, total)
    fleet.stop()
    import psycopg

    with psycopg.connect(pg.dsn) as conn:
        rows = conn.execute("SELECT count(*), count(DISTINCT id) FROM costwatch.usage_events").fetchone()
    log(f"  re-sent {total} events in {again:.1f} s ({total / again:,.0f}/s); ledger rows {rows}")
    return {
        "events": total,
        "batch_events": 5000,
        "first_s": first,
        "first_events_per_s": total / first,
        "resend_s": again,
        "resend_events_per_s": total / again,
        "ledger_rows": rows[0],  # type: ignore[index]
        "ledger_distinct_ids": rows[1],  # type: ignore[index]
    }


def kill_propagation(pg: PostgresServer, work: Path, trials: int, log: Any) -> dict[str, Any]:
    a = fleet_daemon(work / "a", pg.dsn, "bench-a").start()
    b = fleet_daemon(work / "b", pg.dsn, "bench-b").start()
    latencies: list[float] = []
    try:
        with FakeProvider() as fake:
            watcher = Watcher(b, fake.openai_url)
            try:
                watcher.wait_for("OPEN", 30)
                for i in range(trials):
                    latencies.append(kill_to_blocked_trial(a, watcher))
                    if (i + 1) % 10 == 0:
                        log(f"  {i + 1} trials, median {statistics.median(latencies) * 1000:.0f} ms")
            finally:
                watcher.close()
    finally:
        b.stop()
        a.stop()
    return {"trials": trials, "seconds": latencies, "summary": _summary(latencies)}


def run(quick: bool, log: Any = print) -> dict[str, Any]:
    total = 20_000 if quick else 200_000
    trials = 10 if quick else 50
    pg = PostgresServer().start()
    try:
        with tempfile.TemporaryDirectory(prefix="costwatch-bench-fleet-") as tmp:
            work = Path(tmp)
            log("replication")
            rep = replication(pg, work, total, log)
            log("fleet kill propagation")
            kill = kill_propagation(pg, work, trials, log)
    finally:
        pg.cleanup()
    return {"quick": quick, "replication": rep, "kill": kill, "target_p99_s": TARGET_P99_S}
