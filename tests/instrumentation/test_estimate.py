"""Streams that end without usage are estimated: what is known is kept, the rest counted from text."""

from __future__ import annotations

import json
from typing import Any

import pytest

from costwatch.events import decode, encode
from costwatch.instrumentation import estimate
from costwatch.instrumentation.providers import Endpoint
from costwatch.instrumentation.record import CallId, CallRecord
from tests.instrumentation.conftest import HTTP

PATHS = {"chat": "/v1/chat/completions", "responses": "/v1/responses", "messages": "/v1/messages"}


def _event(api: str, body: dict[str, Any], sse: bytes, reason: str = "complete") -> Any:
    """An event from a recorded stream, as the emitter thread builds it."""
    provider = "anthropic" if api == "messages" else "openai"
    request = HTTP.Request("POST", "http://compat.local" + PATHS[api], json=body)
    sink: list[CallRecord] = []
    rec = CallRecord(Endpoint(provider, api), request, True, "app", CallId(), "0", None, None, sink.append)
    rec.response = HTTP.Response(200, headers={"content-type": "text/event-stream"})
    for block in sse.split(b"\n\n"):
        if block.strip():
            rec.add_chunk(block + b"\n\n")
    rec.finish(reason)
    event = rec.to_event()
    assert event is not None and decode(encode(event)) == event
    return event


def _sse(*events: Any, done: bool = False) -> bytes:
    out = b""
    for item in events:
        name, data = item if isinstance(item, tuple) else (None, item)
        out += (f"event: {name}\n" if name else "").encode() + b"data: " + json.dumps(data).encode() + b"\n\n"
    return out + (b"data: [DONE]\n\n" if done else b"")


def _chat(delta: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"id": "c", "model": "qwen3-32b", "choices": [{"index": 0, "delta": delta}], **extra}


CHAT_BODY = {"model": "qwen3-32b", "stream": True, "messages": [{"role": "user", "content": "x" * 40}]}
CHAT_INPUT = 10 + 4 + 3  # 40 chars, one message, the reply


