"""Secrets are never persisted or exported.

Real SDK traffic whose prompts, metadata, ``user`` and tags carry an ``sk-…`` key, an
``Authorization: Bearer sk-…`` header value and a card number goes through an instrumented app
into a real daemon (part of it spooled while the daemon is down, then replayed). A budget rule
alerts per user through an Apprise ``json://`` channel (with a password in its URL) to a loopback
listener, and a second channel with a password points at a closed port (its failure gets logged).
Then every place costwatch writes is scanned: the spool files, the DuckDB file (+ WAL), the daemon
log, ``/metrics``, a Parquet export (``costwatch export --parquet``) and the alert messages.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from costwatch.instrumentation.spool import segment_lines
from tests.fakes.provider import FakeProvider
from tests.support.processes import DaemonProcess, free_port

pytestmark = pytest.mark.slow

API_KEY = "sk-proj-SECRETkey0123456789abcdefXYZ"
OTHER_KEY = "sk-ant-api03-LEAKme9876543210zyxwvu"
CARD = "4111 1111 1111 1111"
APPRISE_PASSWORD = "hunter2-apprise-Pw"
NEEDLES = [API_KEY, OTHER_KEY, CARD, CARD.replace(" ", ""), CARD.replace(" ", "-"), APPRISE_PASSWORD]

APP = """
import sys
import costwatch.autoinstrument
import costwatch, openai, anthropic

base, key, other, card = sys.argv[1:5]
secret_text = f"my key is {other}, Authorization: Bearer {key}, card {card}"
client = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)
extra = {"x-fake-response-model": "gpt-4o-mini-2024-07-18", "Authorization": f"Bearer {key}"}
with costwatch.attribute(user=f"user-{other}", tags={"note": secret_text, f"k-{card}": card}):
    for _ in range(3):
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": secret_text}],
                                       user=f"{other}", metadata={"auth": f"Bearer {key}", "card": card},
                                       extra_headers=extra)
    s = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": secret_text}],
                                       stream=True, stream_options={"include_usage": True}, extra_headers=extra)
    list(s)
# No attribution: the user comes from the request body.
client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "system", "content": secret_text}],
                               user=f"card {card} key {other}", extra_headers=extra)
a = anthropic.Anthropic(base_url=base, api_key=other, max_retries=0)
a.messages.create(model="claude-sonnet-4-0", max_tokens=10, messages=[{"role": "user", "content": secret_text}],
                  metadata={"user_id": f"{card}-{key}"},
                  extra_headers={"x-fake-response-model": "claude-sonnet-4-20250514"})
