"""One HTTP attempt: raw facts captured on the call path, turned into a `UsageEvent` later.

`CallRecord` is what the patch hands to ``Emitter.submit``. On the app's path
it stores references and clock readings (stream chunks with timestamps); when
the attempt ends it copies out the request body, URL parts, the response status,
body and headers (a dict of bytes) and drops the SDK's objects, so queued records
keep nothing alive for the cyclic GC. ``to_event()`` runs on the emitter thread
and does everything else: JSON parsing, usage normalization, model derivation,
header parsing, the OpenTelemetry span.

``usage_source``: ``provider`` when the provider's usage was read (for streams:
the final usage — chat's include_usage chunk, Responses' terminal event,
Anthropic's ``message_delta``); ``estimated`` for a stream that ended without
that usage — abandoned by the app, broken, or complete but sent without usage
(an OpenAI-compatible host without ``include_usage``): what the stream did
report is kept (e.g. ``message_start``'s input), the rest is estimated from the
generated text and the request's prompt text (`costwatch.instrumentation.estimate`);
``missing`` otherwise (error responses, a JSON body without usage, a stream
whose request body is unknown), with every token field None — never 0.

Nothing here stores prompt or completion text: the event has only the fields
in `costwatch.events`, and ``user`` / tag values pass through `scrub()`.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import threading
import time
from collections import deque
from typing import Any

import msgspec

from costwatch.context import Attribution
from costwatch.events import UsageEvent, classify_status, local_host, new_event_id
from costwatch.instrumentation import anthropic as anthropic_usage
from costwatch.instrumentation import estimate, spans
from costwatch.instrumentation import openai as openai_usage
from costwatch.instrumentation.providers import (
    ANTHROPIC,
    AZURE_OPENAI,
    MESSAGES,
    Endpoint,
    StreamFacts,
    Usage,
    azure_deployment,
)
from costwatch.instrumentation.sse import iter_events

log = logging.getLogger("costwatch.instrumentation")

HEAD_BYTES = 1 << 20  # stream bytes kept from the start (first content event → TTFT, message_start)
TAIL_BYTES = 1 << 20  # and from the end (final usage) once a stream outgrows the head

_SECRET = re.compile(r"sk-[A-Za-z0-9_\-]{8,}")
_CARD = re.compile(r"(?<![\d])(?:\d[ -]?){12,18}\d(?![\d])")
_HOST = local_host()
_decode = msgspec.json.decode
_DecodeError = (msgspec.DecodeError, ValueError)


class _RequestFields(msgspec.Struct):
    """The request-body members an event needs; msgspec skips the rest (the prompt) unparsed."""

    model: Any = None
    user: Any = None
    stream: Any = None
    metadata: Any = None


class _ResponseFields(msgspec.Struct):
    """The response-body members an event needs; the generated text is skipped unparsed."""

    model: Any = None
    usage: Any = None
    service_tier: Any = None  # OpenAI: the tier that served the call (Anthropic's is in usage)


_request_decoder = msgspec.json.Decoder(_RequestFields)
_response_decoder = msgspec.json.Decoder(_ResponseFields)
_NO_REQUEST = _RequestFields()
_FieldsError = (msgspec.DecodeError, msgspec.ValidationError, ValueError)


def scrub(value: str | None, limit: int = 256) -> str | None:
    """Replace API-key-looking and card-number-looking substrings; cap the length."""
    if value is None:
        return None
    if type(value) is str and len(value) <= 256:
        return _redact_cached(value)[:limit]  # model names and users repeat
    return _redact(str(value))[:limit]


def _redact(value: str) -> str:
    return _CARD.sub("[card]", _SECRET.sub("sk-[redacted]", value))


_redact_cached = functools.lru_cache(maxsize=4096)(_redact)


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
        stream proxy → record → response) kept the app's garbage alive: the cyclic GC,
        which an uninstrumented SDK loop never triggers, ran dozens of collections per
        1,000 calls, a full one among them. What stays are bytes, str and a dict of bytes,
        which the GC does not track.
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

    def to_event(self) -> UsageEvent | None:
        self._detach()  # done by finish(); here for records built by hand
        req = _request_fields(self.request_body)
        endpoint = self.endpoint
        request_model = _str(req.model)
        if request_model is None and endpoint.provider == AZURE_OPENAI:
            request_model = azure_deployment(self.url_path)
        status: int | None = None
        error_class: str | None = None
        usage: Usage | None = None
        usage_source = "missing"
        response_model: str | None = None
        ttft_ms: float | None = None
        headers = self.headers
        sse = False

        if self.blocked:
            error_class = "blocked"
        else:
            answered = self.status_code is not None
            if answered:
                status = self.status_code if 100 <= self.status_code <= 599 else None  # type: ignore[operator]
                error_class = classify_status(status) if status is not None else "other"
            if self.exc_type is not None:
                error_class = classify_exception(self.exc_type)
            sse = self.stream and answered and _is_sse(headers.get(b"content-type"))
            if answered and status is not None and status < 400:
                if sse:
                    facts = self._scan_stream()
                    response_model = facts.response_model
                    usage = facts.usage
                    if facts.first_content_t is not None:
                        ttft_ms = _millis(facts.first_content_t - self.t0)
                    if facts.usage_final and _complete(usage):
                        usage_source = "provider"
                    else:  # abandoned, broken, or complete without usage: keep what is known, estimate the rest
                        usage, usage_source = _estimate(_json(self.request_body), facts, usage)
                elif self.exc_type is None:  # JSON (also read through send(stream=True), e.g. raw clients)
                    usage, response_model = self._parse_body()
                    if _complete(usage):
                        usage_source = "provider"
                    else:
                        usage = None

        attribution = self.attribution
        user = attribution.user if attribution is not None else None
        if user is None:
            user = _str(req.user) or (
                _str(req.metadata.get("user_id")) if type(req.metadata) is dict else None
            )
        tags = (
            {scrub(k, 128) or "": scrub(v, 512) or "" for k, v in list(attribution.tags.items())[:32]}
            if attribution is not None and attribution.tags
            else {}
        )
        wall0 = self.wall0
        event_id = new_event_id(wall0)
        call = self.call
        call_id = call.value or call.get(event_id, self.idempotency_key)
        response_model = scrub(response_model)
        request_model = scrub(request_model)
        if usage is None:
            usage = _NO_USAGE
        ratelimits = _ratelimits(headers, endpoint.provider == ANTHROPIC) if headers else _NO_RATELIMITS
        event = UsageEvent(
            id=event_id,
            call_id=call_id,
            ts_start=wall0,
            ts_end=wall0 + max(0.0, self.t1 - self.t0),
            provider=endpoint.provider,
            operation=endpoint.api,
            app=self.app,
            host=_HOST,
            pid=_pid_value,
            server_address=self.server_address,
            request_model=request_model,
            response_model=response_model,
            model=response_model or request_model,
            stream=req.stream is True or sse,  # asked for a stream, or got one
            http_status=status,
            error_class=error_class,  # type: ignore[arg-type]
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cached_input_tokens=usage.cached_input_tokens,
            cache_write_tokens=usage.cache_write_tokens,
            reasoning_tokens=usage.reasoning_tokens,
            usage_source=usage_source,  # type: ignore[arg-type]
            latency_ms=_millis(self.t1 - self.t0),  # streams: until the stream ended
            ttft_ms=ttft_ms,
            retry_attempt=_retry(self.retry),
            user=scrub(user),
            tags=tags,
            blocked=self.blocked,
            block_reason=self.block_reason[:1024] if self.block_reason else None,
            ratelimit_remaining_requests=ratelimits[0],
            ratelimit_remaining_tokens=ratelimits[1],
            ratelimit_limit_requests=ratelimits[2],
            ratelimit_limit_tokens=ratelimits[3],
            service_tier=usage.service_tier,
            speed=usage.speed,
            inference_geo=usage.inference_geo,
            cache_write_5m_tokens=usage.cache_write_5m_tokens,
            cache_write_1h_tokens=usage.cache_write_1h_tokens,
            provider_cost_usd=usage.cost_usd if usage_source == "provider" else None,
        )
        if spans.enabled():
            ids = spans.emit(msgspec.structs.asdict(event), self.otel_context, wall0)
            if ids is not None:
                event.trace_id, event.span_id = ids
        return event

    def _parse_body(self) -> tuple[Usage | None, str | None]:
        if self.stream:  # bytes came through the stream proxy; a truncated body is not parsed
            data = b"" if self.truncated else b"".join(c for c, _ in self.chunks_head)
        else:
            data = self.body
        if not data:
            return None, None
        # Typed decode of the few members needed (C speed); the generic path when the body
        # does not fit the typed shape, which `from_body` then reads as before.
        api = self.endpoint.api
        fast = anthropic_usage.from_bytes(data) if api == MESSAGES else openai_usage.from_bytes(api, data)
        if fast is not None:
            return fast
        body = _response_fields(data)
        if body is None:
            return None, None
        if self.endpoint.api == MESSAGES:
            return anthropic_usage.from_body(body)
        return openai_usage.from_body(self.endpoint.api, body)

    def _scan_stream(self) -> StreamFacts:
        api = self.endpoint.api
        if self.chunks_tail is None:  # the usual stream, at byte level
            if api == MESSAGES:
                facts = anthropic_usage.scan_chunks(self.chunks_head)
            else:
                facts = openai_usage.scan_chunks(api, self.chunks_head)
            if facts is not None:
                return facts
        if self.truncated and self.chunks_tail is not None:
            events = [*iter_events(self.chunks_head), *iter_events(self.chunks_tail)]
        else:
            events = list(iter_events([*self.chunks_head, *(self.chunks_tail or ())]))
        if api == MESSAGES:
            return anthropic_usage.scan_stream(events)
        return openai_usage.scan_stream(api, events)


_NO_USAGE = Usage(None, None, None, None, None)


def _request_fields(data: bytes) -> _RequestFields:
    if not data:
        return _NO_REQUEST
    try:
        return _request_decoder.decode(data)
    except _FieldsError:  # not JSON, or not an object
        return _NO_REQUEST


def _response_fields(data: bytes) -> dict[str, Any] | None:
    """``{"model", "usage", "service_tier"}`` of a JSON object body (the rest is skipped), or None."""
    if not data:
        return None
    try:
        body = _response_decoder.decode(data)
    except _FieldsError:
        return None
    return {"model": body.model, "usage": body.usage, "service_tier": body.service_tier}


_pid_value = os.getpid()


def _reset_pid() -> None:
    global _pid_value
    _pid_value = os.getpid()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_pid)


def classify_exception(exc_type: type) -> str:
    """timeout / connection / other, by the httpx(2) class hierarchy (either generation)."""
    names = {(c.__module__.split(".", 1)[0], c.__name__) for c in exc_type.__mro__}
    libs = {"httpx", "httpx2"}
    if any(mod in libs and name == "TimeoutException" for mod, name in names):
        return "timeout"
    if any(mod in libs and name in ("TransportError", "RequestError", "StreamError") for mod, name in names):
        return "connection"
    return "other"


def _complete(usage: Usage | None) -> bool:
    return usage is not None and usage.input_tokens is not None and usage.output_tokens is not None


def _estimate(req: dict, facts: StreamFacts, usage: Usage | None) -> tuple[Usage | None, str]:
    """A stream without (complete) final usage: keep what it reported, estimate the rest.

    Output: the provider's count when its final usage had one, else the generated text
    (never below a partial count such as ``message_start``'s). Input: the stream's own
    count when it had one (``message_start``), else the request's prompt text.
    """
    known = usage if usage is not None else _NO_USAGE
    input_tokens = known.input_tokens
    if input_tokens is None:
        input_tokens = estimate.input_tokens(req)
    if input_tokens is None:
        return None, "missing"
    if facts.usage_final and known.output_tokens is not None:
        output_tokens = known.output_tokens
    else:
        output_tokens = max(estimate.tokens_from_chars(facts.text_chars), known.output_tokens or 0)
    reasoning = known.reasoning_tokens if facts.usage_final else None
    # What a partial usage says (cache reads and writes, tier, speed, geography) still holds;
    # a cost reported for the whole call cannot have been seen.
    usage = known._replace(
        input_tokens=input_tokens, output_tokens=output_tokens, reasoning_tokens=reasoning, cost_usd=None
    )
    return usage, "estimated"


# The rate-limit response headers an event reads, in the order of the event's four fields.
_RATELIMIT_HEADERS = {
    True: (
        b"anthropic-ratelimit-requests-remaining",
        b"anthropic-ratelimit-tokens-remaining",
        b"anthropic-ratelimit-requests-limit",
        b"anthropic-ratelimit-tokens-limit",
    ),
    False: (
        b"x-ratelimit-remaining-requests",
        b"x-ratelimit-remaining-tokens",
        b"x-ratelimit-limit-requests",
        b"x-ratelimit-limit-tokens",
    ),
}
_REPEATED = b""  # marks a header sent twice (joined "a, b" it is not a number)
_NO_RATELIMITS: list[int | None] = [None, None, None, None]


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


def _ratelimits(headers: dict[bytes, bytes], anthropic: bool) -> list[int | None]:
    """The four rate-limit counts (None: absent, repeated or not a count).

    Unrolled, with the usual value (plain digits, below the cap) inline: once per event.
    """
    get = headers.get
    remaining_requests, remaining_tokens, limit_requests, limit_tokens = _RATELIMIT_HEADERS[anthropic]
    a, b, c, d = get(remaining_requests), get(remaining_tokens), get(limit_requests), get(limit_tokens)
    return [
        int(a) if a and a.isdigit() and len(a) < 13 else _count(a),
        int(b) if b and b.isdigit() and len(b) < 13 else _count(b),
        int(c) if c and c.isdigit() and len(c) < 13 else _count(c),
        int(d) if d and d.isdigit() and len(d) < 13 else _count(d),
    ]


def _count(value: bytes | None) -> int | None:
    if not value:
        return None
    value = value.strip()
    return min(int(value), 10**12) if value.isdigit() else None


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


def _json(data: bytes) -> dict:
    if not data:
        return {}
    try:
        value = _decode(data)
    except _DecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _is_sse(content_type: bytes | None) -> bool:
    """An event-stream answer (JSON and error answers are not; no content-type is taken as one)."""
    return not content_type or b"text/event-stream" in content_type.lower()


def _millis(seconds: float) -> float:
    """Milliseconds within the schema's bounds (0 … one day)."""
    return min(max(0.0, seconds * 1000), 86_400_000.0)


def _retry(value: str | None) -> int:
    if value is not None and value.isdigit():
        return min(int(value), 1000)
    return 0


def _server_address(url: Any) -> str:
    """``host[:port]`` from the parsed URL (httpx(2)'s ``host``/``port`` are properties over it)."""
    ref = getattr(url, "_uri_reference", None)
    if ref is None or "xn--" in ref.host:  # an IDNA host: `URL.host` decodes it
        host, port = url.host, url.port
    else:
        host, port = ref.host, ref.port
    return f"{host}:{port}" if port else host


__all__ = ["CallId", "CallRecord", "classify_exception", "guard", "scrub"]
