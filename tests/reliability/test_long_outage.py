"""Daemon down for long, end to end with the real daemon (the emitter's own tests use the fake sink:
tests/emitter/test_delivery.py, test_spool.py — not repeated here).

- memory stays bounded (queue cap) and the spool stays under its cap, dropping the oldest events,
  counted; the count reaches the daemon in ``x-costwatch-dropped`` and shows up in
  ``costwatch_client_dropped_events_total{reason}``;
- replay after the restart stores each surviving event once; replaying the same spool file again
  stores nothing new;
- a spool file left truncated/corrupted by a crash is replayed up to the damage, the rest reported.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from costwatch.events import encode
from costwatch.instrumentation.emitter import Emitter
from costwatch.instrumentation.spool import segment_lines
from costwatch.settings import ClientSettings
from tests.emitter.conftest import Item, make_event
from tests.support.processes import DaemonProcess, free_port

pytestmark = pytest.mark.slow


def _dropped_metric(url: str) -> dict[str, float]:
    text = httpx.get(url + "/metrics", timeout=5).text
    return {
        s.labels["reason"]: s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == "costwatch_client_dropped_events_total"
    }


def _wait(predicate, timeout: float = 30.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return bool(predicate())


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonProcess]:
    d = DaemonProcess(tmp_path / "state", port=free_port())
    try:
        yield d
    finally:
        d.stop()


def _emitter(daemon: DaemonProcess, **kw: object) -> Emitter:
    values: dict = {
        "url": daemon.url,
        "app": "outage",
        "state_dir": daemon.state_dir,
        "flush_interval_s": 0.02,
        "batch_max_events": 50,
        "queue_max_events": 200,
        "spool_max_bytes": 48 * 1024,
        "killswitch_poll_s": 0.2,
    }
    values.update(kw)
    emitter = Emitter(ClientSettings(**values))
    emitter.replay_scan_s = 0.2
    emitter.start()
    return emitter


def test_long_outage_bounded_drops_reported_replay_idempotent(daemon: DaemonProcess) -> None:
    emitter = _emitter(daemon)
    try:
        burst = 1000  # a burst far over the queue cap: the newest are dropped (the app never waits)
        with emitter._flush_lock:  # hold the emitter thread at its next tick: a burst faster than it
            t0 = time.perf_counter()
            for _ in range(burst):
                emitter.submit(Item(make_event(ts_start=time.time(), ts_end=time.time())))
            burst_s = time.perf_counter() - t0
            stats = emitter.stats()
        assert stats["queued"] <= 200
        assert stats["dropped_queue_full"] >= burst - 200 - 50 and burst_s < 0.5
        assert emitter.flush(5)
        submitted: list[str] = []
        max_queued = 0
        for _ in range(40):  # then a long outage: ~4x what the spool may hold
            for _ in range(50):
                event = make_event(ts_start=time.time(), ts_end=time.time())
                submitted.append(event.id)
                emitter.submit(Item(event))
            max_queued = max(max_queued, emitter.stats()["queued"])
            assert emitter.flush(5)
        assert max_queued <= 200
        stats = emitter.stats()
        assert stats["spool_bytes"] <= 48 * 1024
        spool_dropped = stats["spool_dropped"]
        assert spool_dropped > 0
        on_disk = sorted((daemon.state_dir / "spool").glob("*.ndjson"))
        survivors = [line for p in on_disk for line in segment_lines(p)]
        copy = daemon.state_dir.parent / "spool-copy"
        shutil.copytree(daemon.state_dir / "spool", copy)

        daemon.start()
        db_ids = lambda: {r["id"] for r in daemon.sql("SELECT id FROM usage_events")}  # noqa: E731
        assert _wait(lambda: emitter.stats()["spool_bytes"] == 0 and len(db_ids()) >= len(survivors), 40)
        stored = db_ids()
        survivor_ids = [line.split(b'"id":"', 1)[1].split(b'"', 1)[0].decode() for line in survivors]
        assert stored >= set(survivor_ids)
        # Oldest first: what was evicted is a prefix of the outage's events, the survivors its tail.
        outage_stored = [i for i in submitted if i in stored]
        assert outage_stored == submitted[len(submitted) - len(outage_stored) :]
        assert len(stored) == len(survivors) == len(outage_stored)  # the burst was evicted too (oldest)
        # The drops reached the daemon's metric (reported once, not per retry).
        assert _wait(lambda: _dropped_metric(daemon.url).get("spool_full") == spool_dropped, 10)
        assert _dropped_metric(daemon.url).get("queue_full") == stats["dropped_queue_full"]
        rows = daemon.sql("SELECT count(*) AS n, count(DISTINCT id) AS d FROM usage_events")[0]

        # Replaying the very same spool file again (a crash between POST and unlink) adds nothing.
        for path in copy.iterdir():
            if path.suffix == ".ndjson":
                shutil.copy(
                    path, daemon.state_dir / "spool" / path.name.replace(path.name[21:-7], "1-deadbeef")
                )
        assert _wait(lambda: not list((daemon.state_dir / "spool").glob("*.ndjson")), 20)
        assert daemon.sql("SELECT count(*) AS n, count(DISTINCT id) AS d FROM usage_events")[0] == rows
        assert rows["n"] == rows["d"]
        print(
            f"\nlong outage: {len(submitted)} events during the outage, {spool_dropped} evicted oldest-first"
            f" from a 48 KiB spool, {stats['dropped_queue_full']} dropped by the 200-event queue in a"
            f" {burst}-event burst ({burst_s * 1e3:.1f} ms), {len(outage_stored)} replayed and stored once"
        )
    finally:
        emitter.close(2)


def test_corrupted_orphan_spool_replayed_up_to_the_damage(daemon: DaemonProcess) -> None:
    spool = daemon.state_dir / "spool"
    spool.mkdir(parents=True)
    good = [make_event(ts_start=time.time(), ts_end=time.time()) for _ in range(30)]
    lines = [encode(e) for e in good]
    # A dead process's segment: garbage and a non-UTF-8 line in the middle, a torn last line.
    data = b"\n".join([*lines[:10], b"\x00\xff garbage", b'{"id": "half', *lines[10:29]]) + b"\n"
    data += lines[29][: len(lines[29]) // 2]
    (spool / "00000000000000000001-1-deadbeef.ndjson").write_bytes(data)
    daemon.start()
    emitter = _emitter(daemon)
    try:
        assert _wait(lambda: not list(spool.glob("*.ndjson")) and not list(spool.glob("*.claimed.*")), 20)
        stored = {r["id"] for r in daemon.sql("SELECT id FROM usage_events")}
        assert stored == {e.id for e in good[:29]}  # everything up to and around the damage
        assert emitter.stats()["spool_damaged"] == 3
        emitter.submit(Item(make_event()))  # the next POST carries the report
        assert emitter.flush(5)
        assert _wait(lambda: _dropped_metric(daemon.url).get("spool_damaged") == 3, 10)
        assert "\ncostwatch_store_healthy 1.0\n" in httpx.get(daemon.url + "/metrics", timeout=5).text
    finally:
        emitter.close(2)
