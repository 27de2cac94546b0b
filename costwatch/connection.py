"""The one HTTP client every costwatch process uses to talk to its daemon.

The app's emitter, its limits thread and the CLI all send small JSON requests to the same
daemon and need the same things: a kept-alive connection (a connect per event batch would
cost more than the batch), one retry when the daemon closed that connection meanwhile,
and a clear difference between "nothing answered" (the request surely did not take
effect) and "sent, but no answer came" (it may have). The stdlib ``http.client`` on
purpose: ``httpx``/``httpx2`` are what costwatch patches, and the app must not pay for
importing them; ``http.client`` is imported on the first request, in a background thread.
"""

from __future__ import annotations

from urllib.parse import urlsplit

TYPE_CHECKING = False  # not `typing`'s: the CLI's light path does not import typing
if TYPE_CHECKING:
    import http.client


class NotConnected(OSError):
    """Connecting failed: nothing was sent, so the request did not take effect."""


class BadAnswer(OSError):
    """The daemon's answer was not HTTP (``http.client.HTTPException``, an OSError here)."""


class DaemonConnection:
    """A kept-alive connection to the daemon at ``url``; not thread-safe (one per thread)."""

    def __init__(self, url: str, connect_timeout_s: float) -> None:
        parts = urlsplit(url)
        self.https = parts.scheme == "https"
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if self.https else 80)
        self.base_path = parts.path.rstrip("/")
        self.connect_timeout_s = connect_timeout_s
        self._conn: http.client.HTTPConnection | None = None
        self._timeout: float | None = None

    def request(
        self, method: str, path: str, body: bytes | None, headers: dict[str, str], timeout: float
    ) -> tuple[int, bytes]:
        """(status, body) of one request; ``timeout`` bounds each read once connected.

        Raises `NotConnected` when nothing answered, `TimeoutError` when the daemon
        accepted the request but did not answer in time, `BadAnswer` or another `OSError`
        for a broken exchange: callers catch OSError and never import ``http.client``.
        A kept-alive connection the daemon closed meanwhile is reopened and the request
        sent once more.
        """
        import http.client

        for attempt in (0, 1):
            reused = self._conn is not None
            conn = self._connected()
            if timeout != self._timeout:
                conn.sock.settimeout(timeout)  # type: ignore[union-attr]
                self._timeout = timeout
            try:
                conn.request(method, self.base_path + path, body=body, headers=headers)
                response = conn.getresponse()
                return response.status, response.read()
            except (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected):
                self.close()
                if attempt or not reused:
                    raise
            except http.client.HTTPException as exc:
                self.close()
                raise BadAnswer(repr(exc)) from exc
            except BaseException:
                self.close()
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _connected(self) -> http.client.HTTPConnection:
        conn = self._conn
        if conn is not None and conn.sock is not None:
            return conn
        import http.client

        cls = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
        conn = cls(self.host, self.port, timeout=self.connect_timeout_s)
        try:
            conn.connect()
        except OSError as exc:
            conn.close()
            raise NotConnected(exc.strerror or str(exc) or type(exc).__name__) from exc
        self._conn, self._timeout = conn, None
        return conn

    def interrupt(self) -> None:
        """End a read another thread is blocked in (shutting the socket down wakes it)."""
        conn = self._conn
        sock = conn.sock if conn is not None else None
        if sock is not None:
            import socket

            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
