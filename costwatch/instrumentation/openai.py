"""OpenAI-shaped responses: usage normalization and SSE scanning (runs in the background).

OpenAI's ``prompt_tokens`` / ``input_tokens`` already include cached tokens and
``completion_tokens`` / ``output_tokens`` include reasoning tokens, which is
the meaning costwatch stores, so the numbers pass through unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

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


def scan_stream(api: str, events: Iterable[SSEvent]) -> StreamFacts:
    usage: Usage | None = None
    model: str | None = None
    first_t: float | None = None
    chars = 0
    terminal = False
    for ev in events:
        if ev.data.startswith("[DONE]"):
            terminal = True
            continue
        try:
            data = json.loads(ev.data)
        except ValueError:
            continue
        if not isinstance(data, dict):
            continue
        if api == RESPONSES:
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
            continue
        # chat / legacy completions chunks
        if isinstance(data.get("model"), str):
            model = data["model"]
        if data.get("usage"):
            usage = normalize_usage(api, data["usage"]) or usage
        choices = data.get("choices")
        if not choices or not isinstance(choices, list) or not isinstance(choices[0], dict):
            continue
        choice = choices[0]
        if api == COMPLETIONS:
            text = choice.get("text")
        else:
            delta = choice.get("delta") or {}
            text = delta.get("content") if isinstance(delta, dict) else None
            if isinstance(delta, dict) and delta.get("tool_calls"):
                if first_t is None:
                    first_t = ev.t
                chars += len(json.dumps(delta["tool_calls"]))
        if isinstance(text, str) and text:
            if first_t is None:
                first_t = ev.t
            chars += len(text)
    return StreamFacts(usage, usage is not None, model, first_t, chars, terminal)
