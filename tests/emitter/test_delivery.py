"""Delivery to a real loopback daemon: batches, outages, spool replay, rejects, auth, drops."""

from __future__ import annotations

import threading
import time

from costwatch.instrumentation.emitter import Emitter
from costwatch.instrumentation.spool import segment_lines

from .conftest import BadItem, Item, make_event


def test_batches_arrive_with_exact_ids(sink, make_emitter):
    emitter = make_emitter(sink.url, batch_max_events=7)
    items = [Item() for _ in range(50)]
    for item in items:
        emitter.submit(item)
    assert emitter.flush(5)
    assert sink.ids() == [i.event.id for i in items]
    assert max(len(p.ids) for p in sink.posts) <= 7
    headers = sink.request_headers[0]
    assert headers["Content-Type"] == "application/json"
    stats = emitter.stats()
    assert stats["submitted"] == 50 and stats["sent"] == 50 and stats["spooled"] == 0


def test_flush_without_start_and_lazy_start_on_submit(sink, make_emitter):
    emitter = make_emitter(sink.url, start=False)
    assert emitter.flush(1)  # nothing to do
    item = Item()
    emitter.submit(item)
    assert emitter._thread is not None  # started lazily by submit
    assert sink.wait_for(lambda: sink.ids() == [item.event.id], 3)


def test_daemon_down_then_up_replays_exactly_once(sink, make_emitter):
    sink.stop()
    emitter = make_emitter(sink.url)
    items = [Item() for _ in range(30)]
    for item in items:
        emitter.submit(item)
    assert emitter.flush(3)
    assert emitter.stats()["spooled"] == 30
    assert list(emitter._spool.directory.glob("*.ndjson"))
    sink.start()  # same port
    more = [Item() for _ in range(5)]
    for item in more:
        emitter.submit(item)
    expected = {i.event.id for i in items + more}
    assert sink.wait_for(lambda: set(sink.ids()) == expected, 10), emitter.stats()
    assert emitter.flush(2)
    time.sleep(0.3)  # a few more ticks: nothing is sent twice
    assert len(sink.ids()) == 35 and sink.duplicates == 0
    assert all(n == 1 for n in sink.seen.values())
    stats = emitter.stats()
    assert stats["replayed"] >= 30 and stats["replayed"] + stats["sent"] == 35
    assert not list(emitter._spool.directory.glob("*.ndjson*"))


def test_500_and_garbage_replies_spool_then_recover(sink, make_emitter):
    for mode in ("500", "garbage"):
        sink.mode = mode
        emitter = make_emitter(sink.url)
        item = Item()
        emitter.submit(item)
        assert emitter.flush(3)
        assert emitter.stats()["spooled"] == 1, mode
        sink.mode = "ok"
        assert sink.wait_for(lambda item=item: item.event.id in sink.ids(), 10), mode
        emitter.close(1)


def test_hanging_daemon_never_blocks_submit(sink, make_emitter):
    sink.mode = "hang"
    emitter = make_emitter(sink.url)
    emitter.read_timeout_s = 0.3
    first = Item()
    emitter.submit(first)
    assert sink.wait_for(lambda: sink.requests >= 1, 3)
    t0 = time.perf_counter()
    for _ in range(500):
        emitter.submit(Item())
    assert time.perf_counter() - t0 < 0.5
    sink.mode = "ok"
    sink.release_hangs()
    assert sink.wait_for(lambda: first.event.id in sink.ids() and len(sink.ids()) == 501, 10), emitter.stats()


def test_queue_full_drops_new_items_counted_and_reported(sink, make_emitter):
    emitter = make_emitter(sink.url, start=False, queue_max_events=100)
    emitter._thread = threading.current_thread()  # pretend started: nothing drains the queue
    t0 = time.perf_counter()
    for _ in range(250):
        emitter.submit(Item())
    assert time.perf_counter() - t0 < 0.1
    emitter.submit(None)  # garbage in: still never raises (dropped: queue full)
    stats = emitter.stats()
    assert stats["dropped_queue_full"] == 151 and stats["queued"] == 100 and stats["submitted"] == 251
    emitter._thread = None
    emitter.start()
    assert emitter.flush(3)
    assert len(sink.ids()) == 100
    assert sink.dropped_reported() == {"queue_full": 151}
    emitter.submit(Item())
    assert emitter.flush(3)
    assert sink.dropped_reported() == {"queue_full": 151}  # deltas: not reported twice


