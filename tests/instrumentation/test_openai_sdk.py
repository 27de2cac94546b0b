"""The real openai SDK (sync, async, streaming) against the fake server, instrumented."""

from __future__ import annotations

import asyncio
from typing import Any

import openai
import pytest

from costwatch.instrumentation import instrument, uninstrument
from costwatch.settings import ClientSettings
from tests.fakes.provider import CHAT_USAGE, TEXT, TEXT_PIECES, FakeProvider
from tests.instrumentation.conftest import RecordingEmitter

MESSAGES = [{"role": "user", "content": "Say hello"}]


def client(fake: FakeProvider, **kw: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=fake.openai_url, api_key="sk-test-key-000000000000", **kw)


def aclient(fake: FakeProvider, **kw: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=fake.openai_url, api_key="sk-test-key-000000000000", **kw)


def dump_all(items: list[Any]) -> list[dict]:
    return [item.model_dump() for item in items]


def test_chat_sync_exact_usage(fake_provider: FakeProvider, instrumented: RecordingEmitter) -> None:
    result = client(fake_provider).chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert result.choices[0].message.content == TEXT
    [event] = instrumented.wait_events(1)
    assert (event.provider, event.operation, event.stream) == ("openai", "chat", False)
    assert (event.request_model, event.response_model, event.model) == (
        "gpt-4o",
        "gpt-4o-snap",
        "gpt-4o-snap",
    )
    assert (event.input_tokens, event.output_tokens) == (25, 9)
    assert (event.cached_input_tokens, event.reasoning_tokens, event.cache_write_tokens) == (10, 3, None)
    assert event.usage_source == "provider"
    assert event.http_status == 200 and event.error_class is None
    assert event.retry_attempt == 0 and event.app == "test-app"
    assert event.server_address == fake_provider.url.removeprefix("http://")
    assert (event.ratelimit_remaining_requests, event.ratelimit_remaining_tokens) == (9999, 1999000)
    assert (event.ratelimit_limit_requests, event.ratelimit_limit_tokens) == (10000, 2000000)
    assert event.latency_ms is not None and event.latency_ms > 0
    assert event.ttft_ms is None
    assert instrumented.to_event_threads == {"fake-emitter"}


def test_all_shapes_async(fake_provider: FakeProvider, instrumented: RecordingEmitter) -> None:
    async def main() -> None:
        c = aclient(fake_provider)
        await c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        await c.responses.create(model="o3", input="hi")
        await c.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
        await c.completions.create(model="gpt-3.5-turbo-instruct", prompt="hi")
        await c.close()

    asyncio.run(main())
    events = instrumented.wait_events(4)
    got = [
        (e.operation, e.input_tokens, e.output_tokens, e.cached_input_tokens, e.reasoning_tokens)
        for e in events
    ]
    assert got == [
        ("chat", 25, 9, 10, 3),
        ("responses", 31, 12, 8, 4),
        ("embeddings", 6, 0, None, None),
        ("completions", 5, 4, None, None),
    ]
    assert all(e.usage_source == "provider" for e in events)


def test_chat_stream_sync_usage_injected_invisibly(
    fake_provider: FakeProvider, instrumented: RecordingEmitter
) -> None:
    stream = client(fake_provider).chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
    chunks = list(stream)
    # the app sees exactly what it would have seen: no usage chunk, no usage member
    assert [c.choices[0].delta.content for c in chunks] == ["", *TEXT_PIECES, None]
    assert all(c.usage is None and "usage" not in c.model_fields_set for c in chunks)
    [event] = instrumented.wait_events(1)
    assert fake_provider.requests[0].body["stream_options"] == {"include_usage": True}
    assert (event.input_tokens, event.output_tokens, event.usage_source) == (25, 9, "provider")
    assert event.stream is True
    assert event.ttft_ms is not None and 0 < event.ttft_ms <= event.latency_ms


