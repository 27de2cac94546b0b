"""Daemon fixtures: a real uvicorn server on a loopback port (port 0) in a thread."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from costwatch.daemon.server import Daemon, DaemonCore, RunningDaemon, start_in_thread
from costwatch.events import UsageEvent, encode_many, new_event_id
from costwatch.settings import DaemonSettings

StartDaemon = Callable[..., RunningDaemon]


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[StartDaemon]:
    """Start (and on teardown stop) daemons on tmp_path; call again after stop() to restart."""
    running: list[RunningDaemon] = []

    def start(**overrides: Any) -> RunningDaemon:
        values: dict[str, Any] = {"state_dir": tmp_path, "port": 0, "host": "127.0.0.1"}
        values.update(overrides)
        daemon = start_in_thread(Daemon(DaemonCore(DaemonSettings(**values))))
        running.append(daemon)
        return daemon

    yield start
    for daemon in running:
        daemon.stop()


@pytest.fixture
def daemon(start_daemon: StartDaemon) -> RunningDaemon:
    return start_daemon()


@pytest.fixture
def client(daemon: RunningDaemon) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=daemon.url, headers={"Authorization": f"Bearer {daemon.token}"}, timeout=30
    ) as c:
        yield c


def make_event(**fields: Any) -> UsageEvent:
    now = fields.pop("ts", None) or time.time()
    values: dict[str, Any] = {
        "id": new_event_id(now),
        "call_id": "call-1",
        "ts_start": now,
        "ts_end": now + 0.5,
        "provider": "openai",
        "operation": "chat",
        "model": "gpt-4o-mini",
        "usage_source": "provider",
        "app": "test-app",
    }
    values.update(fields)
    return UsageEvent(**values)


def post_events(client: httpx.Client, events: list[UsageEvent], **kwargs: Any) -> httpx.Response:
    return client.post("/v1/events", content=encode_many(events), **kwargs)


def sql(client: httpx.Client, query: str) -> list[list[Any]]:
    response = client.post("/v1/sql", json={"sql": query})
    assert response.status_code == 200, response.text
    return response.json()["rows"]
