"""Which URLs are LLM calls, and the provider-neutral shapes the provider modules fill.

Recognition runs on the app's hot path, so it is a handful of string suffix
checks on the URL path: any base URL works (api.openai.com, local servers,
proxies, Azure ``/openai/deployments/{d}/chat/completions?api-version=``).

Provider naming: ``openai`` for every OpenAI-shaped endpoint, including
compatible servers (vLLM, Ollama, proxies) whose host is kept in
``server_address``; ``azure.openai`` when the path is Azure's deployments
route or the host ends with ``.openai.azure.com`` (GenAI semconv value);
``anthropic`` for Messages.
"""

from __future__ import annotations

import functools
from typing import Annotated, NamedTuple

import msgspec

OPENAI = "openai"
AZURE_OPENAI = "azure.openai"
ANTHROPIC = "anthropic"

# api (what shape the body has) -> event operation
CHAT = "chat"
RESPONSES = "responses"
EMBEDDINGS = "embeddings"
COMPLETIONS = "completions"
MESSAGES = "messages"


class Endpoint(NamedTuple):
    provider: str
    api: str  # one of CHAT, RESPONSES, EMBEDDINGS, COMPLETIONS, MESSAGES


_CHAT = Endpoint(OPENAI, CHAT)
_RESPONSES = Endpoint(OPENAI, RESPONSES)
_EMBEDDINGS = Endpoint(OPENAI, EMBEDDINGS)
_COMPLETIONS = Endpoint(OPENAI, COMPLETIONS)
_MESSAGES = Endpoint(ANTHROPIC, MESSAGES)
_AZURE = {
    CHAT: Endpoint(AZURE_OPENAI, CHAT),
    RESPONSES: Endpoint(AZURE_OPENAI, RESPONSES),
    EMBEDDINGS: Endpoint(AZURE_OPENAI, EMBEDDINGS),
    COMPLETIONS: Endpoint(AZURE_OPENAI, COMPLETIONS),
}


def recognize(path: str) -> Endpoint | None:
    """Classify a request path (no query string); None means 'not an LLM call'."""
    path = path.rstrip("/")
    if path.endswith("/chat/completions"):
        ep = _CHAT
    elif path.endswith("/messages"):
        # Anthropic Messages; OpenAI's /threads/{id}/messages (Assistants) is not a model call.
        return None if "/threads/" in path else _MESSAGES
    elif path.endswith("/responses"):
        ep = _RESPONSES
    elif path.endswith("/embeddings"):
        ep = _EMBEDDINGS
    elif path.endswith("/completions"):
        ep = _COMPLETIONS
    else:
        return None
    if "/openai/deployments/" in path:
        return _AZURE[ep.api]
    return ep


def azure_deployment(path: str) -> str | None:
    """The deployment name in an Azure path (Azure bodies often carry no model)."""
    marker = "/openai/deployments/"
    i = path.find(marker)
    if i < 0:
        return None
    return path[i + len(marker) :].split("/", 1)[0] or None


class Usage(NamedTuple):
    """Normalized token counts and what the response says it was billed at.

    Meaning documented at the top of costwatch/events.py. The tier, speed and
    geography are the response's (what the call was served at), never the request's.
    """

    input_tokens: int | None
    output_tokens: int | None
    cached_input_tokens: int | None = None
    cache_write_tokens: int | None = None
    reasoning_tokens: int | None = None
    cache_write_5m_tokens: int | None = None
    cache_write_1h_tokens: int | None = None
    service_tier: str | None = None
    speed: str | None = None
    inference_geo: str | None = None
    cost_usd: float | None = None  # reported by the response itself (e.g. a router's usage.cost)


# Usage from all eleven fields in order, by the C tuple constructor: the namedtuple's own
# ``__new__`` is a Python frame, once per event on the emitter thread.
usage_from = functools.partial(tuple.__new__, Usage)


class StreamFacts(NamedTuple):
    """What the background scan of an SSE transcript found."""

    usage: Usage | None  # final when usage_final, else partial (e.g. message_start only)
    usage_final: bool
    response_model: str | None
    first_content_t: float | None  # perf_counter of the first content event
    text_chars: int  # generated characters seen (for estimates of streams without usage); 0 when not needed
    terminal: bool  # the provider's end-of-stream event was seen


MAX_TOKENS = 10**12  # the event schema's bound: a bigger count would make the whole event invalid


def as_int(value: object) -> int | None:
    """Token counts from JSON: ints only (bools, junk and absurd sizes are 'unknown', not 0)."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_TOKENS:
        return int(value)  # int(): an int subclass (IntEnum and the like) becomes a plain count
    return None


# Typed-decode counterparts of `as_int` / `as_cost`: a value they would not accept fails the
# typed decode as a whole, and the caller falls back to the generic path (same result).
Tokens = Annotated[int, msgspec.Meta(ge=0, le=MAX_TOKENS)]

MAX_LABEL = 64  # the event schema's bound for service_tier, speed, inference_geo
MAX_COST_USD = 1e9


def as_label(value: object) -> str | None:
    """A short label from JSON (tier, speed, geography): a non-empty string, else unknown."""
    if isinstance(value, str) and value:
        return value[:MAX_LABEL]
    return None


Cost = Annotated[float, msgspec.Meta(ge=0, le=1e9)]  # = MAX_COST_USD; JSON ints decode as floats
TYPED_ERRORS = (msgspec.DecodeError, msgspec.ValidationError, ValueError)


def as_cost(value: object) -> float | None:
    """A reported cost in USD: a finite non-negative number (bools and junk are 'unknown')."""
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= MAX_COST_USD:
        return float(value)
    return None


def time_at(chunks: list[tuple[bytes, float]], offset: int) -> float:
    """The timestamp of the chunk that brought byte ``offset - 1`` (when an event ending there was complete)."""
    seen = 0
    for chunk, t in chunks:
        seen += len(chunk)
        if seen >= offset:
            return t
    return chunks[-1][1]


def named_blocks(data: bytes) -> list[tuple[bytes, bytes, int]] | None:
    """``(event name, data payload, end offset)`` of each block of a plain named-event stream, or None.

    Plain: LF only, complete (ends in a blank line), and every block exactly
    ``event: NAME`` + one ``data: PAYLOAD`` line whose JSON starts with
    ``{"type":"NAME"`` — the shape Anthropic and OpenAI's Responses API send. The
    payload's ``type`` is then known without decoding it. Anything else: None (the
    caller takes the general SSE path).
    """
    if not data.endswith(b"\n\n") or b"\r" in data:
        return None
    blocks = []
    start = 0
    end_all = len(data)
    while start < end_all:
        end = data.find(b"\n\n", start)
        nl = data.find(b"\n", start, end)
        if (
            data[start : start + 7] != b"event: "
            or nl < 0
            or data[nl + 1 : nl + 7] != b"data: "
            or data.find(b"\n", nl + 1, end) >= 0
        ):
            return None
        name = data[start + 7 : nl]
        payload = data[nl + 7 : end]
        if not payload.startswith(b'{"type":"' + name + b'"'):
            return None
        start = end + 2
        blocks.append((name, payload, start))
    return blocks