def test_stream_results_identical_with_and_without(
    fake_provider: FakeProvider, emitter: RecordingEmitter
) -> None:
    def run() -> list[dict]:
        c = client(fake_provider)
        out = dump_all(list(c.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)))
        out.append(c.chat.completions.create(model="gpt-4o", messages=MESSAGES).model_dump())
        out += dump_all(list(c.responses.create(model="gpt-4.1", input="x", stream=True)))
        return out

    baseline = run()
    instrument(ClientSettings(app="t", inject_stream_usage="all"), emitter=emitter)
    try:
        assert run() == baseline
    finally:
        uninstrument()
    assert len(emitter.wait_events(3)) == 3


def test_user_asked_for_usage_keeps_usage_chunk(
    fake_provider: FakeProvider, instrumented: RecordingEmitter
) -> None:
    stream = client(fake_provider).chat.completions.create(
        model="gpt-4o", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks[-1].choices == [] and chunks[-1].usage.prompt_tokens == CHAT_USAGE["prompt_tokens"]
    [event] = instrumented.wait_events(1)
    assert (event.input_tokens, event.output_tokens) == (25, 9)


def test_no_injection_when_off_completed_stream_is_estimated(
    fake_provider: FakeProvider, make_instrumented
) -> None:
    emitter = make_instrumented(inject_stream_usage="openai")  # the fake is not api.openai.com
    list(client(fake_provider).chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True))
    [event] = emitter.wait_events(1)
    assert "stream_options" not in fake_provider.requests[0].body
    # complete, but no usage in it: estimated, like an abandoned stream — never NULL
    assert event.usage_source == "estimated"
    assert event.output_tokens == 5  # "Hello from the fake": 19 chars → 5 tokens
    assert event.input_tokens == 3 + 4 + 3  # "Say hello": 9 chars → 3, one message (4), the reply (3)
    assert event.reasoning_tokens is None and event.cached_input_tokens is None
    assert event.ttft_ms is not None


def test_stream_async_responses(fake_provider: FakeProvider, instrumented: RecordingEmitter) -> None:
    async def main() -> list[Any]:
        c = aclient(fake_provider)
        events = [e async for e in await c.responses.create(model="gpt-5", input="hi", stream=True)]
        await c.close()
        return events

    events = asyncio.run(main())
    assert events[-1].type == "response.completed"
    [event] = instrumented.wait_events(1)
    assert (event.operation, event.input_tokens, event.output_tokens, event.reasoning_tokens) == (
        "responses",
        31,
        12,
        4,
    )
    assert event.response_model == "gpt-5-snap" and event.ttft_ms is not None


def test_abandoned_stream_is_estimated(fake_provider: FakeProvider, instrumented: RecordingEmitter) -> None:
    c = client(fake_provider, default_headers={"x-fake-chunk-delay": "0.05"})
    stream = c.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
    it = iter(stream)
    next(it)  # role chunk
    assert next(it).choices[0].delta.content == "Hel"
    stream.close()
    [event] = instrumented.wait_events(1)
    assert event.usage_source == "estimated"
    assert event.output_tokens == 1  # "Hel": 3 chars → 1 token
    assert event.input_tokens == 3 + 4 + 3  # "Say hello" → 3, one message → 4, the reply → 3
    assert event.error_class is None and event.http_status == 200


def test_broken_stream_is_connection_error(fake_provider: FakeProvider, emitter: RecordingEmitter) -> None:
    def run() -> tuple[list[str | None], type, str]:
        c = client(fake_provider, default_headers={"x-fake-scenario": "drop"})
        seen: list[str | None] = []
        try:
            for chunk in c.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True):
                seen.append(chunk.choices[0].delta.content)
        except Exception as exc:
            return seen, type(exc), str(exc)
        raise AssertionError("the stream should break")

    baseline = run()
    instrument(ClientSettings(app="t", inject_stream_usage="all"), emitter=emitter)
    try:
        assert run() == baseline
    finally:
        uninstrument()
    [event] = emitter.wait_events(1)
    assert event.error_class == "connection"
    assert event.usage_source == "estimated"
    assert event.output_tokens == 2  # "Hel" + "lo " = 6 chars