def test_conversion_errors_counted_never_raised(sink, make_emitter, caplog):
    emitter = make_emitter(sink.url)
    good = Item()
    for _ in range(3):
        emitter.submit(BadItem())
    emitter.submit(good)
    emitter.submit(Item(None) if False else _NoneItem())
    assert emitter.flush(3)
    assert sink.ids() == [good.event.id]
    assert emitter.stats()["conversion_errors"] == 3
    assert sum("could not build a usage event" in r.getMessage() for r in caplog.records) == 1


class _NoneItem:
    def to_event(self):
        return None


def test_rejected_events_are_not_retried(sink, make_emitter):
    emitter = make_emitter(sink.url)
    bad, good = Item(), Item()
    sink.reject_ids = {bad.event.id}
    emitter.submit(bad)
    emitter.submit(good)
    assert emitter.flush(3)
    assert sink.ids() == [good.event.id]
    time.sleep(0.2)
    assert sink.requests == 1
    stats = emitter.stats()
    assert stats["rejected"] == 1 and stats["sent"] == 1 and stats["spooled"] == 0


def test_token_reread_after_401(sink, make_emitter, tmp_path):
    sink.token = "s3cret"
    emitter = make_emitter(sink.url)
    item = Item()
    emitter.submit(item)
    assert emitter.flush(3)
    assert emitter.stats()["spooled"] == 1  # no token yet: 401, kept on disk
    state_dir = emitter.settings.state_dir
    (state_dir / "token").write_text("s3cret\n")
    assert sink.wait_for(lambda: item.event.id in sink.ids(), 10)
    accepted = [h for h in sink.request_headers if h.get("Authorization") == "Bearer s3cret"]
    assert accepted


def test_submit_cost_is_small(make_emitter):
    emitter = make_emitter(start=False, queue_max_events=2_000_000)
    emitter._thread = threading.current_thread()
    item = Item()
    n = 200_000
    t0 = time.perf_counter_ns()
    for _ in range(n):
        emitter.submit(item)
    per_call = (time.perf_counter_ns() - t0) / n
    emitter._thread = None
    emitter._queue.clear()
    print(f"submit(): {per_call:.0f} ns/call")
    assert per_call < 2000


def test_close_spools_what_it_cannot_send(sink, make_emitter):
    sink.mode = "hang"
    emitter = make_emitter(sink.url)
    emitter.read_timeout_s = 5
    items = [Item() for _ in range(20)]
    for item in items:
        emitter.submit(item)
    assert sink.wait_for(lambda: sink.requests >= 1, 3)
    for _ in range(5):
        emitter.submit(Item())
    t0 = time.monotonic()
    emitter.close(0.5)
    assert time.monotonic() - t0 < 1.5
    spooled = [e.id for e in _read_spool(emitter)]
    assert {i.event.id for i in items} <= set(spooled)
    emitter.submit(Item())
    assert emitter.stats()["dropped_closed"] == 1


def _read_spool(emitter: Emitter):
    from costwatch.events import decode

    out = []
    for path in sorted(emitter._spool.directory.glob("*.ndjson")):
        out += [decode(line) for line in segment_lines(path)]
    return out


def test_make_event_is_valid():
    assert make_event().provider == "openai"


def test_many_threads_submitting_lose_nothing(sink, make_emitter):
    emitter = make_emitter(sink.url, queue_max_events=100_000, batch_max_events=500)
    per_thread = [[Item() for _ in range(2000)] for _ in range(4)]

    def produce(items):
        for item in items:
            emitter.submit(item)

    threads = [threading.Thread(target=produce, args=(items,)) for items in per_thread]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert emitter.flush(10)
    expected = sorted(i.event.id for items in per_thread for i in items)
    assert sorted(sink.ids()) == expected and sink.duplicates == 0
    stats = emitter.stats()
    assert stats["submitted"] == stats["sent"] == 8000 and stats["dropped_queue_full"] == 0
    print(f"emitter CPU: {stats['emitter_cpu_us'] / 8:.0f} us per 1k events (sink in-process)")


def test_daemon_restart_on_kept_alive_connection_is_retried_not_spooled(sink, make_emitter):
    emitter = make_emitter(sink.url, killswitch_poll_s=60)
    emitter.submit(Item())
    assert emitter.flush(2) and len(sink.ids()) == 1
    sink.stop()
    sink.start()  # same port; the emitter's kept-alive connection is now dead
    emitter.submit(Item())
    assert emitter.flush(2)
    assert len(sink.ids()) == 2
    assert emitter.stats()["spooled"] == 0


