"""Small pure pieces: endpoint recognition, SSE parsing, the usage filter, scrubbing, bounds."""

from __future__ import annotations

import gc
import json

import pytest

from costwatch.context import Attribution
from costwatch.instrumentation import anthropic as anthropic_usage
from costwatch.instrumentation import estimate, openai_stream
from costwatch.instrumentation import openai as openai_usage
from costwatch.instrumentation import record as record_module
from costwatch.instrumentation.convert import classify_exception, scrub
from costwatch.instrumentation.providers import Endpoint, StreamFacts, Usage, recognize
from costwatch.instrumentation.record import CallId, CallRecord
from costwatch.instrumentation.sse import SSEvent, UsageChunkFilter, iter_events
from tests.instrumentation.conftest import HTTP


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/v1/chat/completions", ("openai", "chat")),
        ("/chat/completions", ("openai", "chat")),
        ("/api/openai/v1/chat/completions/", ("openai", "chat")),
        ("/v1/responses", ("openai", "responses")),
        ("/v1/embeddings", ("openai", "embeddings")),
        ("/v1/completions", ("openai", "completions")),
        ("/v1/messages", ("anthropic", "messages")),
        ("/openai/deployments/prod-4o/chat/completions", ("azure.openai", "chat")),
        ("/openai/deployments/emb/embeddings", ("azure.openai", "embeddings")),
        ("/v1/threads/t_1/messages", None),
        ("/v1/messages/count_tokens", None),
        ("/v1/responses/resp_1", None),
        ("/v1/models", None),
        ("/", None),
    ],
)
def test_recognize(path: str, expected: tuple[str, str] | None) -> None:
    got = recognize(path)
    assert (tuple(got) if got else None) == expected


def test_sse_events_split_across_chunks_and_crlf() -> None:
    chunks = [(b"event: a\nda", 1.0), (b'ta: {"x":1}\n\n: comment\n\ndata: 2\r\n\r\ndata: tail', 2.0)]
    assert list(iter_events(chunks)) == [
        SSEvent("a", '{"x":1}', 2.0),
        SSEvent(None, "2", 2.0),
        SSEvent(None, "tail", 2.0),
    ]


def test_usage_filter_drops_only_the_injected_parts() -> None:
    events = [
        b'data: {"id":"a","choices":[{"delta":{"content":"hi"}}],"usage":null}\n\n',
        b'data: {"id":"a","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1}}\n\n',
        b"data: [DONE]\n\n",
    ]
    raw = b"".join(events)
    f = UsageChunkFilter()
    out = b"".join(f.feed(raw[i : i + 7]) for i in range(0, len(raw), 7)) + f.tail()
    assert out == b'data: {"id":"a","choices":[{"delta":{"content":"hi"}}]}\n\ndata: [DONE]\n\n'


def test_scrub() -> None:
    assert scrub("key sk-proj-abcdefghijklmnop end") == "key sk-[redacted] end"
    assert scrub("4111-1111-1111-1111") == "[card]"
    assert scrub("order 12345") == "order 12345"
    assert scrub("x" * 300) == "x" * 256
    assert scrub(None) is None


def test_classify_exception() -> None:
    assert classify_exception(HTTP.ReadTimeout) == "timeout"
    assert classify_exception(HTTP.ConnectError) == "connection"
    assert classify_exception(HTTP.RemoteProtocolError) == "connection"
    assert classify_exception(ValueError) == "other"


def test_openai_usage_variants() -> None:
    assert openai_usage.normalize_usage("chat", {"prompt_tokens": 5}) == Usage(5, None)
    assert openai_usage.normalize_usage("chat", None) is None
    assert openai_usage.normalize_usage("chat", {"prompt_tokens": True, "completion_tokens": -1}) == Usage(
        None, None
    )
    assert openai_usage.normalize_usage("embeddings", {"prompt_tokens": 3, "total_tokens": 3}) == Usage(3, 0)
    # a compatible server answering chat with Responses-style names
    assert openai_usage.normalize_usage("chat", {"input_tokens": 4, "output_tokens": 2}) == Usage(4, 2)


