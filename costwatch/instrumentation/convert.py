"""A finished `CallRecord` turned into a `UsageEvent`: runs on the emitter thread.

`to_event` does everything the call path put off: JSON parsing (typed decodes of the few
members needed), usage normalization per provider, model derivation, rate-limit header
parsing, estimation, and the OpenTelemetry span.

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
import os
import re
from typing import Any

import msgspec

from costwatch.events import UsageEvent, classify_status, local_host, new_event_id
from costwatch.instrumentation import anthropic as anthropic_usage
from costwatch.instrumentation import estimate, openai_stream, spans
from costwatch.instrumentation import openai as openai_usage
from costwatch.instrumentation.providers import (
    ANTHROPIC,
    AZURE_OPENAI,
    MESSAGES,
    StreamFacts,
    Usage,
    azure_deployment,
)
from costwatch.instrumentation.sse import iter_events

__all__ = ["classify_exception", "scrub", "to_event"]

_SECRET = re.compile(r"sk-[A-Za-z0-9_\-]{8,}")
_CARD = re.compile(r"(?<![\d])(?:\d[ -]?){12,18}\d(?![\d])")
_HOST = local_host()


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


def to_event(record: Any) -> UsageEvent | None:
    """The `UsageEvent` of a finished `CallRecord` (its ``to_event`` method), or None.

    ``record`` is not annotated as `CallRecord`: `costwatch.instrumentation.record` imports
    this module to make the function its method.
    """
    record._detach()  # done by finish(); here for records built by hand
    req = _request_fields(record.request_body)
    endpoint = record.endpoint
    request_model = _str(req.model)
    if request_model is None and endpoint.provider == AZURE_OPENAI:
        request_model = azure_deployment(record.url_path)
    status: int | None = None
    error_class: str | None = None
    usage: Usage | None = None
    usage_source = "missing"
    response_model: str | None = None
    ttft_ms: float | None = None
    headers = record.headers
    sse = False

    if record.blocked:
        error_class = "blocked"
    else:
        answered = record.status_code is not None
        if answered:
            status = record.status_code if 100 <= record.status_code <= 599 else None  # type: ignore[operator]
            error_class = classify_status(status) if status is not None else "other"
        if record.exc_type is not None:
            error_class = classify_exception(record.exc_type)
        sse = record.stream and answered and _is_sse(headers.get(b"content-type"))
        if answered and status is not None and status < 400:
            if sse:
                facts = _scan_stream(record)
                response_model = facts.response_model
                usage = facts.usage
                if facts.first_content_t is not None:
                    ttft_ms = _millis(facts.first_content_t - record.t0)
                if facts.usage_final and _complete(usage):
                    usage_source = "provider"
                else:  # abandoned, broken, or complete without usage: keep what is known, estimate the rest
                    usage, usage_source = estimate.stream_usage(record.request_body, facts, usage)
            elif record.exc_type is None:  # JSON (also read through send(stream=True), e.g. raw clients)
                usage, response_model = _parse_body(record)
                if _complete(usage):
                    usage_source = "provider"
                else:
                    usage = None

    attribution = record.attribution
    user = attribution.user if attribution is not None else None
    if user is None:
        user = _str(req.user) or (_str(req.metadata.get("user_id")) if type(req.metadata) is dict else None)
    tags = (
        {scrub(k, 128) or "": scrub(v, 512) or "" for k, v in list(attribution.tags.items())[:32]}
        if attribution is not None and attribution.tags
        else {}
    )
    wall0 = record.wall0
    event_id = new_event_id(wall0)
    call = record.call
    call_id = call.value or call.get(event_id, record.idempotency_key)
    response_model = scrub(response_model)
    request_model = scrub(request_model)
    if usage is None:
        usage = _NO_USAGE
    ratelimits = _ratelimits(headers, endpoint.provider == ANTHROPIC) if headers else _NO_RATELIMITS
    event = UsageEvent(
        id=event_id,
        call_id=call_id,
        ts_start=wall0,
        ts_end=wall0 + max(0.0, record.t1 - record.t0),
        provider=endpoint.provider,
        operation=endpoint.api,
        app=record.app,
        host=_HOST,
        pid=_pid_value,
        server_address=record.server_address,
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
        latency_ms=_millis(record.t1 - record.t0),  # streams: until the stream ended
        ttft_ms=ttft_ms,
        retry_attempt=_retry(record.retry),
        user=scrub(user),
        tags=tags,
        blocked=record.blocked,
        block_reason=record.block_reason[:1024] if record.block_reason else None,
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
        ids = spans.emit(msgspec.structs.asdict(event), record.otel_context, wall0)
        if ids is not None:
            event.trace_id, event.span_id = ids
    return event


def _parse_body(record: Any) -> tuple[Usage | None, str | None]:
    if record.stream:  # bytes came through the stream proxy; a truncated body is not parsed
        data = b"" if record.truncated else b"".join(c for c, _ in record.chunks_head)
    else:
        data = record.body
    if not data:
        return None, None
    # Typed decode of the few members needed (C speed); the generic path when the body
    # does not fit the typed shape, which `from_body` then reads.
    api = record.endpoint.api
    fast = anthropic_usage.from_bytes(data) if api == MESSAGES else openai_usage.from_bytes(api, data)
    if fast is not None:
        return fast
    body = _response_fields(data)
    if body is None:
        return None, None
    if record.endpoint.api == MESSAGES:
        return anthropic_usage.from_body(body)
    return openai_usage.from_body(record.endpoint.api, body)


def _scan_stream(record: Any) -> StreamFacts:
    api = record.endpoint.api
    if record.chunks_tail is None:  # the usual stream, at byte level
        if api == MESSAGES:
            facts = anthropic_usage.scan_chunks(record.chunks_head)
        else:
            facts = openai_stream.scan_chunks(api, record.chunks_head)
        if facts is not None:
            return facts
    if record.truncated and record.chunks_tail is not None:
        events = [*iter_events(record.chunks_head), *iter_events(record.chunks_tail)]
    else:
        events = list(iter_events([*record.chunks_head, *(record.chunks_tail or ())]))
    if api == MESSAGES:
        return anthropic_usage.scan_stream(events)
    return openai_stream.scan_stream(api, events)


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
_NO_RATELIMITS: list[int | None] = [None, None, None, None]


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
    if not value:  # absent, or b"": sent twice (`record._header_values`)
        return None
    value = value.strip()
    return min(int(value), 10**12) if value.isdigit() else None


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