costwatch.flush(10)
"""


class _Listener(BaseHTTPRequestHandler):
    bodies: list[bytes]

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        self.bodies.append(self.rfile.read(length) + b"\n" + str(self.headers).encode())
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def listener() -> Iterator[tuple[str, list[bytes]]]:
    bodies: list[bytes] = []
    handler = type("Handler", (_Listener,), {"bodies": bodies})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}", bodies
    finally:
        server.shutdown()
        server.server_close()


def _find(data: bytes) -> list[str]:
    return [n for n in NEEDLES if n.encode() in data]


def _run_app(fake: FakeProvider, env: dict[str, str]) -> None:
    result = subprocess.run(
        [sys.executable, "-c", APP, fake.url, API_KEY, OTHER_KEY, CARD],
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert not _find(result.stderr.encode()), "the app's own costwatch logs leak a secret"


def _spool_text(path: Path) -> bytes:
    """A spool file as text: segments are zstd-compressed (a raw grep would see nothing)."""
    if path.name.endswith(".lock"):
        return path.read_bytes()
    return path.read_bytes() + b"\n" + b"\n".join(segment_lines(path))


def test_no_secret_in_store_spool_log_metrics_export_or_alerts(
    tmp_path: Path, listener: tuple[str, list[bytes]]
) -> None:
    address, alerts = listener
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "leak.yml").write_text(
        json.dumps(
            {
                "channels": {
                    "hook": {"url": f"json://alert:{APPRISE_PASSWORD}@{address}/hook"},
                    "dead": {"url": f"json://alert:{APPRISE_PASSWORD}@127.0.0.1:{free_port()}/dead"},
                },
                "rules": [
                    {
                        "name": "per-user-spend",
                        "kind": "budget",
                        "limit": 0.000001,
                        "window": "day",
                        "per": ["user"],
                        "notify": ["hook", "dead"],
                    }
                ],
            }
        )
    )
    state = tmp_path / "state"
    daemon = DaemonProcess(
        state, "--rules", str(rules), port=free_port(), COSTWATCH_EVALUATION_INTERVAL_S="0.5"
    )
    export_dir = tmp_path / "export"
    with FakeProvider() as fake:
        # 1. The daemon is down: events go to the spool. Scan it before anything replays it.
        state.mkdir(parents=True)
        _run_app(fake, daemon.app_env(app="leaky", COSTWATCH_EXIT_FLUSH_TIMEOUT_S="1"))
        spooled = b"\n".join(_spool_text(p) for p in (state / "spool").glob("*.ndjson"))
        assert spooled.count(b'"id"') >= 5, "the outage produced no spool to scan"
        assert not _find(spooled), _find(spooled)
        assert b"sk-[redacted]" in spooled or b"[card]" in spooled  # the scrubbed forms are there
        try:
            daemon.start()
            # 2. The daemon is up: new traffic, and the spool replays.
            _run_app(fake, daemon.app_env(app="leaky"))
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                n = daemon.sql("SELECT count(*) AS n FROM usage_events")[0]["n"]
                if n >= 10 and len(alerts) >= 1:
                    break
                time.sleep(0.2)
            assert n >= 10, n
            assert alerts, "the budget rule never alerted"
            time.sleep(1.5)  # let the per-user alerts and the failing channel's log lines land
            users = daemon.sql('SELECT DISTINCT "user" FROM usage_events WHERE "user" IS NOT NULL')
            assert users and all("redacted" in u["user"] or "[card]" in u["user"] for u in users), users
            metrics = httpx.get(daemon.url + "/metrics", timeout=5).content
            # Column values as SQL returns them (the file's bytes may be compressed: this cannot be).
            rows = json.dumps(daemon.sql("SELECT * FROM usage_events"), default=str).encode()
            other_tables = json.dumps(
                [
                    daemon.sql(f"SELECT * FROM {t['table_name']}")
                    for t in daemon.sql(
                        "SELECT table_name FROM duckdb_tables() WHERE table_name <> 'usage_events'"
                    )
                ],
                default=str,
            ).encode()
            export = subprocess.run(
                [sys.executable, "-m", "costwatch.cli", "export", "--parquet", str(export_dir)],
                env=daemon.env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert export.returncode == 0, export.stderr
        finally:
            assert daemon.stop() == 0
    places: dict[str, bytes] = {
        "metrics": metrics,
        "usage_events rows": rows,
        "other tables": other_tables,
        "alerts": b"\n".join(alerts),
        "daemon log": daemon.log.read_bytes(),
        "parquet": b"".join(p.read_bytes() for p in export_dir.rglob("*.parquet")),
        "duckdb": b"".join(p.read_bytes() for p in state.glob("costwatch.duckdb*")),
        "spool after": b"\n".join(_spool_text(p) for p in (state / "spool").glob("*")),
    }
    assert places["parquet"] and places["duckdb"]
    leaks = {place: _find(data) for place, data in places.items() if _find(data)}
    assert not leaks, leaks
    # The alert really carried per-user data (so the scan above was meaningful).
    assert b"redacted" in places["alerts"] or b"[card]" in places["alerts"], places["alerts"][:500]
    # The failing channel was logged, masked (Apprise privacy URL).
    assert b"json://alert:****@" in places["daemon log"]
