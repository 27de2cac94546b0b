"""The real anthropic SDK (sync, async, streaming) against the fake server, instrumented."""

from __future__ import annotations

import asyncio
from typing import Any

import anthropic
import pytest

from costwatch.instrumentation import instrument, uninstrument
from costwatch.settings import ClientSettings
from tests.fakes.provider import TEXT, FakeProvider
from tests.instrumentation.conftest import RecordingEmitter

MESSAGES = [{"role": "user", "content": "Say hello"}]
# Anthropic input 14 + cache read 100 + cache write 20 (normalized: all prompt tokens)
EXPECTED = (134, 11, 100, 20)


def client(fake: FakeProvider, **kw: Any) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=fake.anthropic_url, api_key="test-key", **kw)


def usage(e: Any) -> tuple:
    return (e.input_tokens, e.output_tokens, e.cached_input_tokens, e.cache_write_tokens)


def test_messages_sync(fake_provider: FakeProvider, instrumented: RecordingEmitter) -> None:
    message = client(fake_provider).messages.create(
        model="claude-sonnet-4", max_tokens=64, messages=MESSAGES, metadata={"user_id": "u-42"}
    )
    assert message.content[0].text == TEXT
    [event] = instrumented.wait_events(1)
    assert (event.provider, event.operation) == ("anthropic", "messages")
    assert usage(event) == EXPECTED and event.reasoning_tokens is None
    assert (event.request_model, event.model) == ("claude-sonnet-4", "claude-sonnet-4-snap")
    assert event.user == "u-42"
    assert (event.ratelimit_remaining_requests, event.ratelimit_remaining_tokens) == (3999, 399000)
    assert (event.ratelimit_limit_requests, event.ratelimit_limit_tokens) == (4000, 400000)


def test_messages_stream_sync_and_async(fake_provider: FakeProvider, instrumented: RecordingEmitter) -> None:
    with client(fake_provider).messages.stream(model="claude-opus-4", max_tokens=64, messages=MESSAGES) as s:
        assert s.get_final_text() == TEXT

    async def main() -> str:
        c = anthropic.AsyncAnthropic(base_url=fake_provider.anthropic_url, api_key="k")
        out = []
        async for ev in await c.messages.create(
            model="claude-3-5-haiku", max_tokens=64, messages=MESSAGES, stream=True
        ):
            if ev.type == "content_block_delta":
                out.append(ev.delta.text)
        await c.close()
        return "".join(out)

    assert asyncio.run(main()) == TEXT
    events = instrumented.wait_events(2)
    assert [usage(e) for e in events] == [EXPECTED, EXPECTED]
    assert [e.model for e in events] == ["claude-opus-4-snap", "claude-3-5-haiku-snap"]
    assert all(e.stream and e.ttft_ms is not None and e.usage_source == "provider" for e in events)


def test_results_identical_with_and_without(fake_provider: FakeProvider, emitter: RecordingEmitter) -> None:
    def run() -> list:
        c = client(fake_provider)
        out = [c.messages.create(model="claude-sonnet-4", max_tokens=8, messages=MESSAGES).model_dump()]
        with c.messages.stream(model="claude-sonnet-4", max_tokens=8, messages=MESSAGES) as s:
            out += [e.model_dump() for e in s]
        return out

    baseline = run()
    instrument(ClientSettings(app="t", inject_stream_usage="all"), emitter=emitter)
    try:
        assert run() == baseline
    finally:
        uninstrument()
    assert len(emitter.wait_events(2)) == 2


def test_retries_and_errors(fake_provider: FakeProvider, instrumented: RecordingEmitter) -> None:
    c = client(fake_provider, max_retries=2, default_headers={"x-fake-scenario": "fail-then-ok:529:2"})
    c.messages.create(model="claude-sonnet-4", max_tokens=8, messages=MESSAGES)
    with pytest.raises(anthropic.RateLimitError):
        client(
            fake_provider, max_retries=0, default_headers={"x-fake-scenario": "status:429"}
        ).messages.create(model="claude-sonnet-4", max_tokens=8, messages=MESSAGES)
    events = instrumented.wait_events(4)
    assert [(e.retry_attempt, e.http_status, e.error_class) for e in events] == [
        (0, 529, "server"),
        (1, 529, "server"),
        (2, 200, None),
        (0, 429, "rate_limit"),
    ]
    assert len({e.call_id for e in events[:3]}) == 1 and events[3].call_id != events[0].call_id


def test_abandoned_stream_estimated(fake_provider: FakeProvider, instrumented: RecordingEmitter) -> None:
    c = client(fake_provider, default_headers={"x-fake-chunk-delay": "0.05"})
    stream = c.messages.create(model="claude-sonnet-4", max_tokens=64, messages=MESSAGES, stream=True)
    for ev in stream:
        if ev.type == "content_block_delta":
            break
    stream.close()
    [event] = instrumented.wait_events(1)
    # message_start gave the exact input side; output estimated from "Hel"
    assert event.usage_source == "estimated"
    assert (event.input_tokens, event.output_tokens, event.cached_input_tokens) == (134, 1, 100)
