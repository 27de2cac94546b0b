"""Fixtures for the rules engine: a real DuckDB file, a driven clock, fake registry and notifier."""

from __future__ import annotations

import itertools
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import duckdb
import pytest

from costwatch.daemon.schema import MIGRATIONS
from costwatch.protocol import KillSwitch

UTC = timezone.utc
_ids = itertools.count(1)


class Clock:
    """The engine's `now()`; tests move it, nothing sleeps."""

    def __init__(self, start: datetime) -> None:
        self.t = start

    def __call__(self) -> datetime:
        return self.t

    def advance(self, **delta: float) -> datetime:
        self.t += timedelta(**delta)
        return self.t

    def set(self, t: datetime) -> datetime:
        self.t = t
        return t


@dataclass
class FakeRegistry:
    """Satisfies KillSwitchRegistryProtocol; remembers every call."""

    engaged: list[dict[str, Any]] = field(default_factory=list)
    lifted: list[str] = field(default_factory=list)

    def engage(
        self, scope: dict[str, str], reason: str, source: str, expires_at: float | None = None
    ) -> KillSwitch:
        self.engaged.append(
            {"scope": dict(scope), "reason": reason, "source": source, "expires_at": expires_at}
        )
        return KillSwitch(
            id=str(len(self.engaged)), scope=scope, reason=reason, source=source, expires_at=expires_at
        )

    def lift_by_source(self, source: str) -> int:
        self.lifted.append(source)
        return 1


@dataclass
class FakeNotifier:
    """Records what the engine asked to send."""

    sent: list[dict[str, Any]] = field(default_factory=list)

    def send(self, channels: list[str], title: str, body: str, notify_type: str = "warning") -> None:
        self.sent.append({"channels": list(channels), "title": title, "body": body, "type": notify_type})


class DB:
    """A migrated DuckDB file plus an event writer."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.con = duckdb.connect(str(path))
        for _, migration in MIGRATIONS:
            for statement in migration():
                self.con.execute(statement)

    def connect(self) -> duckdb.DuckDBPyConnection:
        return self.con.cursor()

    def add(self, ts: datetime, n: int = 1, **fields: Any) -> None:
        """Insert `n` events at `ts` (defaults: priced OpenAI chat call, 200, $0 unless cost_usd given)."""
        row = {
            "call_id": "c",
            "ts_end": ts,
            "provider": "openai",
            "operation": "chat",
            "app": "chat-api",
            "model": "gpt-4o",
            "user": None,
            "http_status": 200,
            "error_class": None,
            "input_tokens": 100,
            "output_tokens": 50,
            "usage_source": "provider",
            "latency_ms": 100.0,
            "ttft_ms": None,
            "blocked": False,
            "cost_usd": 0.0,
            "priced": True,
            "ingested_at": ts,
        }
        row.update(fields)
        cols = ["id", "ts_start", *row]
        names = ", ".join('"' + c + '"' for c in cols)
        sql = f"INSERT INTO usage_events ({names}) VALUES ({', '.join('?' for _ in cols)})"
        self.con.executemany(sql, [[f"e{next(_ids)}", ts, *row.values()] for _ in range(n)])

    def alert_rows(self) -> list[tuple]:
        return self.con.execute(
            "SELECT rule, scope, threshold, state, dry_run FROM alert_events ORDER BY ts, rowid"
        ).fetchall()


@pytest.fixture
def db(tmp_path: Path) -> Iterator[DB]:
    database = DB(tmp_path / "costwatch.duckdb")
    yield database
    database.con.close()


@pytest.fixture
def registry() -> FakeRegistry:
    return FakeRegistry()


@pytest.fixture
def notifier() -> FakeNotifier:
    return FakeNotifier()


def write_rules(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path