def test_billing_facts_from_usage_and_body() -> None:
    """Tier, speed, geography, cache lifetimes and reported cost; junk is 'unknown', never 0."""
    usage = anthropic_usage.normalize_usage(
        {
            "input_tokens": 10,
            "cache_read_input_tokens": 20,
            "cache_creation_input_tokens": 30,
            "cache_creation": {"ephemeral_5m_input_tokens": 12, "ephemeral_1h_input_tokens": 18},
            "output_tokens": 4,
            "service_tier": "priority",
            "speed": "fast",
            "inference_geo": "us",
        }
    )
    assert usage == Usage(60, 4, 20, 30, None, 12, 18, "priority", "fast", "us", None)
    junk = anthropic_usage.normalize_usage(
        {"input_tokens": 1, "output_tokens": 1, "cache_creation": [1], "service_tier": 3, "speed": ""}
    )
    assert junk == Usage(1, 1)
    for cost, expected in (
        (0.25, 0.25),
        (3, 3.0),
        (True, None),
        (-1, None),
        (float("nan"), None),
        ("1", None),
    ):
        got = openai_usage.normalize_usage("chat", {"prompt_tokens": 1, "completion_tokens": 1, "cost": cost})
        assert got is not None and got.cost_usd == expected, cost
    # The tier is the response's (a member of the body, not of usage).
    body = {"model": "m", "service_tier": "flex", "usage": {"prompt_tokens": 2, "completion_tokens": 1}}
    assert openai_usage.from_body("chat", body)[0] == Usage(2, 1, service_tier="flex")
    assert openai_usage.from_body("chat", {**body, "service_tier": None})[0] == Usage(2, 1)
    assert openai_usage.from_body("chat", {"service_tier": "flex"})[0] is None


def _chat_chunk(tier: str, usage: dict | None = None, content: str | None = None) -> bytes:
    data = {
        "model": "m",
        "service_tier": tier,
        "choices": [{"delta": {"content": content}}] if content else [],
    }
    if usage is not None:
        data["usage"] = usage
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


def test_service_tier_in_chat_streams_both_paths() -> None:
    """The byte-level scan and the general one both read the tier of the usage chunk."""
    usage = {"prompt_tokens": 9, "completion_tokens": 2}
    raw = [_chat_chunk("priority", content="Hi"), _chat_chunk("priority", usage), b"data: [DONE]\n\n"]
    chunks = [(c, float(i)) for i, c in enumerate(raw)]
    fast = openai_stream.scan_chunks("chat", chunks)
    assert fast is not None and fast.usage == Usage(9, 2, service_tier="priority")
    general = openai_stream.scan_stream("chat", list(iter_events(chunks)))
    assert general.usage == Usage(9, 2, service_tier="priority")
    full = openai_stream.scan_stream("chat", list(iter_events(chunks[:2])))  # no [DONE]: decoded in full
    assert full.usage == Usage(9, 2, service_tier="priority")


def test_estimated_stream_keeps_the_tier_not_a_reported_cost() -> None:
    partial = Usage(100, 3, 40, 10, None, 4, 6, "batch", "fast", "us", 0.5)
    facts = StreamFacts(partial, False, "m", None, 40, False)
    usage, source = estimate.stream_usage(b"", facts, partial)
    assert source == "estimated"
    assert usage == Usage(100, 10, 40, 10, None, 4, 6, "batch", "fast", "us", None)


def test_anthropic_stream_cumulative_overrides() -> None:
    def ev(data: dict) -> SSEvent:
        return SSEvent(data["type"], json.dumps(data), 1.0)

    events = [
        ev(
            {
                "type": "message_start",
                "message": {"model": "m", "usage": {"input_tokens": 5, "output_tokens": 1}},
            }
        ),
        ev({"type": "message_delta", "usage": {"output_tokens": 7, "cache_read_input_tokens": 50}}),
        ev({"type": "message_delta", "usage": {"output_tokens": 9}}),
        ev({"type": "message_stop"}),
    ]
    facts = anthropic_usage.scan_stream(events)
    assert facts.usage == Usage(55, 9, 50, None, None)
    assert facts.usage_final and facts.terminal and facts.response_model == "m"
    assert facts.first_content_t is None


