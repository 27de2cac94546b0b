"""OpenAI-shaped JSON bodies: usage normalization and the typed decode (runs in the background).

OpenAI's ``prompt_tokens`` / ``input_tokens`` already include cached tokens and
``completion_tokens`` / ``output_tokens`` include reasoning tokens, which is
the meaning costwatch stores, so the numbers pass through unchanged.

``service_tier`` is read from the response (chat: the body and every stream chunk;
Responses: the response object), not from the request: a ``priority`` request can be
served at ``default``. ``usage.cost`` is the cost an OpenAI-compatible router
(OpenRouter) reports for the call, in USD. Streams are scanned in
`costwatch.instrumentation.openai_stream`, with these functions.
"""

from __future__ import annotations

from typing import Any

import msgspec
from msgspec import UNSET, UnsetType

from costwatch.instrumentation.providers import (
    EMBEDDINGS,
    MAX_LABEL,
    RESPONSES,
    TYPED_ERRORS,
    Cost,
    Tokens,
    Usage,
    as_cost,
    as_int,
    as_label,
    usage_from,
)

__all__ = ["NO_COUNTS", "from_body", "from_bytes", "normalize_usage", "with_tier"]


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
            cost_usd=as_cost(usage.get("cost")),
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
        cost_usd=as_cost(usage.get("cost")),
    )


def with_tier(usage: Usage | None, tier: Any) -> Usage | None:
    """The usage with the response's ``service_tier`` (a member of the body or chunk, not of usage)."""
    label = as_label(tier)
    return usage if usage is None or label is None else usage._replace(service_tier=label)


def from_body(api: str, body: Any) -> tuple[Usage | None, str | None]:
    """(usage, response model) from a parsed JSON response body."""
    if not isinstance(body, dict):
        return None, None
    model = body.get("model")
    usage = with_tier(normalize_usage(api, body.get("usage")), body.get("service_tier"))
    return usage, model if isinstance(model, str) else None


class _Details(msgspec.Struct):
    cached_tokens: Tokens | None = None
    cache_write_tokens: Tokens | None = None
    reasoning_tokens: Tokens | None = None


class _TypedUsage(msgspec.Struct):
    prompt_tokens: Tokens | UnsetType | None = UNSET  # UNSET: absent (decides chat vs Responses shape)
    completion_tokens: Tokens | None = None
    input_tokens: Tokens | UnsetType | None = UNSET
    output_tokens: Tokens | None = None
    prompt_tokens_details: _Details | None = None
    completion_tokens_details: _Details | None = None
    input_tokens_details: _Details | None = None
    output_tokens_details: _Details | None = None
    cost: Cost | None = None


class _TypedBody(msgspec.Struct):
    model: Any = None
    usage: _TypedUsage | None = None
    service_tier: Any = None


_body_decoder = msgspec.json.Decoder(_TypedBody)
NO_COUNTS = (None, None, None, None, None)  # a usage's five token counts, all absent


_NO_DETAILS = _Details()


def from_bytes(api: str, data: bytes) -> tuple[Usage | None, str | None] | None:
    """`from_body` straight from the body's bytes with a typed decode (the rest is skipped in C).

    None when the body does not fit the typed shape (not an object, a count that `as_int`
    would refuse, details that are not objects…): the caller then decodes generically and
    `from_body` gives the answer, so both paths agree by construction.
    """
    try:
        body = _body_decoder.decode(data)
    except TYPED_ERRORS:
        return None
    model = body.model
    typed = body.usage
    usage: Usage | None = None
    if typed is not None:
        tier = body.service_tier  # `as_label`, inline
        tier = tier[:MAX_LABEL] if type(tier) is str and tier else None
        if api == RESPONSES or (typed.input_tokens is not UNSET and typed.prompt_tokens is UNSET):
            in_details = typed.input_tokens_details or _NO_DETAILS
            usage = usage_from((
                None if typed.input_tokens is UNSET else typed.input_tokens,
                typed.output_tokens,
                in_details.cached_tokens,
                in_details.cache_write_tokens,
                (typed.output_tokens_details or _NO_DETAILS).reasoning_tokens,
                None, None, tier, None, None, typed.cost,
            ))  # fmt: skip
        else:
            prompt_details = typed.prompt_tokens_details or _NO_DETAILS
            output = typed.completion_tokens
            if api == EMBEDDINGS and output is None:
                output = 0
            usage = usage_from((
                None if typed.prompt_tokens is UNSET else typed.prompt_tokens,
                output,
                prompt_details.cached_tokens,
                prompt_details.cache_write_tokens,
                (typed.completion_tokens_details or _NO_DETAILS).reasoning_tokens,
                None, None, tier, None, None, typed.cost,
            ))  # fmt: skip
    return usage, model if isinstance(model, str) else None
