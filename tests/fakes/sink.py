"""A loopback stand-in for the costwatch daemon's client-facing API, for tests and benchmarks.

Implements ``POST /v1/events`` (validates with ``costwatch.events.decode``, dedupes
by id, replies an ``IngestReply`` carrying ``killswitch``) and ``GET /v1/killswitch``.
Faults are switched at run time: ``mode`` = ``"ok" | "500" | "garbage" | "hang" | "401"``,
``reject_ids`` answers 422 with ``rejected`` entries, ``stop()``/``start()`` take the
port down and back up (open keep-alive connections are cut too).

    with FakeDaemon() as sink:
        settings = ClientSettings(url=sink.url, ...)
        ...
        sink.wait_for(lambda: len(sink.events) >= 10)
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import msgspec

from costwatch.events import UsageEvent, decode
from costwatch.protocol import IngestReply, KillSwitch, KillSwitchState

__all__ = ["FakeDaemon", "Post"]


class Post(msgspec.Struct):
    """One POST /v1/events as the sink saw it."""

    status: int
    ids: list[str]
    headers: dict[str, str]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    sink: FakeDaemon


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the real daemon
    # Status line, headers and body in one send, as uvicorn does: written separately, Nagle
    # and the client's delayed ACK held every reply ~40 ms (which the overhead bench's
    # end-of-block flush counted as costwatch's time).
    wbufsize = -1
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def setup(self) -> None:
        super().setup()
        self.server.sink._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.sink._track(self.connection, add=False)

    def do_GET(self) -> None:
        sink = self.server.sink
        path = self.path.split("?", 1)[0].rstrip("/")  # a long poll adds ?version=…&wait=…
        if path.endswith("/v1/killswitch"):
            sink.polls += 1
            if not self._fault(sink):
                return
            self._reply(200, msgspec.json.encode(sink.killswitch))
        elif path.endswith("/healthz"):
            self._reply(200, b'{"ok":true}')
        else:
            self._reply(404, b'{"error":"not found"}')

    def do_POST(self) -> None:
        sink = self.server.sink
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if not self.path.rstrip("/").endswith("/v1/events"):
            self._reply(404, b'{"error":"not found"}')
            return
        with sink.lock:
            sink.requests += 1
            sink.request_headers.append(dict(self.headers.items()))
        if not self._fault(sink):
            with sink.lock:
                sink.posts.append(Post(sink.last_status, [], dict(self.headers.items())))
            return
        status, reply, ids = sink._ingest(body)
        with sink.lock:
            sink.posts.append(Post(status, ids, dict(self.headers.items())))
        self._reply(status, msgspec.json.encode(reply))

    def _fault(self, sink: FakeDaemon) -> bool:
        """Apply the configured fault; False when the request was answered (or dropped) by it."""
        if sink.token is not None and self.headers.get("Authorization") != f"Bearer {sink.token}":
            sink.last_status = 401
            self._reply(401, b'{"error":"unauthorized"}')
            return False
        mode = sink.mode
        if mode == "ok":
            return True
        if mode == "hang":
            sink.last_status = 0
            sink._release.wait(sink.hang_s)
            self.close_connection = True
            return False
        status = {"500": 500, "garbage": 200, "401": 401}.get(mode, 500)
        sink.last_status = status
        self._reply(status, b"\x00<html>not json" if mode == "garbage" else b'{"error":"fault"}')
        return False

    def _reply(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class FakeDaemon:
    """Loopback HTTP sink on an ephemeral port; every attribute below is safe to set from a test."""

    def __init__(self, token: str | None = None, port: int = 0, keep_events: bool = True) -> None:
        self.token = token
        self.keep_events = keep_events  # False for long benchmarks: count, do not keep
        self.mode = "ok"
        self.hang_s = 30.0
        self.killswitch = KillSwitchState()
        self.reject_ids: set[str] = set()
        self.max_batch: int | None = None  # bigger batches get 413, like the daemon's max_batch_events
        self.lock = threading.Lock()
        self.events: list[UsageEvent] = []  # stored, in arrival order, duplicates excluded
        self.seen: dict[str, int] = {}  # id -> times received (duplicates included)
        self.posts: list[Post] = []
        self.request_headers: list[dict[str, str]] = []
        self.requests = 0
        self.polls = 0
        self.duplicates = 0
        self.stored = 0  # events stored (duplicates excluded), also when keep_events is False
        self.last_status = 0
        self.port = port
        self._release = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._conns: set[socket.socket] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeDaemon:
        """Listen (again) on ``port``; the first start picks a free port."""
        server = _Server(("127.0.0.1", self.port), _Handler)
        server.sink = self
        self.port = server.server_address[1]
        self._release.clear()
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and cut every open connection: the daemon is down."""
        server, self._server = self._server, None
        if server is None:
            return
        self._release.set()
        server.shutdown()
        server.server_close()
        with self.lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def __enter__(self) -> FakeDaemon:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- state helpers ------------------------------------------------------------------------

    def engage(self, scope: dict[str, str] | None = None, reason: str = "test", **kw: Any) -> KillSwitch:
        kw.setdefault("engaged_at", time.time())
        switch = KillSwitch(id=f"ks-{self.killswitch.version + 1}", scope=scope or {}, reason=reason, **kw)
        self.killswitch = KillSwitchState(
            engaged=[*self.killswitch.engaged, switch], version=self.killswitch.version + 1
        )
        return switch

    def resume(self) -> None:
        self.killswitch = KillSwitchState(engaged=[], version=self.killswitch.version + 1)

    def release_hangs(self) -> None:
        """Let requests stuck in ``mode = "hang"`` finish (their connection is closed unanswered)."""
        self._release.set()

    def ids(self) -> list[str]:
        with self.lock:
            return [e.id for e in self.events]

    def dropped_reported(self) -> dict[str, int]:
        """Sum of every ``x-costwatch-dropped`` header on accepted posts."""
        totals: dict[str, int] = {}
        with self.lock:
            posts = list(self.posts)
        for post in posts:
            if not 200 <= post.status < 300:
                continue
            value = next((v for k, v in post.headers.items() if k.lower() == "x-costwatch-dropped"), "")
            for part in filter(None, value.split(",")):
                reason, _, n = part.partition("=")
                totals[reason] = totals.get(reason, 0) + int(n)
        return totals

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0, interval: float = 0.01) -> bool:
        """Poll ``predicate`` until true or ``timeout``: tests wait on facts, not on sleeps."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(interval)
        return predicate()

    # -- internals ----------------------------------------------------------------------------

    def _track(self, conn: socket.socket, add: bool) -> None:
        with self.lock:
            (self._conns.add if add else self._conns.discard)(conn)

    def _ingest(self, body: bytes) -> tuple[int, IngestReply, list[str]]:
        try:
            raws = msgspec.json.decode(body, type=list[msgspec.Raw])
        except msgspec.DecodeError as exc:
            return 400, IngestReply(accepted=0, rejected=[{"index": -1, "error": str(exc)}]), []
        if not self.keep_events:  # benchmark mode: validate nothing beyond the array, keep counts only
            with self.lock:
                self.stored += len(raws)
            return 200, IngestReply(accepted=len(raws), killswitch=self.killswitch), []
        if self.max_batch is not None and len(raws) > self.max_batch:
            return 413, IngestReply(accepted=0), []
        accepted = duplicates = 0
        rejected: list[dict] = []
        ids: list[str] = []
        with self.lock:
            for index, raw in enumerate(raws):
                try:
                    event = decode(bytes(raw))
                except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                    rejected.append({"index": index, "error": str(exc)})
                    continue
                if event.id in self.reject_ids:
                    rejected.append({"index": index, "id": event.id, "error": "rejected by test"})
                    continue
                ids.append(event.id)
                self.seen[event.id] = self.seen.get(event.id, 0) + 1
                if self.seen[event.id] > 1:
                    duplicates += 1
                    self.duplicates += 1
                    continue
                accepted += 1
                self.stored += 1
                if self.keep_events:
                    self.events.append(event)
            reply = IngestReply(
                accepted=accepted, duplicates=duplicates, rejected=rejected, killswitch=self.killswitch
            )
        return (422 if rejected else 200), reply, ids


def main(argv: list[str] | None = None) -> None:
    """``python -m tests.fakes.sink [--port N] [--token T] [--count-only]``: a sink in its own process."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--token")
    parser.add_argument("--count-only", action="store_true", help="do not keep or validate events")
    args = parser.parse_args(argv)
    daemon = FakeDaemon(token=args.token, port=args.port, keep_events=not args.count_only).start()
    print(daemon.url, flush=True)
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        daemon.stop()


if __name__ == "__main__":
    main()