@pytest.mark.parametrize(
    ("status", "error_class", "exc_type"),
    [
        (400, "bad_request", openai.BadRequestError),
        (401, "authentication", openai.AuthenticationError),
        (403, "permission", openai.PermissionDeniedError),
        (404, "not_found", openai.NotFoundError),
        (422, "unprocessable", openai.UnprocessableEntityError),
        (500, "server", openai.InternalServerError),
    ],
)
def test_error_classes_and_identical_exceptions(
    fake_provider: FakeProvider, emitter: RecordingEmitter, status: int, error_class: str, exc_type: type
) -> None:
    def run() -> tuple[type, str, int]:
        c = client(fake_provider, max_retries=0, default_headers={"x-fake-scenario": f"status:{status}"})
        with pytest.raises(exc_type) as info:
            c.chat.completions.create(model="gpt-4o", messages=MESSAGES)
        return type(info.value), str(info.value), info.value.status_code

    baseline = run()
    instrument(ClientSettings(app="t"), emitter=emitter)
    try:
        assert run() == baseline
    finally:
        uninstrument()
    [event] = emitter.wait_events(1)
    assert (event.http_status, event.error_class) == (status, error_class)
    assert event.usage_source == "missing" and event.input_tokens is None


def test_retries_share_call_id(fake_provider: FakeProvider, instrumented: RecordingEmitter) -> None:
    c = client(fake_provider, max_retries=3, default_headers={"x-fake-scenario": "fail-then-ok:429:2"})
    result = c.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert result.choices[0].message.content == TEXT
    c.chat.completions.create(model="gpt-4o", messages=MESSAGES)  # a second logical call
    events = instrumented.wait_events(4)
    assert [e.retry_attempt for e in events] == [0, 1, 2, 0]
    assert [e.error_class for e in events] == ["rate_limit", "rate_limit", None, None]
    assert len({e.call_id for e in events[:3]}) == 1
    assert events[3].call_id != events[0].call_id
    assert len({e.id for e in events}) == 4
    assert events[2].input_tokens == 25 and events[0].input_tokens is None


def test_call_id_is_the_idempotency_key_else_the_first_attempts_event_id(
    fake_provider: FakeProvider, instrumented: RecordingEmitter
) -> None:
    c = client(fake_provider, max_retries=3, default_headers={"x-fake-scenario": "fail-then-ok:429:1"})
    c.chat.completions.create(
        model="gpt-4o", messages=MESSAGES, extra_headers={"Idempotency-Key": "order-42"}
    )
    client(fake_provider).chat.completions.create(model="gpt-4o", messages=MESSAGES)
    events = instrumented.wait_events(3)
    assert [(e.retry_attempt, e.error_class) for e in events] == [(0, "rate_limit"), (1, None), (0, None)]
    assert [e.call_id for e in events[:2]] == ["order-42", "order-42"]  # both attempts
    assert events[2].call_id == events[2].id  # no key: the first attempt's event id names the call


def test_retries_async_share_call_id_per_task(
    fake_provider: FakeProvider, instrumented: RecordingEmitter
) -> None:
    async def main() -> None:
        c = aclient(fake_provider, max_retries=2)

        async def one(key: str) -> None:
            await c.chat.completions.create(
                model="gpt-4o",
                messages=MESSAGES,
                extra_headers={"x-fake-scenario": "fail-then-ok:500:1", "x-fake-key": key},
            )

        await asyncio.gather(one("a"), one("b"))
        await c.close()

    asyncio.run(main())
    events = instrumented.wait_events(4)
    by_call: dict[str, list[int]] = {}
    for e in events:
        by_call.setdefault(e.call_id, []).append(e.retry_attempt)
    assert sorted(sorted(v) for v in by_call.values()) == [[0, 1], [0, 1]]


