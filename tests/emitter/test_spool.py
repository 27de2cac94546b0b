"""The disk spool: cap, damage tolerance, orphan takeover, claim exclusivity."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from costwatch.events import encode
from costwatch.instrumentation.spool import Spool

from .conftest import ROOT, Item, make_event


def _ids(claim):
    return [e.id for e in claim.events]


def test_cap_drops_oldest_and_counts(tmp_path):
    spool = Spool(tmp_path, max_bytes=4096)
    events = [make_event() for _ in range(200)]
    line = len(encode(events[0])) + 1
    for start in range(0, 200, 10):
        spool.append(events[start : start + 10])
    assert spool.size <= 4096
    kept = []
    spool.seal()
    while (claim := spool.claim_next()) is not None:
        kept += _ids(claim)
        spool.done(claim)
    assert kept == [e.id for e in events[-len(kept) :]]  # the newest survive, in order
    assert len(kept) >= 4096 // line // 2
    assert spool.dropped == 200 - len(kept)


def test_single_batch_bigger_than_cap_keeps_newest(tmp_path):
    spool = Spool(tmp_path, max_bytes=2048)
    events = [make_event() for _ in range(1000)]  # > 2048 bytes even compressed
    written = spool.append(events)
    assert 0 < written < 1000 and spool.dropped == 1000 - written
    assert spool.size <= 2048
    spool.seal()
    claim = spool.claim_next()
    assert _ids(claim) == [e.id for e in events[-written:]]


def test_damaged_file_read_up_to_the_damage(tmp_path):
    spool = Spool(tmp_path, max_bytes=1 << 20)
    good = [make_event() for _ in range(4)]
    lines = [encode(e) + b"\n" for e in good]
    torn = encode(make_event())[:37]  # crash mid-write: no newline, cut JSON
    data = lines[0] + b"\xff\xfe garbage \x00\n" + lines[1] + b'{"id": "x"}\n' + lines[2] + lines[3] + torn
    dead = tmp_path / f"{1:020d}-999999-deadbeef.ndjson"
    dead.write_bytes(data)
    claim = spool.claim_next()  # no lock file: its writer is gone
    assert claim is not None and not claim.own
    assert _ids(claim) == [e.id for e in good]
    assert claim.damaged == 3 and spool.damaged == 3
    spool.done(claim)
    spool.close()
    assert not list(tmp_path.iterdir())


def test_orphans_of_dead_processes_are_claimed_once_and_live_ones_left_alone(tmp_path):
    # A live writer (this process) and a dead one (a subprocess that spooled and exited).
    live = Spool(tmp_path, max_bytes=1 << 20)
    mine = [make_event() for _ in range(3)]
    live.append(mine)
    code = textwrap.dedent(
        f"""
        import sys; sys.path.insert(0, {str(ROOT)!r})
        from pathlib import Path
        from costwatch.instrumentation.spool import Spool
        from tests.emitter.conftest import make_event
        spool = Spool(Path({str(tmp_path)!r}), 1 << 20)
        events = [make_event() for _ in range(5)]
        spool.append(events)
        print(",".join(e.id for e in events))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30)
    dead_ids = out.stdout.strip().split(",")
    other = Spool(tmp_path, max_bytes=1 << 20)  # a third process, recovering
    claim = other.claim_next()
    assert claim is not None and _ids(claim) == dead_ids
    assert other.claim_next() is None  # the live writer's open segment and the claimed one are off limits
    live.seal()
    assert other.claim_next() is None  # sealed, but its writer still holds the lock
    other.done(claim)
    dead_instance = claim.owner
    assert not any(dead_instance in n for n in os.listdir(tmp_path))  # its lock file is cleaned up too
    own = live.claim_next()
    assert own is not None and own.own and _ids(own) == [e.id for e in mine]


def test_released_claim_is_adopted_and_capped(tmp_path):
    dead = tmp_path / f"{5:020d}-1-00000000.ndjson"
    events = [make_event() for _ in range(3)]
    dead.write_bytes(b"".join(encode(e) + b"\n" for e in events))
    spool = Spool(tmp_path, max_bytes=1 << 20)
    claim = spool.claim_next()
    spool.release(claim)  # daemon went away mid-replay
    assert spool.pending_own == 1
    again = spool.claim_next()
    assert again.own and _ids(again) == [e.id for e in events]