class _Sink:
    def __init__(self) -> None:
        self.items: list[CallRecord] = []

    def __call__(self, item: CallRecord) -> None:
        self.items.append(item)


def _record(sink: _Sink, stream: bool = True) -> CallRecord:
    request = HTTP.Request("POST", "http://h/v1/chat/completions", json={"model": "m", "stream": stream})
    return CallRecord(
        Endpoint("openai", "chat"), request, stream, "app", CallId(), "0", Attribution("u", {}), None, sink
    )


def test_stream_memory_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(record_module, "HEAD_BYTES", 1000)
    monkeypatch.setattr(record_module, "TAIL_BYTES", 1000)
    sink = _Sink()
    rec = _record(sink)
    chunk = b'data: {"choices":[{"delta":{"content":"abcd"}}]}\n\n'
    for _ in range(1000):
        rec.add_chunk(chunk)
    kept = sum(len(c) for c, _ in rec.chunks_head) + sum(len(c) for c, _ in rec.chunks_tail or ())
    assert kept <= 2000 + len(chunk) and rec.truncated
    rec.add_chunk(
        b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2000}}\n\ndata: [DONE]\n\n'
    )
    rec.response = HTTP.Response(200, headers={"content-type": "text/event-stream"})
    rec.finish("closed")
    rec.finish("complete")  # latch: once only
    assert sink.items == [rec]
    event = rec.to_event()
    assert (event.input_tokens, event.output_tokens, event.usage_source) == (3, 2000, "provider")
    assert event.ttft_ms is not None and event.user == "u"


def test_dropped_stream_is_finished_by_gc() -> None:
    from costwatch.instrumentation.streams import stream_classes

    sync_proxy, _ = stream_classes(HTTP)
    sink = _Sink()
    rec = _record(sink)
    proxy = sync_proxy(HTTP.ByteStream(b'data: {"choices":[{"delta":{"content":"abcdefgh"}}]}\n\n'), rec)
    it = iter(proxy)
    next(it)
    del it, proxy
    gc.collect()
    assert sink.items == [rec] and rec.end_reason in ("dropped", "closed")
    rec.response = HTTP.Response(200, headers={"content-type": "text/event-stream"})
    event = rec.to_event()
    assert (event.usage_source, event.output_tokens) == ("estimated", 2)


def test_usage_filter_crlf_and_oversized_events() -> None:
    raw = (
        b'data: {"choices":[{"delta":{"content":"a"}}],"usage":null}\r\n\r\n'
        b'data: {"choices":[],"usage":{"prompt_tokens":1}}\r\n\r\ndata: [DONE]\r\n\r\n'
    )
    f = UsageChunkFilter()
    out = b"".join(f.feed(raw[i : i + 5]) for i in range(0, len(raw), 5)) + f.tail()
    assert out == b'data: {"choices":[{"delta":{"content":"a"}}]}\r\n\r\ndata: [DONE]\r\n\r\n'
    big = UsageChunkFilter()
    blob = b"data: " + b"x" * (UsageChunkFilter.MAX_PENDING + 10)
    assert big.feed(blob) == blob and big.tail() == b""


def test_event_ids_are_time_ordered_uuid7() -> None:
    import uuid

    from costwatch.events import new_event_id

    start_ms = 1_767_322_800_123
    ids = [new_event_id((start_ms + i + 0.5) / 1000) for i in range(2_000)]  # mid-millisecond
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)  # one id per millisecond here: the 48-bit time prefix orders them
    for i, value in enumerate(ids[:50]):
        parsed = uuid.UUID(value)
        assert str(parsed) == value
        assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
        assert parsed.int >> 80 == start_ms + i  # unix_ts_ms, RFC 9562
