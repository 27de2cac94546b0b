"""OpenAI-shaped responses: usage normalization and SSE scanning (runs in the background).

OpenAI's ``prompt_tokens`` / ``input_tokens`` already include cached tokens and
``completion_tokens`` / ``output_tokens`` include reasoning tokens, which is
the meaning costwatch stores, so the numbers pass through unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import msgspec

from costwatch.instrumentation.providers import (
    COMPLETIONS,
    EMBEDDINGS,
    RESPONSES,
    StreamFacts,
    Usage,
    as_int,
)
from costwatch.instrumentation.sse import SSEvent

_TERMINAL_RESPONSE_EVENTS = ("response.completed", "response.incomplete", "response.failed")


def normalize_usage(api: str, usage: Any) -> Usage | None:
    if not isinstance(usage, dict):
        return None
    if api == RESPONSES or ("input_tokens" in usage and "prompt_tokens" not in usage):
        in_details = usage.get("input_tokens_details") or {}
        out_details = usage.get("output_tokens_details") or {}
        return Usage(
            as_int(usage.get("input_tokens")),
            as_int(usage.get("output_tokens")),
            as_int(in_details.get("cached_tokens")) if isinstance(in_details, dict) else None,
            as_int(in_details.get("cache_write_tokens")) if isinstance(in_details, dict) else None,
            as_int(out_details.get("reasoning_tokens")) if isinstance(out_details, dict) else None,
        )
    prompt_details = usage.get("prompt_tokens_details") or {}
    completion_details = usage.get("completion_tokens_details") or {}
    output = as_int(usage.get("completion_tokens"))
    if api == EMBEDDINGS and output is None:
        output = 0  # embeddings generate nothing; total_tokens == prompt_tokens
    return Usage(
        as_int(usage.get("prompt_tokens")),
        output,
        as_int(prompt_details.get("cached_tokens")) if isinstance(prompt_details, dict) else None,
        as_int(prompt_details.get("cache_write_tokens")) if isinstance(prompt_details, dict) else None,
        as_int(completion_details.get("reasoning_tokens")) if isinstance(completion_details, dict) else None,
    )


def from_body(api: str, body: Any) -> tuple[Usage | None, str | None]:
    """(usage, response model) from a parsed JSON response body."""
    if not isinstance(body, dict):
        return None, None
    model = body.get("model")
    return normalize_usage(api, body.get("usage")), model if isinstance(model, str) else None


_decode = msgspec.json.decode
_DecodeError = (msgspec.DecodeError, ValueError)


def _load(data: str) -> Any:
    try:
        return _decode(data)
    except _DecodeError:
        return None


def _has_usage(raw: str | bytes) -> bool:
    """Might this chunk carry usage? (``"usage":null``, which include_usage adds to every chunk, does not.)

    Content text cannot fake the key: inside a JSON string its quotes are escaped.
    """
    key, nulls = _USAGE_MARKS[type(raw) is bytes]
    return key in raw and not any(n in raw for n in nulls)  # type: ignore[operator]


_USAGE_MARKS: dict[bool, tuple[Any, tuple[Any, ...]]] = {
    False: ('"usage"', ('"usage":null', '"usage": null')),
    True: (b'"usage"', (b'"usage":null', b'"usage": null')),
}


def scan_chunks(api: str, chunks: list[tuple[bytes, float]]) -> StreamFacts | None:
    """The usual chat stream at byte level, or None to take the general path (`scan_stream`).

    Usual: every chunk is one ``data:`` event ending in a blank line and the last is
    ``[DONE]``. Only the first events up to the first content (TTFT, model) and the
    usage event are decoded; the generated-character count, which only feeds
    estimates of unfinished streams, is not needed for a finished one.
    """
    if api == RESPONSES or not chunks or chunks[-1][0] != b"data: [DONE]\n\n":
        return None
    for chunk, _ in chunks:
        if chunk[:6] != b"data: " or chunk.find(b"\n\n") != len(chunk) - 2 or b"\r" in chunk:
            return None
    usage: Usage | None = None
    model: str | None = None
    first_t: float | None = None
    end = len(chunks) - 1
    for i in range(end - 1, -1, -1):  # the usage event is one of the last
        chunk = chunks[i][0]
        if _has_usage(chunk):
            data = _load(chunk[6:-2])
            if isinstance(data, dict) and data.get("usage"):
                usage = normalize_usage(api, data["usage"])
                model = data["model"] if isinstance(data.get("model"), str) else None
                break
    for chunk, t in chunks[:end]:
        data = _load(chunk[6:-2])
        if not isinstance(data, dict):
            continue
        if model is None and isinstance(data.get("model"), str):
            model = data["model"]
        if _has_content(api, data):
            first_t = t
            break
    if first_t is None and usage is not None and usage.output_tokens:
        return None  # output but no content event recognised here: let the general path look
    return StreamFacts(usage, usage is not None, model, first_t, 0, True)


def _has_content(api: str, data: dict[str, Any]) -> bool:
    text, tool_calls = _generated(api, data)
    return bool(tool_calls) or bool(text)


def _generated(api: str, data: dict[str, Any]) -> tuple[str | None, Any]:
    """The text and tool calls a chat/completions chunk carries (None where absent or malformed)."""
    choices = data.get("choices")
    if not choices or not isinstance(choices, list) or not isinstance(choices[0], dict):
        return None, None
    choice = choices[0]
    if api == COMPLETIONS:
        text = choice.get("text")
        return (text if isinstance(text, str) else None), None
    delta = choice.get("delta")
    if not isinstance(delta, dict):
        return None, None
    text = delta.get("content")
    return (text if isinstance(text, str) else None), delta.get("tool_calls") or None


def scan_stream(api: str, events: Iterable[SSEvent]) -> StreamFacts:
    if api == RESPONSES:
        return _scan_responses(events)
    events = events if isinstance(events, list) else list(events)
    # A complete chat stream (``[DONE]`` seen) needs only its first content event (TTFT), the
    # usage event and a model: found by cheap substring checks, only those are decoded. The
    # generated-character count only feeds estimates of abandoned streams, so a stream
    # without ``[DONE]`` is decoded in full.
    if not any(ev.data.startswith("[DONE]") for ev in reversed(events)):
        return _scan_chat(api, events, full=True)
    return _scan_chat(api, events, full=False)


def _scan_chat(api: str, events: list[SSEvent], full: bool) -> StreamFacts:
    usage: Usage | None = None
    model: str | None = None
    first_t: float | None = None
    chars = 0
    terminal = False
    for ev in events:
        raw = ev.data
        if raw.startswith("[DONE]"):
            terminal = True
            continue
        if not full and first_t is not None and model is not None and not _has_usage(raw):
            continue  # neither the usage event nor needed for TTFT / the model
        data = _load(raw)
        if not isinstance(data, dict):
            continue
        if isinstance(data.get("model"), str):
            model = data["model"]
        if data.get("usage"):
            usage = normalize_usage(api, data["usage"]) or usage
        text, tool_calls = _generated(api, data)
        if tool_calls:
            if first_t is None:
                first_t = ev.t
            chars += len(json.dumps(tool_calls))
        if text:
            if first_t is None:
                first_t = ev.t
            chars += len(text)
    return StreamFacts(usage, usage is not None, model, first_t, chars, terminal)


def _scan_responses(events: Iterable[SSEvent]) -> StreamFacts:
    usage: Usage | None = None
    model: str | None = None
    first_t: float | None = None
    chars = 0
    terminal = False
    for ev in events:
        if ev.data.startswith("[DONE]"):
            terminal = True
            continue
        data = _load(ev.data)
        if not isinstance(data, dict):
            continue
        kind = data.get("type") or ev.event or ""
        if kind.endswith(".delta"):
            if first_t is None:
                first_t = ev.t
            delta = data.get("delta")
            chars += len(delta) if isinstance(delta, str) else 0
        elif kind == "response.created" or kind in _TERMINAL_RESPONSE_EVENTS:
            response = data.get("response") or {}
            if isinstance(response, dict):
                model = response.get("model") or model
                if kind in _TERMINAL_RESPONSE_EVENTS:
                    terminal = True
                    usage = normalize_usage(RESPONSES, response.get("usage")) or usage
    return StreamFacts(usage, usage is not None, model, first_t, chars, terminal)