def test_emitter_replays_orphans_at_start(sink, make_emitter, make_settings):
    settings = make_settings(sink.url)
    orphan = settings.spool_dir / f"{7:020d}-12345-cafef00d.ndjson"
    orphan.parent.mkdir(parents=True)
    items = [Item() for _ in range(4)]
    orphan.write_bytes(b"".join(encode(i.event) + b"\n" for i in items) + b"\xc3\x28broken")
    emitter = make_emitter(sink.url)
    assert sink.wait_for(lambda: sink.ids() == [i.event.id for i in items], 5)
    assert sink.wait_for(lambda: not orphan.parent.exists() or not list(orphan.parent.glob("*.ndjson*")), 5)
    assert emitter.stats()["replayed"] == 4 and emitter.stats()["spool_damaged"] == 1
    emitter.submit(Item())
    assert emitter.flush(2)
    assert sink.dropped_reported().get("spool_damaged") == 1


def test_two_recoverers_never_claim_the_same_file(tmp_path):
    orphan = tmp_path / f"{3:020d}-42-0badf00d.ndjson"
    orphan.write_bytes(encode(make_event()) + b"\n")
    (tmp_path / "42-0badf00d.lock").write_bytes(b"")  # its writer crashed: the lock is free
    a, b = Spool(tmp_path, 1 << 20), Spool(tmp_path, 1 << 20)
    first, second = a.claim_next(), b.claim_next()
    assert (first is None) != (second is None)
    winner = first or second
    (a if first else b).done(winner)
    a.close()
    b.close()
    assert os.listdir(tmp_path) == []  # the dead writer's lock file is gone as well


def test_small_then_huge_append_keeps_the_newest(tmp_path):
    spool = Spool(tmp_path, max_bytes=4096)
    small = make_event()
    spool.append([small])  # a small open segment
    events = [make_event() for _ in range(40)]  # > cap on its own (uncompressed)
    written = spool.append(events)
    assert written > 0 and spool.size <= 4096
    spool.seal()
    survivors = []
    while (claim := spool.claim_next()) is not None:
        survivors += _ids(claim)
        spool.done(claim)
    assert survivors[-written:] == [e.id for e in events[-written:]]
    assert survivors[:-written] in ([], [small.id])  # compressed, the small segment may still fit


def test_segments_are_zstd_and_hold_over_2m_events_in_256_mb(tmp_path):
    """Realistic events (bench.eventgen, ~650 bytes of JSON each), spooled batch by batch."""
    import time

    from bench.eventgen import make_events

    spool = Spool(tmp_path, max_bytes=256 * 1024 * 1024)
    events = make_events(4000, time.time(), 7)
    raw = sum(len(encode(e)) + 1 for e in events)
    for start in range(0, 2000, 10):  # small appends (10 events: a quiet app's flush)
        spool.append(events[start : start + 10])
    for start in range(2000, 4000, 500):
        spool.append(events[start : start + 500])
    spool.seal()
    size = sum(p.stat().st_size for p in tmp_path.glob("*.ndjson"))
    assert all(p.read_bytes().startswith(b"\x28\xb5\x2f\xfd") for p in tmp_path.glob("*.ndjson"))
    per_event = size / len(events)
    assert raw / len(events) > 600 and per_event < 256 * 1024 * 1024 / 2_000_000  # < 134 bytes
    claim = spool.claim_next()
    assert _ids(claim) == [e.id for e in events] and claim.damaged == 0


def test_a_torn_compressed_append_loses_only_itself(tmp_path):
    spool = Spool(tmp_path, max_bytes=1 << 20)
    first, second = [make_event() for _ in range(5)], [make_event() for _ in range(5)]
    spool.append(first)
    path = next(tmp_path.glob("*.ndjson"))
    intact = path.stat().st_size
    spool.append(second)
    torn = path.read_bytes()[: intact + (path.stat().st_size - intact) // 2]
    spool.seal()  # (the writer "crashed": replace its file by the torn copy, no frame end)
    path.write_bytes(torn)
    claim = spool.claim_next()
    assert _ids(claim) == [e.id for e in first]
    spool.done(claim)
    garbage = tmp_path / f"{2:020d}-999999-deadbeef.ndjson"  # a good block, then garbage
    writer = Spool(tmp_path / "w", max_bytes=1 << 20)
    writer.append(second)
    writer.seal()
    good = next((tmp_path / "w").glob("*.ndjson")).read_bytes()
    garbage.write_bytes(good + b"\x28\xb5\x2f\xfd garbage")
    claim = spool.claim_next()
    assert _ids(claim) == [e.id for e in second] and claim.damaged == 1


def test_uncompressed_segments_of_an_older_costwatch_are_replayed(tmp_path):
    events = [make_event() for _ in range(3)]
    (tmp_path / f"{4:020d}-1-0000beef.ndjson").write_bytes(b"".join(encode(e) + b"\n" for e in events))
    claim = Spool(tmp_path, max_bytes=1 << 20).claim_next()
    assert _ids(claim) == [e.id for e in events] and claim.damaged == 0
