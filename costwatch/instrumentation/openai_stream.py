"""OpenAI-shaped streams: chat/completions and Responses SSE, scanned for usage, model and TTFT.

Runs on the emitter thread. `scan_chunks` reads a complete, plain stream at byte level
(only the events that matter are decoded); `scan_stream` reads parsed SSE events and is
the general path for everything else, counting the generated text for estimates. Usage
numbers are normalized as for JSON bodies (`costwatch.instrumentation.openai`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec

from costwatch.instrumentation.openai import NO_COUNTS, from_bytes, normalize_usage, with_tier
from costwatch.instrumentation.providers import (
    COMPLETIONS,
    RESPONSES,
    TYPED_ERRORS,
    StreamFacts,
    Usage,
    named_blocks,
    time_at,
)
from costwatch.instrumentation.sse import SSEvent

__all__ = ["scan_chunks", "scan_stream"]

_TERMINAL_RESPONSE_EVENTS = ("response.completed", "response.incomplete", "response.failed")
_NOT_TEXT_DELTAS = frozenset({"response.audio.delta"})  # base64 audio: its length is no token count
_DONE = b"data: [DONE]\n\n"
_decode = msgspec.json.decode
_DecodeError = (msgspec.DecodeError, ValueError)


class _ChunkDelta(msgspec.Struct):
    content: Any = None
    tool_calls: Any = None


class _ChunkChoice(msgspec.Struct):
    delta: _ChunkDelta | None = None
    text: Any = None  # completions


class _Chunk(msgspec.Struct):
    """A chat/completions stream chunk as `_first_content` reads it (a value of another shape fails)."""

    model: Any = None
    choices: list[_ChunkChoice] | None = None


_chunk_decoder = msgspec.json.Decoder(_Chunk)


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


class _Unusual(Exception):
    """An event `scan_chunks` does not read (several lines, another field): the general path does."""


def scan_chunks(api: str, chunks: list[tuple[bytes, float]]) -> StreamFacts | None:
    """A complete chat stream scanned at byte level, or None to take the general path (`scan_stream`).

    Complete and plain: LF only, ending in ``[DONE]``, and every event it reads a one-line
    ``data:`` event (or a comment) — however the network cut the bytes into chunks. A
    real stream has one chunk per token, so the chunks are joined once in C and only
    the events that matter are cut out and decoded: from the start up to the first
    content (TTFT, model), from the end back to the usage event. The generated-character
    count only feeds estimates, which a stream with its usage does not need; a stream
    without usage goes to the general path, which counts it.
    """
    if not chunks:
        return None
    if api == RESPONSES:
        return _scan_response_chunks(chunks)
    data = b"".join([chunk for chunk, _ in chunks])
    if not data.endswith(b"\n\n" + _DONE) or b"\r" in data:
        return None
    done = len(data) - len(_DONE)
    try:
        usage, model = _last_usage(api, data, done)
        first_t, first_model = _first_content(api, data, done, chunks)
    except _Unusual:
        return None
    if usage is None:
        return None  # complete without usage: the general path counts the text for the estimate
    if first_t is None and usage.output_tokens:
        return None  # output but no content event recognised here: let the general path look
    return StreamFacts(usage, True, model or first_model, first_t, 0, True)


_RESPONSE_OBJECT_EVENTS = frozenset({b"response.created", *(e.encode() for e in _TERMINAL_RESPONSE_EVENTS)})


def _scan_response_chunks(chunks: list[tuple[bytes, float]]) -> StreamFacts | None:
    """A complete Responses stream with its final usage, at byte level; else None (`scan_stream`).

    Each block's type is read from its bytes (`named_blocks`): only the events that carry
    the response object and the first ``.delta`` (TTFT) are decoded. Without a final
    output count the general path runs, which counts the generated text for the estimate.
    """
    blocks = named_blocks(b"".join([chunk for chunk, _ in chunks]))
    if blocks is None:
        return None
    usage: Usage | None = None
    model: str | None = None
    first_t: float | None = None
    terminal = False
    for name, payload, end in blocks:
        if name.endswith(b".delta"):
            if first_t is None:
                if not isinstance(_load(payload), dict):
                    return None
                first_t = time_at(chunks, end)
            continue
        if name not in _RESPONSE_OBJECT_EVENTS:
            continue  # neither text nor the response object: the general path reads nothing there either
        data = _load(payload)
        if not isinstance(data, dict):
            return None
        response = data.get("response") or {}
        if isinstance(response, dict):
            model = response.get("model") or model
            if name != b"response.created":
                terminal = True
                found = normalize_usage(RESPONSES, response.get("usage"))
                usage = with_tier(found, response.get("service_tier")) or usage
    if usage is None or usage.output_tokens is None:
        return None
    return StreamFacts(usage, True, model, first_t, 0, terminal)


def _last_usage(api: str, data: bytes, done: int) -> tuple[Usage | None, str | None]:
    """(usage, model) of the last event with usage, walking back from ``[DONE]``."""
    end = done - 2  # each block ends where its blank line starts
    while end > 0:
        sep = data.rfind(b"\n\n", 0, end)
        start = sep + 2 if sep >= 0 else 0  # no separator before it: the first block
        block = data[start:end]
        if _has_usage(block):
            if block[:6] == b"data: " and b"\n" not in block:
                typed = from_bytes(api, block[6:])
                if typed is not None:
                    usage = typed[0]
                    if usage is None:  # "usage": null or absent: falsy, as below
                        end = start - 2
                        continue
                    if usage[:5] != NO_COUNTS or usage.cost_usd is not None:  # a non-empty usage object
                        return typed
            found = _event_data(block)  # anything the typed decode cannot tell: the generic decode
            if isinstance(found, dict) and found.get("usage"):
                model = found.get("model")
                usage = with_tier(normalize_usage(api, found["usage"]), found.get("service_tier"))
                return usage, model if isinstance(model, str) else None
        end = start - 2
    return None, None


def _first_content(
    api: str, data: bytes, done: int, chunks: list[tuple[bytes, float]]
) -> tuple[float | None, str | None]:
    """(time the first content event was complete, the first model seen up to it)."""
    model: str | None = None
    start = 0
    while start < done:
        end = data.find(b"\n\n", start)
        block = data[start:end]
        start = end + 2
        if block[:6] == b"data: " and b"\n" not in block:
            try:
                chunk = _chunk_decoder.decode(block[6:])
            except TYPED_ERRORS:
                pass  # not the usual chunk: the generic decode below decides
            else:
                if model is None and isinstance(chunk.model, str):
                    model = chunk.model
                if chunk.choices:
                    choice = chunk.choices[0]
                    if api == COMPLETIONS:
                        if isinstance(choice.text, str) and choice.text:
                            return time_at(chunks, start), model
                    elif choice.delta is not None and (
                        choice.delta.tool_calls
                        or (isinstance(choice.delta.content, str) and choice.delta.content)
                    ):
                        return time_at(chunks, start), model
                continue
        found = _event_data(block)
        if not isinstance(found, dict):
            continue
        if model is None and isinstance(found.get("model"), str):
            model = found["model"]
        if _has_content(api, found):
            return time_at(chunks, start), model
    return None, model


def _event_data(block: bytes) -> Any:
    """The decoded JSON of a one-line ``data:`` event; None for a comment or a non-JSON payload."""
    if b"\n" in block:
        raise _Unusual
    if block[:6] == b"data: ":
        return _load(block[6:])
    if block[:1] == b":":  # a comment (keep-alive)
        return None
    raise _Unusual


def _has_content(api: str, data: dict[str, Any]) -> bool:
    text, tool_calls = _generated(api, data)
    return bool(tool_calls) or bool(text)


# Generated text in a chat delta besides ``content``: refusals, and the reasoning text that
# OpenAI-compatible servers stream (``reasoning_content``: DeepSeek, vLLM; ``reasoning``: others).
_DELTA_TEXT = ("content", "refusal", "reasoning_content", "reasoning")


def _generated_chars(api: str, data: dict[str, Any]) -> int:
    """Characters generated in one chat/completions chunk, over every choice (for estimates)."""
    choices = data.get("choices")
    if not choices or not isinstance(choices, list):
        return 0
    chars = 0
    for choice in choices:
        if not isinstance(choice, dict):
            continue
        if api == COMPLETIONS:
            text = choice.get("text")
            chars += len(text) if isinstance(text, str) else 0
            continue
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            continue
        for key in _DELTA_TEXT:
            text = delta.get(key)
            if isinstance(text, str):
                chars += len(text)
        calls = delta.get("tool_calls")
        if isinstance(calls, list):
            for call in calls:
                function = call.get("function") if isinstance(call, dict) else None
                if isinstance(function, dict):
                    for key in ("name", "arguments"):
                        text = function.get(key)
                        chars += len(text) if isinstance(text, str) else 0
    return chars


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
    # generated-character count only feeds estimates, so a stream without ``[DONE]``, or one
    # that turns out to carry no usage, is decoded in full.
    if not any(ev.data.startswith("[DONE]") for ev in reversed(events)):
        return _scan_chat(api, events, full=True)
    facts = _scan_chat(api, events, full=False)
    if facts.usage is None:
        return _scan_chat(api, events, full=True)
    return facts


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
            usage = with_tier(normalize_usage(api, data["usage"]), data.get("service_tier")) or usage
        if first_t is None and _has_content(api, data):
            first_t = ev.t
        if full:
            chars += _generated_chars(api, data)
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
            if isinstance(delta, str) and kind not in _NOT_TEXT_DELTAS:
                chars += len(delta)  # output text, refusals, function-call arguments, reasoning text
        elif kind == "response.output_item.added":
            item = data.get("item")
            if isinstance(item, dict) and isinstance(item.get("name"), str):
                chars += len(item["name"])  # a function call's name (its arguments follow as deltas)
        elif kind == "response.created" or kind in _TERMINAL_RESPONSE_EVENTS:
            response = data.get("response") or {}
            if isinstance(response, dict):
                model = response.get("model") or model
                if kind in _TERMINAL_RESPONSE_EVENTS:
                    terminal = True
                    found = normalize_usage(RESPONSES, response.get("usage"))
                    usage = with_tier(found, response.get("service_tier")) or usage
    return StreamFacts(usage, usage is not None, model, first_t, chars, terminal)
