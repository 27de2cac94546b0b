"""The one daemon connection: kept alive, one retry on a stale socket, and the three failures told apart."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler

import pytest

from costwatch.connection import DaemonConnection, NotConnected
from tests.support.processes import LoopbackServer, free_port


class _Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    peers: list[int] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.peers.append(self.client_address[1])
        reply = self.path.encode() + b" " + body
        self.send_response(200)
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def echo() -> Iterator[LoopbackServer]:
    _Echo.peers = []
    server = LoopbackServer(_Echo)
    yield server
    server.close()


def test_requests_share_one_kept_alive_connection_under_the_url_prefix(echo: LoopbackServer) -> None:
    conn = DaemonConnection(echo.url + "/prefix/", 1.0)
    first = conn.request("POST", "/v1/a", b"1", {"Content-Length": "1"}, 2.0)
    second = conn.request("POST", "/v1/b", b"2", {"Content-Length": "1"}, 3.0)
    conn.close()
    assert first == (200, b"/prefix/v1/a 1")
    assert second == (200, b"/prefix/v1/b 2")
    assert len(set(_Echo.peers)) == 1  # the same client port: one connection


def test_a_connection_the_daemon_closed_is_reopened_once(echo: LoopbackServer) -> None:
    conn = DaemonConnection(echo.url, 1.0)
    assert conn.request("POST", "/x", b"1", {}, 2.0)[0] == 200
    conn._conn.sock.shutdown(socket.SHUT_RDWR)  # type: ignore[union-attr]  # as a daemon restart would
    assert conn.request("POST", "/y", b"2", {}, 2.0) == (200, b"/y 2")
    assert len(set(_Echo.peers)) == 2


def test_nothing_listening_is_not_connected() -> None:
    conn = DaemonConnection(f"http://127.0.0.1:{free_port()}", 1.0)
    with pytest.raises(NotConnected, match="refused"):
        conn.request("POST", "/x", b"", {}, 1.0)


def test_a_daemon_that_accepts_and_never_answers_times_out_after_sending() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    threading.Thread(target=lambda: held.append(listener.accept()[0]), daemon=True).start()
    conn = DaemonConnection(f"http://127.0.0.1:{listener.getsockname()[1]}", 1.0)
    try:
        with pytest.raises(TimeoutError) as raised:
            conn.request("POST", "/x", b"", {}, 0.2)
        assert not isinstance(raised.value, NotConnected)
    finally:
        listener.close()
        for sock in held:
            sock.close()


def test_interrupt_ends_a_read_blocked_in_another_thread() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    threading.Thread(target=lambda: held.append(listener.accept()[0]), daemon=True).start()
    conn = DaemonConnection(f"http://127.0.0.1:{listener.getsockname()[1]}", 1.0)
    outcome: list[BaseException] = []

    def blocked() -> None:
        try:
            conn.request("GET", "/poll", None, {}, 30.0)
        except BaseException as exc:
            outcome.append(exc)

    reader = threading.Thread(target=blocked)
    reader.start()
    try:
        for _ in range(200):
            if held and conn._conn is not None:
                break
            threading.Event().wait(0.01)
        threading.Event().wait(0.1)  # the request is sent and the read is blocked
        conn.interrupt()
        reader.join(5.0)
        assert not reader.is_alive()
        assert outcome and not isinstance(outcome[0], TimeoutError)
    finally:
        listener.close()
        for sock in held:
            sock.close()
