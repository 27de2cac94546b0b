"""Nothing lost, nothing doubled: several app processes emit events while the daemon is SIGKILLed
and restarted over and over; afterwards the store holds every generated id exactly once.

The apps use the real `Emitter` (queue, HTTP delivery, spool, replay) against a real
`costwatch daemon` process on a DuckDB file. Ids are written by each app to its own file *before*
they are submitted, so "generated" is known independently of what was delivered.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from pathlib import Path

import duckdb
import pytest

from costwatch.events import decode
from tests.reliability.conftest import last_json, reap, spawn
from tests.support.processes import DaemonProcess

pytestmark = pytest.mark.slow

APPS = 3
KILLS = 22

APP = """
import json, os, sys, time
from costwatch.events import UsageEvent, new_event_id
from costwatch.instrumentation.emitter import Emitter
from costwatch.settings import ClientSettings

url, state, ids_path, app, stop_path = sys.argv[1:6]


class Item:
    __slots__ = ("event",)

    def __init__(self, event):
        self.event = event

    def to_event(self):
        return self.event


settings = ClientSettings(url=url, app=app, state_dir=state, flush_interval_s=0.05,
                          batch_max_events=150, killswitch_poll_s=0.3, exit_flush_timeout_s=5)
emitter = Emitter(settings)
emitter.replay_scan_s = 0.5  # look for orphaned segments often: the test is short
emitter.start()
n = 0
with open(ids_path, "w") as ids:
    while not os.path.exists(stop_path):  # the test creates it after the last restart
        for _ in range(6):
            now = time.time()
            event = UsageEvent(id=new_event_id(now), call_id=f"{app}-{n}", ts_start=now, ts_end=now + 0.01,
                               provider="openai", operation="chat", app=app, model="gpt-4o-mini",
                               input_tokens=10, output_tokens=2, usage_source="provider", pid=os.getpid())
            ids.write(event.id + "\\n")
            ids.flush()  # known as generated before the emitter sees it
            emitter.submit(Item(event))
            n += 1
        time.sleep(0.02)
# Drain: keep the process alive until the queue and our spool are empty (the daemon is up by now).
deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    emitter.flush(2)
    stats = emitter.stats()
    spool = emitter._spool
    ours = [n for n in os.listdir(spool.directory) if spool.instance in n and not n.endswith(".lock")]
    if stats["queued"] == 0 and not ours:  # not even a segment claimed for replay right now
        break
    time.sleep(0.2)
stats = emitter.stats()
emitter.close(5)
print(json.dumps({"generated": n, **stats}))
"""


def _kill_loop(
    daemon: DaemonProcess, kills: int, stop: threading.Event, log: list[str], stop_file: Path
) -> None:
    rng = random.Random(8)
    for i in range(kills):
        if stop.is_set():
            break
        time.sleep(rng.uniform(0.1, 0.5))  # up for a while, mid-traffic
        daemon.stop(signal.SIGKILL)
        log.append(f"kill {i + 1}")
        time.sleep(rng.uniform(0.0, 0.3))  # down for a while: the emitters spool
        daemon.start()
    time.sleep(0.5)
    stop_file.touch()


def _store_ids(db: Path) -> list[str]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return [row[0] for row in con.execute("SELECT id FROM usage_events").fetchall()]
    finally:
        con.close()


def _spooled_ids(spool: Path) -> set[str]:
    ids: set[str] = set()
    if not spool.is_dir():
        return ids
    for path in spool.iterdir():
        if path.suffix == ".lock":
            continue
        for line in path.read_bytes().splitlines():
            if line.strip():
                try:
                    ids.add(decode(line).id)
                except Exception:
                    pass
    return ids


def test_sigkill_restarts_lose_and_double_nothing(daemon_proc: DaemonProcess, tmp_path: Path) -> None:
    daemon = daemon_proc.start()
    env = daemon.app_env()
    stop_file = tmp_path / "stop"
    id_files = [tmp_path / f"ids-{i}.txt" for i in range(APPS)]
    started = time.monotonic()
    apps = [
        spawn(APP, env, daemon.url, str(daemon.state_dir), str(path), f"load-{i}", str(stop_file))
        for i, path in enumerate(id_files)
    ]
    stop = threading.Event()
    kills: list[str] = []
    killer = threading.Thread(target=_kill_loop, args=(daemon, KILLS, stop, kills, stop_file), daemon=True)
    killer.start()
    try:
        killer.join(90)
        stop_file.touch()
        results = reap(apps, timeout=60)
    finally:
        stop.set()
        for app in apps:
            if app.poll() is None:
                app.kill()
    assert not killer.is_alive()
    assert len(kills) >= 20, kills
    assert daemon.proc is not None and daemon.proc.poll() is None, "the daemon must be up at the end"
    for code, _out, err in results:
        assert code == 0, err[-3000:]
    stats = [last_json(out) for _, out, _ in results]

    generated: list[str] = []
    for path in id_files:
        generated += path.read_text().split()
    assert len(generated) == len(set(generated)) == sum(s["generated"] for s in stats)

    # Read the stored ids from the file itself after a clean stop (a checkpoint), and via SQL.
    via_sql = daemon.sql("SELECT count(*) AS n, count(DISTINCT id) AS d FROM usage_events")[0]
    assert daemon.stop() == 0
    stored = _store_ids(daemon.db)
    duplicates = len(stored) - len(set(stored))
    missing = set(generated) - set(stored)
    extra = set(stored) - set(generated)
    elapsed = time.monotonic() - started
    print(
        f"\nload: {APPS} apps, {len(generated)} events generated, {len(stored)} stored,"
        f" {duplicates} duplicates, {len(missing)} missing, {len(kills)} SIGKILLs survived,"
        f" {sum(s['spooled'] for s in stats)} spooled, {sum(s['replayed'] for s in stats)} replayed,"
        f" {sum(s['post_failures'] for s in stats)} failed posts, {elapsed:.1f}s"
    )
    assert via_sql["n"] == via_sql["d"] == len(stored)
    assert duplicates == 0
    in_spool = _spooled_ids(daemon.state_dir / "spool") & missing
    assert not missing, (
        f"{len(missing)} generated events never stored ({len(in_spool)} of them still in spool files:"
        f" {sorted(p.name for p in (daemon.state_dir / 'spool').iterdir())[:10]}), e.g. {sorted(missing)[:3]}"
    )
    assert not extra
    # The outage really happened: events went through the spool and were replayed.
    assert sum(s["spooled"] for s in stats) > 0 and sum(s["replayed"] for s in stats) > 0
    for s in stats:
        assert s["dropped_queue_full"] == 0 and s["spool_dropped"] == 0 and s["spool_damaged"] == 0
