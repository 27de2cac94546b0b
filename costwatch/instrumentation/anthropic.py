"""Anthropic Messages: usage normalization and SSE scanning (runs in the background).

Anthropic's ``input_tokens`` *excludes* cache reads and writes; costwatch's
``input_tokens`` is ``input_tokens + cache_read_input_tokens +
cache_creation_input_tokens`` so that every provider means the same thing.
In streams ``message_start`` carries input and cache fields and
``message_delta.usage`` is cumulative (it may repeat or update input fields).

``usage`` also says how the call was billed: ``service_tier`` (``standard``,
``priority``, ``batch``), ``speed`` (``standard``, ``fast``), ``inference_geo``
(``global``, ``us``) and ``cache_creation`` (cache writes split by lifetime:
``ephemeral_5m_input_tokens``, ``ephemeral_1h_input_tokens``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import msgspec

from costwatch.instrumentation.providers import (
    MAX_TOKENS,
    TYPED_ERRORS,
    Cost,
    StreamFacts,
    Tokens,
    Usage,
    as_cost,
    as_int,
    as_label,
    named_blocks,
    time_at,
    usage_from,
)
from costwatch.instrumentation.sse import SSEvent

_decode = msgspec.json.decode
_DecodeError = (msgspec.DecodeError, ValueError)


def normalize_usage(usage: Any) -> Usage | None:
    if not isinstance(usage, dict):
        return None
    base = as_int(usage.get("input_tokens"))
    read = as_int(usage.get("cache_read_input_tokens"))
    write = as_int(usage.get("cache_creation_input_tokens"))
    details = usage.get("output_tokens_details")
    thinking = as_int(details.get("thinking_tokens")) if isinstance(details, dict) else None
    total_in = None if base is None else base + (read or 0) + (write or 0)
    if total_in is not None and total_in > MAX_TOKENS:
        total_in = None
    by_ttl = usage.get("cache_creation")
    write_5m = as_int(by_ttl.get("ephemeral_5m_input_tokens")) if isinstance(by_ttl, dict) else None
    write_1h = as_int(by_ttl.get("ephemeral_1h_input_tokens")) if isinstance(by_ttl, dict) else None
    return Usage(
        total_in,
        as_int(usage.get("output_tokens")),
        read,
        write,
        thinking,
        write_5m,
        write_1h,
        as_label(usage.get("service_tier")),
        as_label(usage.get("speed")),
        as_label(usage.get("inference_geo")),
        as_cost(usage.get("cost")),
    )


class _ByLifetime(msgspec.Struct):
    ephemeral_5m_input_tokens: Tokens | None = None
    ephemeral_1h_input_tokens: Tokens | None = None


class _OutputDetails(msgspec.Struct):
    thinking_tokens: Tokens | None = None


class _TypedUsage(msgspec.Struct):
    input_tokens: Tokens | None = None
    output_tokens: Tokens | None = None
    cache_read_input_tokens: Tokens | None = None
    cache_creation_input_tokens: Tokens | None = None
    output_tokens_details: _OutputDetails | None = None
    cache_creation: _ByLifetime | None = None
    service_tier: Any = None
    speed: Any = None
    inference_geo: Any = None
    cost: Cost | None = None


class _TypedBody(msgspec.Struct):
    model: Any = None
    usage: _TypedUsage | None = None


_body_decoder = msgspec.json.Decoder(_TypedBody)


def from_bytes(data: bytes) -> tuple[Usage | None, str | None] | None:
    """`from_body` straight from the body's bytes with a typed decode; None: decode generically.

    A body the typed shape refuses (not an object, a count `as_int` would refuse, details
    that are not objects…) goes the generic way, so both paths agree by construction.
    """
    try:
        body = _body_decoder.decode(data)
    except TYPED_ERRORS:
        return None
    model = body.model
    typed = body.usage
    usage: Usage | None = None
    if typed is not None:
        base, read, write = (
            typed.input_tokens,
            typed.cache_read_input_tokens,
            typed.cache_creation_input_tokens,
        )
        total_in = None if base is None else base + (read or 0) + (write or 0)
        if total_in is not None and total_in > MAX_TOKENS:
            total_in = None
        details = typed.output_tokens_details
        by_ttl = typed.cache_creation
        usage = usage_from((
            total_in,
            typed.output_tokens,
            read,
            write,
            details.thinking_tokens if details is not None else None,
            by_ttl.ephemeral_5m_input_tokens if by_ttl is not None else None,
            by_ttl.ephemeral_1h_input_tokens if by_ttl is not None else None,
            as_label(typed.service_tier),
            as_label(typed.speed),
            as_label(typed.inference_geo),
            typed.cost,
        ))  # fmt: skip
    return usage, model if isinstance(model, str) else None


def from_body(body: Any) -> tuple[Usage | None, str | None]:
    if not isinstance(body, dict):
        return None, None
    model = body.get("model")
    return normalize_usage(body.get("usage")), model if isinstance(model, str) else None


_SKIPPED = frozenset({b"ping", b"content_block_start", b"content_block_stop"})


def scan_chunks(chunks: list[tuple[bytes, float]]) -> StreamFacts | None:
    """A complete Messages stream with its final usage, scanned at byte level; else None (`scan_stream`).

    Each block's type is read from its bytes (`named_blocks`), so only ``message_start``,
    ``message_delta``, ``message_stop`` and the first ``content_block_delta`` (TTFT) are
    decoded. The generated-character count only feeds estimates, which a stream with its
    final output count does not need: without one, the general path runs and counts.
    """
    if not chunks:
        return None
    data = b"".join([chunk for chunk, _ in chunks])
    blocks = named_blocks(data)
    if blocks is None:
        return None
    raw: dict[str, Any] = {}
    seen_usage = final = terminal = False
    model: str | None = None
    first_t: float | None = None
    for name, payload, end in blocks:
        if name == b"content_block_delta":
            if first_t is None:
                if not isinstance(_load(payload), dict):
                    return None
                first_t = time_at(chunks, end)
            continue
        if name in _SKIPPED:
            continue
        found = _load(payload)
        if not isinstance(found, dict):
            return None  # not JSON to msgspec: the general path decides
        if name == b"message_start":
            message = found.get("message") or {}
            if isinstance(message, dict):
                model = message.get("model") if isinstance(message.get("model"), str) else model
                if isinstance(message.get("usage"), dict):
                    raw.update({k: v for k, v in message["usage"].items() if v is not None})
                    seen_usage = True
        elif name == b"message_delta":
            if isinstance(found.get("usage"), dict):
                raw.update({k: v for k, v in found["usage"].items() if v is not None})
                seen_usage = final = True
        elif name == b"message_stop":
            terminal = True
        else:
            return None  # an event type this scan does not know: the general path decides
    usage = normalize_usage(raw) if seen_usage else None
    if not final or usage is None or usage.output_tokens is None:
        return None
    return StreamFacts(usage, final, model, first_t, 0, terminal)


def _load(payload: bytes) -> Any:
    try:
        return _decode(payload)
    except _DecodeError:
        return None


def scan_stream(events: Iterable[SSEvent]) -> StreamFacts:
    raw: dict[str, Any] = {}
    seen_usage = False
    final = False
    model: str | None = None
    first_t: float | None = None
    chars = 0
    terminal = False
    for ev in events:
        try:
            data = json.loads(ev.data)
        except ValueError:
            continue
        if not isinstance(data, dict):
            continue
        kind = data.get("type") or ev.event
        if kind == "content_block_delta":
            if first_t is None:
                first_t = ev.t
            delta = data.get("delta") or {}
            if isinstance(delta, dict):
                for key in ("text", "partial_json", "thinking"):
                    value = delta.get(key)
                    if isinstance(value, str):
                        chars += len(value)
        elif kind == "content_block_start":
            block = data.get("content_block")
            if isinstance(block, dict) and isinstance(block.get("name"), str):
                chars += len(block["name"])  # a tool call's name (its input follows as partial_json)
        elif kind == "message_start":
            message = data.get("message") or {}
            if isinstance(message, dict):
                model = message.get("model") if isinstance(message.get("model"), str) else model
                if isinstance(message.get("usage"), dict):
                    raw.update({k: v for k, v in message["usage"].items() if v is not None})
                    seen_usage = True
        elif kind == "message_delta":
            if isinstance(data.get("usage"), dict):
                raw.update({k: v for k, v in data["usage"].items() if v is not None})
                seen_usage = final = True
        elif kind == "message_stop":
            terminal = True
    usage = normalize_usage(raw) if seen_usage else None
    return StreamFacts(usage, final, model, first_t, chars, terminal)
