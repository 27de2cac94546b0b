"""The writer thread: survives cancelled requests, commits in groups, reports failures."""

from __future__ import annotations

import threading
from pathlib import Path

from costwatch.daemon.store import Store
from costwatch.pricing import Pricer
from tests.daemon.conftest import make_event


def test_cancelled_request_is_dropped_and_writer_lives_on(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.duckdb", Pricer())
    gate = threading.Event()
    try:
        blocker = threading.Thread(target=store.call, args=(lambda cur: gate.wait(5),))
        blocker.start()
        cancelled = store.submit([make_event()])
        merged = [store.submit([make_event()]) for _ in range(3)]
        assert cancelled.cancel()  # e.g. the client went away before its turn
        gate.set()
        blocker.join()
        assert [f.result(5).accepted for f in merged] == [1, 1, 1]
        assert store.submit([make_event()]).result(5).accepted == 1
        count = store.read(lambda cur: cur.execute("SELECT count(*) FROM usage_events").fetchone()[0])
        assert count == 4 and store.pending_events == 0
        assert store.health() == []
    finally:
        store.close()


def test_failed_commit_is_reported_and_not_acknowledged(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.duckdb", Pricer())
    try:
        store.call(
            lambda cur: cur.execute("ALTER TABLE usage_events ADD COLUMN must_be_set INTEGER NOT NULL")
        )
        failed = store.submit([make_event()])
        try:
            failed.result(5)
        except Exception as exc:
            assert "must_be_set" in str(exc) or "NOT NULL" in str(exc)
        else:
            raise AssertionError("the commit should have failed")
        assert any("last commit failed" in reason for reason in store.health())
        store.call(lambda cur: cur.execute("ALTER TABLE usage_events DROP COLUMN must_be_set"))
        assert store.submit([make_event()]).result(5).accepted == 1  # recovers on the next commit
        assert store.health() == []
        count = store.read(lambda cur: cur.execute("SELECT count(*) FROM usage_events").fetchone()[0])
        assert count == 1
    finally:
        store.close()


def test_export_writes_whole_utc_days(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    from costwatch.daemon.queries import export_parquet

    store = Store(tmp_path / "s.duckdb", Pricer())
    day = 1_767_225_600.0  # 2026-01-01T00:00:00Z
    try:
        events = [make_event(ts=day + h * 3600, input_tokens=1, output_tokens=1) for h in range(30)]
        assert store.submit(events).result(5).accepted == 30
        result = store.read(lambda cur: export_parquet(cur, tmp_path / "out", day + 12 * 3600))
    finally:
        store.close()
    assert result["rows"] == 30  # since=noon of day 1 still exports all of day 1
    first = pq.read_table(tmp_path / "out" / "date=2026-01-01" / "usage_events.parquet")
    assert first.num_rows == 24 and "cost_usd" in first.column_names and "tags" in first.column_names


def test_writer_checkpoints_when_ingest_pauses(tmp_path: Path, monkeypatch) -> None:
    """Commits go to the WAL (the big autocheckpoint keeps checkpoints out of them); an idle writer folds it."""
    import time

    from costwatch.daemon import store as store_mod

    monkeypatch.setattr(store_mod, "IDLE_CHECKPOINT_S", 0.3)
    path = tmp_path / "c.duckdb"
    wal = Path(str(path) + ".wal")
    store = Store(path, Pricer())
    try:
        assert store.submit([make_event() for _ in range(500)]).result(10).accepted == 500
        assert wal.exists() and wal.stat().st_size > 0  # committed, not yet checkpointed
        deadline = time.monotonic() + 10
        while wal.exists() and wal.stat().st_size > 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not wal.exists() or wal.stat().st_size == 0
        count = store.read(lambda cur: cur.execute("SELECT count(*) FROM usage_events").fetchone()[0])
        assert count == 500
        assert store.submit([make_event()]).result(10).accepted == 1  # the writer goes on after it
    finally:
        store.close()


def test_wal_bound_and_memory_limit_settings_reach_duckdb(tmp_path: Path) -> None:
    import pytest
    from pydantic import ValidationError

    from costwatch.settings import DaemonSettings

    settings = DaemonSettings(
        state_dir=tmp_path, duckdb_wal_autocheckpoint="16MB", duckdb_memory_limit=" 300MB "
    )
    store = Store(
        tmp_path / "w.duckdb",
        Pricer(),
        memory_limit=settings.duckdb_memory_limit,
        wal_autocheckpoint=settings.duckdb_wal_autocheckpoint,
    )
    try:
        got = store.read(
            lambda cur: cur.execute(
                "SELECT current_setting('wal_autocheckpoint'), current_setting('memory_limit')"
            ).fetchone()
        )
        assert got == ("15.2 MiB", "286.1 MiB")  # DuckDB reports 16 MB and 300 MB in MiB
    finally:
        store.close()
    for bad in ("lots", "16 parsecs", "", "-1GB"):
        with pytest.raises(ValidationError, match="duckdb_wal_autocheckpoint"):
            DaemonSettings(state_dir=tmp_path, duckdb_wal_autocheckpoint=bad)
