"""One HTTP attempt: raw facts captured on the call path, turned into a `UsageEvent` later.

`CallRecord` is what the patch hands to ``Emitter.submit``. On the app's path
it stores references and clock readings (stream chunks with timestamps); when
the attempt ends it copies out the request body, URL parts, the response status,
body and headers (a dict of bytes) and drops the SDK's objects, so queued records
keep nothing alive for the cyclic GC. ``to_event()`` runs on the emitter thread
and does everything else (`costwatch.instrumentation.convert`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any

from costwatch.context import Attribution
from costwatch.instrumentation import convert
from costwatch.instrumentation.providers import Endpoint

__all__ = ["CallId", "CallRecord", "Guard", "guard"]

log = logging.getLogger("costwatch.instrumentation")

HEAD_BYTES = 1 << 20  # stream bytes kept from the start (first content event → TTFT, message_start)
TAIL_BYTES = 1 << 20  # and from the end (final usage) once a stream outgrows the head


class Guard:
    """Our own failures: swallowed, counted by place, logged once per place."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def report(self, where: str) -> None:
        with self._lock:
            first = where not in self.counts
            self.counts[where] = self.counts.get(where, 0) + 1
        if first:
            log.warning("costwatch: internal error in %s (counted, logged once)", where, exc_info=True)


guard = Guard()


