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

from costwatch.instrumentation.providers import MAX_TOKENS, StreamFacts, Usage, as_cost, as_int, as_label
from costwatch.instrumentation.sse import SSEvent


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


def from_body(body: Any) -> tuple[Usage | None, str | None]:
    if not isinstance(body, dict):
        return None, None
    model = body.get("model")
    return normalize_usage(body.get("usage")), model if isinstance(model, str) else None


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
