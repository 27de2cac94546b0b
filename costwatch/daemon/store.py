"""The single writer thread that group-commits ingest batches (the write side of the store).

DuckDB allows one writing process per file and executemany runs ~2k rows/s, so
one thread owns every write. A request's events arrive as one priced Arrow table,
built in the request's own thread (`batch.priced_table`); the writer merges the
tables that queued up while the previous commit ran, dedupes them by event id,
inserts them as one registered Arrow table with the calendar `day` computed by
DuckDB in the session time zone, commits, updates metrics, and only then resolves
each request's future (a 2xx means "committed"). It checkpoints between commits,
once `CHECKPOINT_ROWS` rows are in the WAL (which bounds the rows DuckDB holds in
memory) and when ingest pauses. Reads use their own cursors.

Opening the file: `costwatch.daemon.database`; the columnar batch and the duplicate
lookup: `costwatch.daemon.batch`; canned queries: `costwatch.daemon.queries`.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import pyarrow as pa

from costwatch.daemon.batch import (
    INSERT_BATCH,
    distinct_ids,
    existing_ids,
    priced_table,
    with_ingested_at,
)
from costwatch.daemon.database import WAL_AUTOCHECKPOINT, open_database
from costwatch.events import UsageEvent
from costwatch.pricing import Pricer

__all__ = ["CHECKPOINT_ROWS", "IngestResult", "Store"]

log = logging.getLogger("costwatch.daemon.store")
T = TypeVar("T")

_MERGE_MAX_EVENTS = 20_000  # a commit takes what queued meanwhile, up to this many events
# Each commit has a fixed cost (the duplicate lookup, INSERT and COMMIT, metrics: ~10 ms), so a
# commit of fewer than _MERGE_TARGET_EVENTS waits up to MERGE_LINGER_S for more requests to join.
# Measured per event (benchmarks §2): 2k-event commits cost ~1.5x what 8k-event commits cost.
_MERGE_TARGET_EVENTS = 8_000
MERGE_LINGER_S = 0.005
# Checkpoint once this many rows were committed since the last checkpoint. DuckDB keeps the rows
# of the WAL in memory, uncompressed (~550 bytes a row), until a checkpoint writes them to the
# file: bounded only by the WAL size, that is hundreds of MB of RSS under sustained ingest.
CHECKPOINT_ROWS = 122_880  # one DuckDB row group: the cheapest checkpoint per row measured (benchmarks §2)
IDLE_CHECKPOINT_S = 2.0  # checkpoint once no ingest has arrived for this long
_LOW_DISK_BYTES = 64 * 1024 * 1024


@dataclass
class IngestResult:
    accepted: int
    duplicates: int


@dataclass
class _IngestJob:
    table: pa.Table  # the request's events and their prices (`batch.priced_table`)
    future: concurrent.futures.Future[IngestResult] = field(default_factory=concurrent.futures.Future)


@dataclass
class _CallJob:
    fn: Callable[[duckdb.DuckDBPyConnection], Any]
    future: concurrent.futures.Future[Any] = field(default_factory=concurrent.futures.Future)


_STOP = object()
# (the committed rows: event and price columns, seconds the commit took)
CommitHook = Callable[[pa.Table, float], None]


class Store:
    """Owns the DuckDB connection; every write goes through its writer thread."""

    def __init__(
        self,
        path: Path,
        pricer: Pricer,
        *,
        memory_limit: str = "1GB",
        threads: int = 2,
        timezone: str = "UTC",
        wal_autocheckpoint: str = WAL_AUTOCHECKPOINT,
        checkpoint_rows: int = CHECKPOINT_ROWS,
        on_commit: CommitHook | None = None,
    ) -> None:
        self.path = path
        self.pricer = pricer
        self.on_commit = on_commit
        self.checkpoint_rows = checkpoint_rows
        self.con = open_database(
            path,
            memory_limit=memory_limit,
            threads=threads,
            timezone=timezone,
            wal_autocheckpoint=wal_autocheckpoint,
        )
        self.last_error: str | None = None
        self.last_commit_at: float | None = None
        self._queue: queue.Queue[Any] = queue.Queue()
        self._closed = False
        self.pending_events = 0  # queued but not yet committed (read by the app for backpressure)
        self._uncheckpointed = 0  # rows committed since the last checkpoint (writer thread)
        self._pending_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="costwatch-writer", daemon=True)
        self._thread.start()

    # -- public API -----------------------------------------------------------------
    def submit(self, events: list[UsageEvent]) -> concurrent.futures.Future[IngestResult]:
        """Queue events for the next group commit; the future resolves after COMMIT.

        The events become their priced Arrow table here, in the caller's thread (the HTTP
        event loop for ingest), while the writer may be inside DuckDB with the GIL released.
        """
        future: concurrent.futures.Future[IngestResult] = concurrent.futures.Future()
        if self._closed:
            future.set_exception(RuntimeError("the store is closed"))
            return future
        try:
            table = priced_table(events, self.pricer)
        except Exception as exc:  # nothing was queued: the request is answered with the error
            log.exception("building the batch failed")
            future.set_exception(exc)
            return future
        with self._pending_lock:
            self.pending_events += table.num_rows
        self._queue.put(_IngestJob(table, future))
        return future

    def call(self, fn: Callable[[duckdb.DuckDBPyConnection], T], timeout: float | None = 60) -> T:
        """Run ``fn(cursor)`` on the writer thread inside one transaction; returns its result."""
        job = _CallJob(fn)
        if self._closed:
            raise RuntimeError("the store is closed")
        self._queue.put(job)
        return job.future.result(timeout)

    def read(self, fn: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
        """Run ``fn`` on a fresh cursor (any thread); MVCC keeps it off the writer's way."""
        cur = self.con.cursor()
        try:
            return fn(cur)
        finally:
            cur.close()

    def health(self) -> list[str]:
        """Reasons the store is degraded; empty when healthy."""
        reasons = []
        if not self._thread.is_alive():
            reasons.append("writer thread is not running")
        if self.last_error:
            reasons.append(f"last commit failed: {self.last_error}")
        directory = self.path.parent
        if not os.access(directory, os.W_OK):
            reasons.append(f"database directory {directory} is not writable")
        if self.path.exists() and not os.access(self.path, os.W_OK):
            reasons.append(f"database file {self.path} is not writable")
        try:
            if shutil.disk_usage(directory).free < _LOW_DISK_BYTES:
                reasons.append(f"disk almost full under {directory}")
        except OSError as exc:
            reasons.append(f"cannot stat {directory}: {exc}")
        return reasons

    def close(self) -> None:
        """Drain queued work, checkpoint and close (called on SIGTERM/SIGINT)."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        self._thread.join(timeout=30)
        try:
            self.con.execute("CHECKPOINT")
        except duckdb.Error as exc:
            log.warning("checkpoint on close failed: %s", exc)
        self.con.close()

    # -- writer thread --------------------------------------------------------------
    def _run(self) -> None:
        cur = self.con.cursor()
        pending: Any = None
        while True:
            if pending is not None:
                job, pending = pending, None
            else:
                try:
                    job = self._queue.get(timeout=IDLE_CHECKPOINT_S if self._uncheckpointed else None)
                except queue.Empty:
                    self._checkpoint(cur)
                    continue
            if job is _STOP:
                break
            try:
                if isinstance(job, _CallJob):
                    if job.future.set_running_or_notify_cancel():
                        self._run_call(cur, job)
                    continue
                jobs = [job]
                count = job.table.num_rows
                linger_until = time.monotonic() + MERGE_LINGER_S
                while count < _MERGE_MAX_EVENTS:
                    try:
                        if count >= _MERGE_TARGET_EVENTS:
                            nxt = self._queue.get_nowait()
                        else:  # a small commit: give the requests being decoded a moment to join it
                            nxt = self._queue.get(timeout=max(linger_until - time.monotonic(), 0))
                    except queue.Empty:
                        break
                    if not isinstance(nxt, _IngestJob):
                        pending = nxt
                        break
                    jobs.append(nxt)
                    count += nxt.table.num_rows
                self._commit(cur, jobs)
                if self._uncheckpointed >= self.checkpoint_rows:
                    self._checkpoint(cur)  # between commits, after their acknowledgements
            except Exception:  # the writer must outlive any one job
                log.exception("writer job failed")
        cur.close()

    def _checkpoint(self, cur: duckdb.DuckDBPyConnection) -> None:
        """Fold the WAL into the file (and the rows DuckDB holds in memory with it)."""
        try:
            cur.execute("CHECKPOINT")
        except duckdb.Error as exc:  # a read still open, a full disk: the WAL keeps every commit
            log.info("checkpoint skipped: %s", exc)
            # Try again after another half threshold (or the next pause), not after every commit.
            self._uncheckpointed = min(self._uncheckpointed, self.checkpoint_rows // 2)
            return
        self._uncheckpointed = 0

    def _run_call(self, cur: duckdb.DuckDBPyConnection, job: _CallJob) -> None:
        try:
            cur.execute("BEGIN")
            result = job.fn(cur)
            cur.execute("COMMIT")
        except BaseException as exc:
            _rollback(cur)
            job.future.set_exception(exc)
        else:
            job.future.set_result(result)

    def _commit(self, cur: duckdb.DuckDBPyConnection, jobs: list[_IngestJob]) -> None:
        try:
            self._commit_jobs(cur, jobs)
        finally:
            with self._pending_lock:
                self.pending_events -= sum(job.table.num_rows for job in jobs)

    def _commit_jobs(self, cur: duckdb.DuckDBPyConnection, jobs: list[_IngestJob]) -> None:
        # A request cancelled while queued is dropped (it was never acknowledged); once
        # running, a future can no longer be cancelled, so resolving it below cannot fail.
        jobs = [job for job in jobs if job.future.set_running_or_notify_cancel()]
        if not jobs:
            return
        started = time.perf_counter()
        try:
            table = pa.concat_tables([job.table for job in jobs]) if len(jobs) != 1 else jobs[0].table
            fresh, results = _dedupe(cur, table, [job.table.num_rows for job in jobs])
            if fresh.num_rows:
                batch = with_ingested_at(fresh, time.time())
                cur.execute("BEGIN")
                cur.register("_cw_batch", batch)
                try:
                    cur.execute(INSERT_BATCH)
                finally:
                    _unregister(cur, "_cw_batch")
                cur.execute("COMMIT")
        except Exception as exc:
            _rollback(cur)
            _unregister(cur, "_cw_batch")
            self.last_error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            log.error("commit failed: %s", self.last_error)
            for job in jobs:
                job.future.set_exception(exc)
            return
        self.last_error = None
        self.last_commit_at = time.time()
        self._uncheckpointed += fresh.num_rows
        if self.on_commit is not None:
            try:
                self.on_commit(fresh, time.perf_counter() - started)
            except Exception:  # metrics must never fail an ingest that is committed
                log.exception("updating metrics failed")
        for job, result in zip(jobs, results, strict=True):
            job.future.set_result(result)


def _dedupe(
    cur: duckdb.DuckDBPyConnection, table: pa.Table, sizes: list[int]
) -> tuple[pa.Table, list[IngestResult]]:
    """The rows of ``table`` to store (first copy of each id not stored yet), and each job's counts.

    ``sizes`` are the row counts of the jobs ``table`` concatenates, in order. The common case
    (every id new and distinct) costs one id set and the stored-id lookup, no per-row loop.
    """
    distinct = distinct_ids(table["id"])
    existing = existing_ids(cur, distinct)
    if not existing and len(distinct) == table.num_rows:
        return table, [IngestResult(n, 0) for n in sizes]
    ids: list[str] = table["id"].to_pylist()
    keep: list[bool] = []
    seen: set[str] = set()
    for i in ids:
        if i in existing or i in seen:
            keep.append(False)
        else:
            seen.add(i)
            keep.append(True)
    results = []
    start = 0
    for n in sizes:
        accepted = sum(keep[start : start + n])
        results.append(IngestResult(accepted, n - accepted))
        start += n
    return table.filter(pa.array(keep, pa.bool_())), results


def _unregister(cur: duckdb.DuckDBPyConnection, name: str) -> None:
    """Drop a registered Arrow view without masking the error that aborted the transaction."""
    try:
        cur.unregister(name)
    except duckdb.Error:
        pass


def _rollback(cur: duckdb.DuckDBPyConnection) -> None:
    try:
        cur.execute("ROLLBACK")
    except duckdb.Error:
        pass
