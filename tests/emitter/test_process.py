"""Process life cycle: fork() gives the child its own emitter state; exit flushes or spools."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

from costwatch.events import decode
from costwatch.instrumentation.spool import segment_lines

from .conftest import ROOT, Item


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_fork_child_gets_fresh_queue_and_its_events_arrive(sink, make_emitter):
    # Long interval and big batches: the parent's items are still queued when we fork.
    emitter = make_emitter(sink.url, flush_interval_s=5, batch_max_events=1000)
    parent_items = [Item() for _ in range(10)]
    for item in parent_items:
        emitter.submit(item)
    child_items = [Item() for _ in range(3)]
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 1
        try:
            if len(emitter._queue) == 0 and emitter._thread is None:
                for item in child_items:
                    emitter.submit(item)
                code = 0 if emitter.flush(5) and emitter.stats()["sent"] == 3 else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert emitter.flush(5)
    assert sorted(sink.ids()) == sorted(i.event.id for i in parent_items + child_items)
    assert sink.duplicates == 0 and all(n == 1 for n in sink.seen.values())


_SCRIPT = """
import sys, json
sys.path.insert(0, {root!r})
from costwatch.instrumentation.emitter import Emitter
from costwatch.settings import ClientSettings
from tests.emitter.conftest import Item
settings = ClientSettings(url={url!r}, state_dir={state!r}, token=None, flush_interval_s=5,
                          batch_max_events=1000, exit_flush_timeout_s={exit_timeout})
emitter = Emitter(settings)
emitter.start()
items = [Item() for _ in range(20)]
for item in items:
    emitter.submit(item)
print(json.dumps([i.event.id for i in items]), flush=True)
# no flush, no close: the atexit hook must deliver
"""


def _run_script(url: str, state, exit_timeout: float = 2.0) -> tuple[list[str], float]:
    import json

    code = textwrap.dedent(
        _SCRIPT.format(root=str(ROOT), url=url, state=str(state), exit_timeout=exit_timeout)
    )
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout), time.monotonic() - t0


def test_exit_flushes_queued_events(sink, tmp_path):
    ids, _ = _run_script(sink.url, tmp_path / "state")
    assert sink.wait_for(lambda: sorted(sink.ids()) == sorted(ids), 5)


def test_exit_with_hanging_daemon_spools_within_the_deadline(sink, tmp_path):
    sink.mode = "hang"
    ids, elapsed = _run_script(sink.url, tmp_path / "state", exit_timeout=0.5)
    assert elapsed < 4.0
    spooled = []
    for path in (tmp_path / "state" / "spool").glob("*.ndjson"):
        spooled += [decode(line).id for line in segment_lines(path)]
    assert set(ids) <= set(spooled)


def test_exit_with_daemon_down_spools(sink, tmp_path):
    sink.stop()
    ids, _ = _run_script(sink.url, tmp_path / "state")
    spooled = []
    for path in (tmp_path / "state" / "spool").glob("*.ndjson"):
        spooled += [decode(line).id for line in segment_lines(path)]
    assert sorted(spooled) == sorted(ids)