def test_timeout_is_classified(fake_provider: FakeProvider, instrumented: RecordingEmitter) -> None:
    c = client(fake_provider, max_retries=0, timeout=0.05, default_headers={"x-fake-scenario": "slow:0.5"})
    with pytest.raises(openai.APITimeoutError):
        c.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    [event] = instrumented.wait_events(1)
    assert event.error_class == "timeout" and event.http_status is None


def test_missing_usage_is_none_not_zero(fake_provider: FakeProvider, instrumented: RecordingEmitter) -> None:
    c = client(fake_provider, default_headers={"x-fake-scenario": "no-usage"})
    c.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    [event] = instrumented.wait_events(1)
    assert event.usage_source == "missing"
    assert (event.input_tokens, event.output_tokens, event.cached_input_tokens) == (None, None, None)


def test_user_from_request_body_and_attribution(
    fake_provider: FakeProvider, instrumented: RecordingEmitter
) -> None:
    import costwatch

    c = client(fake_provider)
    c.chat.completions.create(model="gpt-4o", messages=MESSAGES, user="body-user")
    with costwatch.attribute(user="ctx-user", tags={"team": "search", "key": "sk-abcdefghijklmnopqrstuvwx"}):
        c.chat.completions.create(model="gpt-4o", messages=MESSAGES, user="body-user")
    c.chat.completions.create(model="gpt-4o", messages=MESSAGES, user="card 4111 1111 1111 1111")
    events = instrumented.wait_events(3)
    assert events[0].user == "body-user" and events[0].tags == {}
    assert events[1].user == "ctx-user"
    assert events[1].tags == {"team": "search", "key": "sk-[redacted]"}
    assert events[2].user == "card [card]"


def test_abandoned_stream_async(fake_provider: FakeProvider, instrumented: RecordingEmitter) -> None:
    async def main() -> str | None:
        c = aclient(fake_provider, default_headers={"x-fake-chunk-delay": "0.05"})
        stream = await c.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
        it = stream.__aiter__()
        await it.__anext__()
        content = (await it.__anext__()).choices[0].delta.content
        await stream.close()
        await c.close()
        return content

    assert asyncio.run(main()) == "Hel"
    [event] = instrumented.wait_events(1)
    assert (event.usage_source, event.output_tokens, event.stream) == ("estimated", 1, True)


def test_concurrent_threads_keep_their_own_call_ids(
    fake_provider: FakeProvider, instrumented: RecordingEmitter
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    c = client(fake_provider, max_retries=2)

    def one(key: str) -> None:
        c.chat.completions.create(
            model="gpt-4o",
            messages=MESSAGES,
            extra_headers={"x-fake-scenario": "fail-then-ok:503:1", "x-fake-key": key},
        )

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one, ["a", "b", "c", "d"]))
    events = instrumented.wait_events(8)
    by_call: dict[str, list[tuple[int, int | None]]] = {}
    for e in events:
        by_call.setdefault(e.call_id, []).append((e.retry_attempt, e.http_status))
    assert sorted(sorted(v) for v in by_call.values()) == [[(0, 503), (1, 200)]] * 4


def test_streamed_call_with_error_status(fake_provider: FakeProvider, instrumented: RecordingEmitter) -> None:
    c = client(fake_provider, max_retries=0, default_headers={"x-fake-scenario": "status:429"})
    with pytest.raises(openai.RateLimitError):
        c.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
    [event] = instrumented.wait_events(1)
    assert (event.stream, event.http_status, event.error_class, event.usage_source) == (
        True,
        429,
        "rate_limit",
        "missing",
    )


def test_with_streaming_response_json_body(
    fake_provider: FakeProvider, instrumented: RecordingEmitter
) -> None:
    c = client(fake_provider)
    with c.chat.completions.with_streaming_response.create(model="gpt-4o", messages=MESSAGES) as response:
        assert response.parse().choices[0].message.content == TEXT
    [event] = instrumented.wait_events(1)
    assert (event.stream, event.input_tokens, event.output_tokens, event.usage_source) == (
        False,
        25,
        9,
        "provider",
    )
    assert event.ttft_ms is None
