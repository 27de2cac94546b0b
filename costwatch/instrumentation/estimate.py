"""Token estimates for streams that ended without the provider's usage (emitter thread only).

A stream gets ``usage_source = "estimated"`` when it ends without usage in it:
the app abandoned it, it broke, or it completed but the server never sent
usage (an OpenAI-compatible host without ``stream_options.include_usage``, a
Responses terminal event with ``"usage": null``, an Anthropic stream without
its final ``message_delta``). What the stream did report (Anthropic's
``message_start`` input and cache fields, say) is kept; only the rest is
estimated:

- output: the generated characters the background scan counted (content,
  refusals, tool-call names and argument text, reasoning text where the
  server streams it) / `CHARS_PER_TOKEN`, rounded up;
- input: the request's prompt text (messages, system, input, instructions,
  prompt; tool definitions as compact JSON) / `CHARS_PER_TOKEN`, rounded up,
  plus `MESSAGE_OVERHEAD` tokens per message and `REPLY_OVERHEAD` per
  request for the chat template. Images, audio and files in the prompt are
  not counted (base64 bytes are no measure of their tokens).

Reasoning that a model does not stream (OpenAI's o-series and GPT-5 stream no
reasoning text) cannot be seen, so the estimate undercounts such calls; the
measured error on the fixture corpus is in docs/architecture.md and
`tests/instrumentation/test_estimate_error.py`.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec

from costwatch.instrumentation.providers import StreamFacts, Usage

CHARS_PER_TOKEN = 4
MESSAGE_OVERHEAD = 4  # role and separators of one chat message (OpenAI's documented ~3-4)
REPLY_OVERHEAD = 3  # the assistant reply's priming
_NO_USAGE = Usage(None, None, None, None, None)
_decode = msgspec.json.decode
_DecodeError = (msgspec.DecodeError, ValueError)

# Request members holding the prompt; `tools` / `functions` are counted as compact JSON.
_PROMPT_KEYS = ("system", "instructions", "messages", "input", "prompt")
_TOOL_KEYS = ("tools", "functions")
# Members of a message or content part that are not prompt text.
_NOT_TEXT = frozenset(
    {
        "type",
        "role",
        "id",
        "tool_call_id",
        "call_id",
        "status",
        "cache_control",
        "signature",
        "encrypted_content",
        "image_url",
        "input_image",
        "input_audio",
        "input_file",
        "image",
        "audio",
        "file",
        "file_data",
        "file_id",
        "source",
        "detail",
        "annotations",
    }
)


def stream_usage(request_body: bytes, facts: StreamFacts, usage: Usage | None) -> tuple[Usage | None, str]:
    """A stream without (complete) final usage: keep what it reported, estimate the rest.

    Returns the usage and its ``usage_source``: ``estimated``, or ``missing`` when
    neither the stream nor the request body tells the input.

    Output: the provider's count when its final usage had one, else the generated text
    (never below a partial count such as ``message_start``'s). Input: the stream's own
    count when it had one (``message_start``), else the request's prompt text.
    """
    known = usage if usage is not None else _NO_USAGE
    prompt = known.input_tokens
    if prompt is None:
        prompt = input_tokens(_json(request_body))
    if prompt is None:
        return None, "missing"
    if facts.usage_final and known.output_tokens is not None:
        output_tokens = known.output_tokens
    else:
        output_tokens = max(tokens_from_chars(facts.text_chars), known.output_tokens or 0)
    reasoning = known.reasoning_tokens if facts.usage_final else None
    # What a partial usage says (cache reads and writes, tier, speed, geography) still holds;
    # a cost reported for the whole call cannot have been seen.
    usage = known._replace(
        input_tokens=prompt, output_tokens=output_tokens, reasoning_tokens=reasoning, cost_usd=None
    )
    return usage, "estimated"


def _json(data: bytes) -> dict:
    if not data:
        return {}
    try:
        value = _decode(data)
    except _DecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def tokens_from_chars(chars: int) -> int:
    """Characters of text → tokens (rounded up)."""
    return -(-chars // CHARS_PER_TOKEN)


def input_tokens(req: dict[str, Any]) -> int | None:
    """An estimate of the prompt tokens of a decoded request body (None: no body)."""
    if not req:
        return None
    chars = 0
    messages = 0
    found = False
    for key in _PROMPT_KEYS:
        value = req.get(key)
        if value is None:
            continue
        found = True
        chars += _text_chars(value)
        if isinstance(value, list) and key in ("messages", "input"):
            messages += sum(1 for item in value if isinstance(item, dict))
        elif key in ("messages", "input", "system", "instructions"):
            messages += 1
    for key in _TOOL_KEYS:
        value = req.get(key)
        if value:
            found = True
            chars += len(json.dumps(value, ensure_ascii=False, separators=(",", ":")))
    if not found:  # an unknown shape: the whole body, as an upper bound
        return max(1, tokens_from_chars(len(json.dumps(req, ensure_ascii=False, separators=(",", ":")))))
    return tokens_from_chars(chars) + MESSAGE_OVERHEAD * messages + REPLY_OVERHEAD


def _text_chars(value: Any, depth: int = 0) -> int:
    """Characters of the text in a prompt member: strings, lists and the text members of objects."""
    if isinstance(value, str):
        return len(value)
    if depth > 32:
        return 0
    if isinstance(value, list):
        return sum(_text_chars(item, depth + 1) for item in value)
    if isinstance(value, dict):
        return sum(_text_chars(v, depth + 1) for k, v in value.items() if k not in _NOT_TEXT)
    return 0


__all__ = ["CHARS_PER_TOKEN", "input_tokens", "stream_usage", "tokens_from_chars"]
