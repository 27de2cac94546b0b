"""Loopback receivers for real deliveries: an SMTP sink (aiosmtpd) and an HTTP listener."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult


def free_port() -> int:
    """aiosmtpd's Controller refuses port 0, so pick one first."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait for another thread's I/O to land (not for simulated time to pass)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


class SMTPSink:
    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.port = free_port()
        self.controller = Controller(
            self,
            hostname="127.0.0.1",
            port=self.port,
            authenticator=lambda *args: AuthResult(success=True),
            auth_require_tls=False,
        )

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(
            {
                "from": envelope.mail_from,
                "to": envelope.rcpt_tos,
                "data": envelope.content.decode("utf8", "replace"),
            }
        )
        return "250 OK"

    def __enter__(self) -> SMTPSink:
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()


class HTTPSink:
    """Records every POST; replies 200 "ok" (what Slack webhooks answer)."""

    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                try:
                    parsed = json.loads(body)
                except ValueError:
                    parsed = body.decode("utf8", "replace")
                sink.posts.append({"path": self.path, "body": parsed})
                self.send_response(200)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> HTTPSink:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


class HangingListener:
    """Accepts connections and never answers: a channel that is up but stuck."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]

    def __enter__(self) -> HangingListener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()
