"""An in-process daemon (no socket) for fuzzing: the real Starlette app over `httpx.ASGITransport`."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from costwatch.daemon.server import Daemon, DaemonCore
from costwatch.settings import DaemonSettings


@dataclass
class InProcess:
    """``call(method, path, **kw)`` runs one request through the ASGI app on a private event loop."""

    daemon: Daemon
    loop: asyncio.AbstractEventLoop
    client: httpx.AsyncClient

    def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return self.loop.run_until_complete(self.client.request(method, path, **kwargs))

    def rows(self) -> int:
        return self.daemon.store.read(
            lambda cur: cur.execute("SELECT count(*) FROM usage_events").fetchone()[0]
        )

    def scalar(self, query: str) -> Any:
        return self.daemon.store.read(lambda cur: cur.execute(query).fetchone()[0])


def in_process_daemon(state_dir: Path, **overrides: Any) -> InProcess:
    settings = DaemonSettings(state_dir=state_dir, port=0, **overrides)
    daemon = Daemon(DaemonCore(settings))
    loop = asyncio.new_event_loop()
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=daemon.app),
        base_url="http://127.0.0.1:7707",
        headers={"Authorization": f"Bearer {daemon.token}"},
        timeout=30,
    )
    return InProcess(daemon, loop, client)


@pytest.fixture(scope="module")
def asgi_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcess]:
    """Small limits so the fuzzers reach the 413 paths: 4 KiB bodies, 4 events a batch."""
    d = in_process_daemon(tmp_path_factory.mktemp("fuzz"), max_body_bytes=4096, max_batch_events=4)
    try:
        yield d
    finally:
        d.loop.run_until_complete(d.client.aclose())
        d.loop.close()
        d.daemon.close()