def test_completed_chat_stream_without_usage_counts_content_reasoning_and_tool_calls() -> None:
    sse = _sse(
        _chat({"role": "assistant", "content": ""}),
        _chat({"reasoning_content": "r" * 40}),  # DeepSeek / vLLM reasoning text
        _chat({"reasoning": "r" * 8}),  # the other spelling
        _chat({"content": "c" * 20}),
        _chat(
            {"tool_calls": [{"index": 0, "id": "call_1", "function": {"name": "lookup", "arguments": ""}}]}
        ),
        _chat({"tool_calls": [{"index": 0, "function": {"arguments": '{"q": "abc"}'}}]}),
        _chat({}, finish_reason="stop"),
        done=True,
    )
    event = _event("chat", CHAT_BODY, sse)
    assert event.usage_source == "estimated"
    chars = 40 + 8 + 20 + len("lookup") + len('{"q": "abc"}')  # 86 → 22 tokens
    assert event.output_tokens == -(-chars // 4) == 22
    assert event.input_tokens == CHAT_INPUT
    assert event.reasoning_tokens is None  # unknown, not 0
    assert event.ttft_ms is not None


def test_every_choice_counts() -> None:
    two = {"id": "c", "model": "m", "choices": [{"index": 0, "delta": {"content": "a" * 8}},
                                                {"index": 1, "delta": {"content": "b" * 8}}]}  # fmt: skip
    event = _event("chat", CHAT_BODY, _sse(two, done=True))
    assert (event.usage_source, event.output_tokens) == ("estimated", 4)


def test_chat_stream_with_usage_is_still_provider() -> None:
    usage = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
    sse = _sse(
        _chat({"content": "c" * 400}), {"id": "c", "model": "m", "choices": [], "usage": usage}, done=True
    )
    event = _event("chat", CHAT_BODY, sse)
    assert (event.usage_source, event.input_tokens, event.output_tokens) == ("provider", 7, 3)


def test_responses_stream_completed_with_null_usage() -> None:
    sse = _sse(
        (
            "response.created",
            {"type": "response.created", "response": {"model": "gpt-oss-20b", "usage": None}},
        ),
        ("response.reasoning_text.delta", {"type": "response.reasoning_text.delta", "delta": "t" * 12}),
        (
            "response.output_item.added",
            {"type": "response.output_item.added", "item": {"type": "function_call", "name": "fn"}},
        ),
        ("response.output_text.delta", {"type": "response.output_text.delta", "delta": "o" * 16}),
        (
            "response.function_call_arguments.delta",
            {"type": "response.function_call_arguments.delta", "delta": "{}"},
        ),
        ("response.audio.delta", {"type": "response.audio.delta", "delta": "QUJD" * 100}),  # base64: not text
        (
            "response.completed",
            {"type": "response.completed", "response": {"model": "gpt-oss-20b", "usage": None}},
        ),
    )
    body = {"model": "gpt-oss-20b", "stream": True, "instructions": "i" * 8, "input": "q" * 12}
    event = _event("responses", body, sse)
    assert event.usage_source == "estimated"
    assert event.output_tokens == -(-(12 + 2 + 16 + 2) // 4) == 8
    assert event.input_tokens == 5 + 4 + 4 + 3  # 20 chars; instructions and input count as a message each
    assert event.response_model == "gpt-oss-20b"


def test_anthropic_stream_without_final_usage_keeps_message_start() -> None:
    start = {"model": "claude-sonnet-4-20250514", "usage": {"input_tokens": 30, "cache_read_input_tokens": 70,
                                                            "output_tokens": 1}}  # fmt: skip
    sse = _sse(
        ("message_start", {"type": "message_start", "message": start}),
        (
            "content_block_start",
            {"type": "content_block_start", "content_block": {"type": "tool_use", "name": "get"}},
        ),
        ("content_block_delta", {"type": "content_block_delta", "delta": {"partial_json": '{"a": 1}'}}),
        ("content_block_delta", {"type": "content_block_delta", "delta": {"thinking": "h" * 9}}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "tool_use"}}),  # no usage
        ("message_stop", {"type": "message_stop"}),
    )
    body = {"model": "claude-sonnet-4", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    event = _event("messages", body, sse)
    assert event.usage_source == "estimated"
    assert (event.input_tokens, event.cached_input_tokens) == (100, 70)  # reported by message_start: kept
    assert event.output_tokens == -(-(3 + 8 + 9) // 4) == 5


def test_anthropic_final_output_kept_when_input_is_unknown() -> None:
    sse = _sse(
        ("message_start", {"type": "message_start", "message": {"model": "claude-x"}}),  # no usage at all
        ("content_block_delta", {"type": "content_block_delta", "delta": {"text": "t" * 400}}),
        ("message_delta", {"type": "message_delta", "usage": {"output_tokens": 42}}),
        ("message_stop", {"type": "message_stop"}),
    )
    body = {
        "model": "claude-x",
        "stream": True,
        "system": "s" * 16,
        "messages": [{"role": "user", "content": "hi"}],
    }
    event = _event("messages", body, sse)
    assert event.usage_source == "estimated"
    assert event.output_tokens == 42  # the provider's count, not the text's 100
    assert event.input_tokens == 5 + 4 * 2 + 3  # 18 chars, system + one message, the reply


def test_stream_without_a_request_body_stays_missing() -> None:
    request = HTTP.Request("POST", "http://compat.local/v1/chat/completions")
    rec = CallRecord(
        Endpoint("openai", "chat"), request, True, "app", CallId(), "0", None, None, lambda r: None
    )
    rec.response = HTTP.Response(200, headers={"content-type": "text/event-stream"})
    rec.add_chunk(_sse(_chat({"content": "abc"}), done=True))
    rec.finish()
    event = rec.to_event()
    assert event.usage_source == "missing" and event.input_tokens is None and event.output_tokens is None


@pytest.mark.parametrize(
    ("body", "tokens"),
    [
        ({"messages": [{"role": "user", "content": "Say hello"}]}, 3 + 4 + 3),
        # content parts: the text counts, the image does not (base64 bytes are no token count)
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "x" * 20},
                            {
                                "type": "image_url",
                                "image_url": {"url": "data:image/png;base64," + "A" * 4000},
                            },
                        ],
                    }
                ]
            },
            5 + 4 + 3,
        ),
        # non-ASCII counts as characters, not as \\uXXXX escapes
        ({"messages": [{"role": "user", "content": "é" * 40}]}, 10 + 4 + 3),
        # an assistant's earlier tool call: name and arguments
        (
            {
                "messages": [
                    {
                        "role": "assistant",
                        "tool_calls": [
                            {
                                "id": "call_1",
                                "type": "function",
                                "function": {"name": "abcd", "arguments": "{}"},
                            }
                        ],
                    },
                    {"role": "tool", "tool_call_id": "call_1", "content": "12345678"},
                ]
            },
            4 + 4 * 2 + 3,
        ),
        # a Responses input with a reasoning item passed back: its encrypted content is no text
        (
            {
                "input": [
                    {"type": "reasoning", "id": "rs_1", "encrypted_content": "gAAA" * 500, "summary": []},
                    {"type": "function_call_output", "call_id": "c1", "output": "o" * 16},
                ]
            },
            4 + 4 * 2 + 3,
        ),
        # tools as compact JSON
        ({"messages": [], "tools": [{"type": "function", "function": {"name": "f"}}]}, 12 + 3),
        # the completions prompt
        ({"prompt": "p" * 8}, 2 + 3),
        # no prompt member known: the whole body, as before
        ({"model": "m", "foo": "bar"}, 7),  # 25 chars
        ({}, None),
    ],
)
def test_input_estimate(body: dict[str, Any], tokens: int | None) -> None:
    assert estimate.input_tokens(body) == tokens