def test_long_outage_stays_bounded_then_survivors_replayed(sink, make_emitter):
    sink.stop()
    emitter = make_emitter(sink.url, spool_max_bytes=8192, queue_max_events=100)
    items = [Item() for _ in range(400)]
    for start in range(0, 400, 50):
        for item in items[start : start + 50]:
            emitter.submit(item)
        assert emitter.flush(2)
    stats = emitter.stats()
    assert stats["spool_bytes"] <= 8192 and stats["queued"] == 0
    dropped = stats["spool_dropped"]
    assert 0 < dropped < 400 and stats["dropped_queue_full"] == 0
    sink.start()
    survivors = 400 - dropped
    assert sink.wait_for(lambda: len(sink.ids()) == survivors, 10), emitter.stats()
    assert sink.ids() == [i.event.id for i in items[-survivors:]]  # oldest dropped first
    emitter.submit(Item())
    assert emitter.flush(2)
    assert sink.dropped_reported() == {"spool_full": dropped}


def test_close_without_thread_keeps_the_deadline(sink, make_emitter):
    """At interpreter exit no thread may start: close() drains in the caller, within its timeout."""
    sink.mode = "hang"
    emitter = make_emitter(sink.url, start=False)
    items = [Item() for _ in range(10)]
    emitter._queue.extend(items)  # as if submit() could not start the thread
    t0 = time.monotonic()
    emitter.close(1.5)
    assert time.monotonic() - t0 < 2.5
    assert sorted(e.id for e in _read_spool(emitter)) == sorted(i.event.id for i in items)


def test_too_large_batch_is_split(sink, make_emitter):
    sink.max_batch = 20
    emitter = make_emitter(sink.url, batch_max_events=100)
    items = [Item() for _ in range(90)]
    for item in items:
        emitter.submit(item)
    assert emitter.flush(3)
    assert sorted(sink.ids()) == sorted(i.event.id for i in items)
    assert emitter.stats()["spooled"] == 0 and emitter.stats()["sent"] == 90


def test_unwritable_spool_and_dead_daemon_cost_the_app_nothing(sink, make_emitter, tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")  # the spool directory cannot be created under a file
    sink.stop()
    emitter = make_emitter(sink.url, state_dir=blocker)
    for _ in range(10):
        emitter.submit(Item())
    assert emitter.flush(2) is False  # honest: neither delivered nor spooled
    stats = emitter.stats()
    assert stats["dropped_spool_error"] == 10 and stats["spooled"] == 0
    sink.start()
    # Until the emitter notices the daemon is back, new events meet the same dead spool (dropped).
    assert sink.wait_for(lambda: emitter.submit(Item()) or len(sink.ids()) >= 1, 8)
    assert emitter.flush(2)
    dropped = emitter.stats()["dropped_spool_error"]
    assert sink.dropped_reported().get("spool_error") == dropped >= 10


def test_standalone_sink_process_counts_events(make_emitter):
    """The benchmark/e2e work runs the sink in its own process: keep that mode working."""
    import subprocess
    import sys

    from .conftest import ROOT

    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.sink", "--count-only"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        url = proc.stdout.readline().strip()
        emitter = make_emitter(url)
        for _ in range(300):
            emitter.submit(Item())
        assert emitter.flush(5) and emitter.stats()["sent"] == 300
    finally:
        proc.terminate()
        proc.wait(5)


class _Wrong:
    def __init__(self, value):
        self.value = value

    def to_event(self):
        return self.value


def test_unencodable_or_wrong_events_are_counted_and_the_rest_delivered(sink, make_emitter):
    emitter = make_emitter(sink.url)
    good = [Item() for _ in range(3)]
    emitter.submit(good[0])
    emitter.submit(_Wrong({"not": "an event"}))
    emitter.submit(_Wrong(make_event(tags={"k": object()})))  # msgspec cannot encode this
    emitter.submit(good[1])
    emitter.submit(good[2])
    assert emitter.flush(3)
    assert sink.ids() == [i.event.id for i in good]
    assert emitter.stats()["conversion_errors"] == 2
    sink.stop()  # and the same through the spool
    emitter.submit(_Wrong(make_event(tags={"k": object()})))
    emitter.submit(Item())
    assert emitter.flush(3)
    assert emitter.stats()["spooled"] == 1 and emitter.stats()["conversion_errors"] == 3