class CallId:
    """Shared by every attempt of one logical SDK call; the id string is made lazily off the hot path."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value: str | None = None

    def get(self, first_event_id: str, idempotency_key: str | None = None) -> str:
        """The call's id: its Idempotency-Key, else the id of its first attempt's event."""
        if self.value is None:
            self.value = idempotency_key[:64] if idempotency_key else first_event_id
        return self.value


class CallRecord:
    """Raw facts of one attempt. Attributes are filled by the patch and the stream proxy."""

    __slots__ = (
        "_once",
        "_submit",
        "app",
        "attribution",
        "block_reason",
        "blocked",
        "body",
        "call",
        "chunks_head",
        "chunks_tail",
        "end_reason",
        "endpoint",
        "exc_type",
        "filter",
        "head_bytes",
        "headers",
        "idempotency_key",
        "otel_context",
        "request",
        "request_body",
        "response",
        "retry",
        "server_address",
        "status_code",
        "stream",
        "t0",
        "t1",
        "tail_bytes",
        "truncated",
        "url_path",
        "wall0",
    )

    def __init__(
        self,
        endpoint: Endpoint,
        request: Any,
        stream: bool,
        app: str,
        call: CallId,
        retry: str | None,
        attribution: Attribution | None,
        otel_context: Any,
        submit: Any,
    ) -> None:
        self.wall0 = time.time()
        self.t0 = time.perf_counter()
        self.t1 = self.t0
        self.endpoint = endpoint
        self.request = request
        self.stream = stream
        self.app = app
        self.call = call
        self.retry = retry
        self.attribution = attribution
        self.otel_context = otel_context
        self._submit = submit
        self.response: Any = None
        self.exc_type: type | None = None
        self.blocked = False
        self.block_reason: str | None = None
        self.chunks_head: list[tuple[bytes, float]] = []
        self.chunks_tail: deque[tuple[bytes, float]] | None = None
        self.head_bytes = 0
        self.tail_bytes = 0
        self.truncated = False
        self.end_reason = "complete"
        self.filter: Any = None
        self._once = [True]  # list.pop() is atomic: the latch holds across threads (close vs. GC)
        # Filled from request / response by `_detach` when the attempt ends:
        self.request_body = b""
        self.server_address = ""
        self.url_path = ""
        self.idempotency_key: str | None = None
        self.status_code: int | None = None  # None: no response (an exception, or blocked)
        self.headers: dict[bytes, bytes] = {}  # response headers by lower-case name
        self.body = b""  # a non-streamed response body

    # ---- call path -------------------------------------------------------------------------

    def add_chunk(self, chunk: bytes) -> None:
        """Keep a reference and a timestamp; bounded: head, then a sliding tail."""
        try:
            t = time.perf_counter()
            if self.chunks_tail is None and self.head_bytes + len(chunk) <= HEAD_BYTES:
                self.chunks_head.append((chunk, t))
                self.head_bytes += len(chunk)
                return
            tail = self.chunks_tail
            if tail is None:
                tail = self.chunks_tail = deque()
            tail.append((chunk, t))
            self.tail_bytes += len(chunk)
            while self.tail_bytes > TAIL_BYTES and len(tail) > 1:
                self.tail_bytes -= len(tail.popleft()[0])
                self.truncated = True
        except Exception:
            guard.report("add_chunk")

    def finish(self, reason: str = "complete", exc_type: type | None = None) -> None:
        """The single latch every ending goes through (exhausted, error, close, GC)."""
        try:
            self._once.pop()
        except IndexError:
            return
        try:
            self.t1 = time.perf_counter()
            self.end_reason = reason
            if exc_type is not None:
                self.exc_type = exc_type
            self._detach()
            self._submit(self)
        except Exception:
            guard.report("finish")

    def _detach(self) -> None:
        """Copy out the few values `to_event` reads and drop the SDK's request and response.

        Holding those objects until the emitter's next tick (and the cycle response →
        stream proxy → record → response) would keep the app's garbage alive and make the
        cyclic GC, which an uninstrumented SDK loop never triggers, collect (full
        collections among them). What stays are bytes, str and a dict of bytes, which the
        GC does not track.
        """
        request = self.request
        if request is not None:
            self.request = None
            self.request_body = _request_body(request)
            url = request.url
            self.server_address = _server_address(url)[:256]
            if not self.url_path:  # the patch stores the path it recognized
                self.url_path = url.path
            self.idempotency_key = _request_header(request.headers, b"idempotency-key")
        response = self.response
        if response is not None:
            self.response = None
            self.status_code = response.status_code
            self.headers = _header_values(response.headers)
            if not self.stream:
                self.body = _response_body(response)

    # ---- emitter thread --------------------------------------------------------------------

    # A plain function in the class body is a method: ``record.to_event()`` costs what a
    # method defined here would, and the conversion stays with its decoders.
    to_event = convert.to_event


_REPEATED = b""  # marks a header sent twice (joined "a, b" it is not a number)


def _header_values(headers: Any) -> dict[bytes, bytes]:
    """Response headers by lower-case name, from the raw list in one C-speed pass (call path).

    A dict of bytes is not tracked by the GC. A name sent twice maps to `_REPEATED`
    (content-type: its first value).
    """
    items = getattr(headers, "_list", None)  # httpx(2): (raw key, lower-case key, value) triples
    if type(items) is list and (not items or len(items[0]) == 3):
        values = {lower: value for _, lower, value in items}
        if len(values) == len(items):
            return values
        pairs = [(lower, value) for _, lower, value in items]
    elif getattr(headers, "raw", None) is not None:
        pairs = [(key.lower(), value) for key, value in headers.raw]
    else:  # a plain mapping
        pairs = [(_latin1(key).lower(), _latin1(value)) for key, value in headers.items()]
    values = {}
    for lower, value in pairs:
        if lower not in values:
            values[lower] = value
        elif lower != b"content-type":
            values[lower] = _REPEATED
    return values


def _latin1(value: object) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode("latin-1", "replace")


def _request_header(headers: Any, name: bytes) -> str | None:
    """One request header by lower-case name, from the raw list (no case-insensitive scan)."""
    items = getattr(headers, "_list", None)
    if type(items) is list and (not items or len(items[0]) == 3):
        for _, lower, value in items:
            if lower == name:
                return value.decode("latin-1")
        return None
    value = headers.get(name.decode())
    return value.decode("latin-1") if isinstance(value, bytes) else value


def _request_body(request: Any) -> bytes:
    try:
        return request.content
    except Exception:  # a streaming request body that was never read
        return b""


def _response_body(response: Any) -> bytes:
    try:
        return response.content
    except Exception:  # not read: parsed as no body
        return b""


def _server_address(url: Any) -> str:
    """``host[:port]`` from the parsed URL (httpx(2)'s ``host``/``port`` are properties over it)."""
    ref = getattr(url, "_uri_reference", None)
    if ref is None or "xn--" in ref.host:  # an IDNA host: `URL.host` decodes it
        host, port = url.host, url.port
    else:
        host, port = ref.host, ref.port
    return f"{host}:{port}" if port else host
