"""Fuzzed provider responses through the real OpenAI and Anthropic SDKs: the app's outcome with
costwatch equals its outcome without, parsing problems never reach the app, every event produced
still validates on the wire, and ``uninstrument()`` puts the exact original functions back.

A loopback server answers whatever the example says: JSON bodies with usage of the wrong types,
huge or negative numbers, missing usage, truncated or non-JSON bodies, non-UTF-8 bytes; SSE
streams with garbage, torn and non-UTF-8 events.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import anthropic
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from costwatch.instrumentation import instrument, patch, uninstrument
from costwatch.instrumentation.record import guard
from costwatch.settings import ClientSettings
from tests.instrumentation.conftest import RecordingEmitter

pytestmark = pytest.mark.slow

EXAMPLES = int(__import__("os").environ.get("CW_PROVIDER_EXAMPLES", "300"))
_reply: dict[str, Any] = {}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    wbufsize = -1  # one send per reply (flushed by handle_one_request) and no Nagle delay:
    disable_nagle_algorithm = True  # separate small sends waited ~40 ms for the client's ACK

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        status, ctype, chunks = _reply["status"], _reply["ctype"], _reply["chunks"]
        self.send_response(status)
        self.send_header("content-type", ctype)
        if _reply["chunked"]:
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            for chunk in chunks:
                if chunk:
                    self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
        else:
            body = b"".join(chunks)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()


WEIRD = [None, "12", -1, 10**30, 2**63, 1.5, 1e308, [], {}, True, "NaN", {"cached_tokens": "x"}]


def _usage(rng: random.Random, anthropic_shape: bool) -> Any:
    if rng.random() < 0.15:
        return rng.choice(WEIRD)
    keys = (
        ["input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens"]
        if anthropic_shape
        else [
            "prompt_tokens",
            "completion_tokens",
            "total_tokens",
            "prompt_tokens_details",
            "completion_tokens_details",
        ]
    )
    usage = {k: rng.randint(0, 1000) for k in keys}
    for _ in range(rng.randint(0, 3)):
        key = rng.choice([*keys, "input_tokens_details", "bogus"])
        if rng.random() < 0.3:
            usage.pop(key, None)
        else:
            usage[key] = rng.choice(WEIRD)
    return usage


def _body(rng: random.Random, api: str) -> dict[str, Any]:
    if api == "messages":
        body: dict[str, Any] = {"id": "msg", "type": "message", "role": "assistant", "model": "claude-x",
                                "content": [{"type": "text", "text": "hi"}], "stop_reason": "end_turn",
                                "usage": _usage(rng, True)}  # fmt: skip
    else:
        body = {"id": "c", "object": "chat.completion", "created": 1, "model": "gpt-x",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
                "usage": _usage(rng, False)}  # fmt: skip
    if rng.random() < 0.2:
        body.pop("usage")
    if rng.random() < 0.1:
        body["model"] = rng.choice(WEIRD)
    return body


def _sse(rng: random.Random, api: str) -> list[bytes]:
    if api == "messages":
        events = [
            b'event: message_start\ndata: {"type":"message_start","message":{"id":"m","type":"message","role":"assistant","model":"claude-x","content":[],"usage":'
            + json.dumps(_usage(rng, True)).encode() + b"}}\n\n",
            b'event: content_block_start\ndata: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}\n\n',
            b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"hi"}}\n\n',
            b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n',
            b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":'
            + json.dumps(_usage(rng, True)).encode() + b"}\n\n",
            b'event: message_stop\ndata: {"type":"message_stop"}\n\n',
        ]  # fmt: skip
    else:
        chunk = '{"id":"c","object":"chat.completion.chunk","created":1,"model":"gpt-x","choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}]}'
        usage = json.dumps({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "gpt-x",
                            "choices": [], "usage": _usage(rng, False)})  # fmt: skip
        events = [f"data: {chunk}\n\n".encode(), f"data: {usage}\n\n".encode(), b"data: [DONE]\n\n"]
    for _ in range(rng.randint(0, 3)):
        i = rng.randrange(len(events))
        kind = rng.randrange(5)
        if kind == 0:
            events[i] = events[i][: rng.randrange(len(events[i]))]  # torn
        elif kind == 1:
            events.insert(i, b"data: \xff\xfe{not utf-8\n\n")
        elif kind == 2:
            events.insert(i, b"data: {broken json\n\n")
        elif kind == 3:
            events.insert(i, b": comment\r\n\r\n")
        else:
            events.insert(i, bytes(rng.randrange(256) for _ in range(rng.randint(1, 40))))
    return events


def _configure(rng: random.Random) -> tuple[str, bool]:
    api = rng.choice(["chat", "messages"])
    stream = rng.random() < 0.5
    status = rng.choice([200] * 8 + [400, 500, 429])
    if stream and status == 200:
        chunks, ctype = _sse(rng, api), rng.choice(["text/event-stream"] * 4 + ["application/json", ""])
    else:
        raw = json.dumps(_body(rng, api)).encode()
        kind = rng.randrange(6)
        if kind == 0:
            raw = raw[: rng.randrange(len(raw) + 1)]
        elif kind == 1:
            raw = raw.replace(b'"hi"', b'"h\xff\xfe"')
        chunks, ctype = [raw], rng.choice(["application/json"] * 4 + ["text/plain", "text/event-stream"])
    _reply.update(status=status, ctype=ctype, chunks=chunks, chunked=rng.random() < 0.5)
    return api, stream


def _dump(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return value.model_dump(warnings=False)  # fuzzed fields do not fit the SDK models: expected
    return value


class _Clients:
    """One OpenAI client, and one Anthropic async client on one event loop, for every example.

    Building SDK clients per example (an SSL context each) took most of the test's time. The
    patch is on the client classes, so clients built before ``instrument()`` are seen.
    """

    def __init__(self, base: str) -> None:
        self.openai = openai.OpenAI(base_url=base + "/v1", api_key="sk-x", max_retries=0)
        self.loop = asyncio.new_event_loop()
        self.anthropic = anthropic.AsyncAnthropic(base_url=base, api_key="sk-ant-x", max_retries=0)

    def close(self) -> None:
        self.openai.close()
        self.loop.run_until_complete(self.anthropic.close())
        self.loop.close()


def _outcome(clients: _Clients, api: str, stream: bool) -> Any:
    async def run() -> Any:
        a = clients.anthropic
        if stream:
            s = await a.messages.create(
                model="claude-x",
                max_tokens=5,
                messages=[{"role": "user", "content": "x"}],
                stream=True,
            )
            return [_dump(e) async for e in s]
        return _dump(
            await a.messages.create(
                model="claude-x", max_tokens=5, messages=[{"role": "user", "content": "x"}]
            )
        )

    try:
        if api == "messages":
            return ["ok", json.dumps(clients.loop.run_until_complete(run()), default=str, sort_keys=True)]
        client = clients.openai
        if stream:
            value = [
                _dump(c)
                for c in client.chat.completions.create(
                    model="gpt-x", messages=[{"role": "user", "content": "x"}], stream=True
                )
            ]
        else:
            value = _dump(
                client.chat.completions.create(model="gpt-x", messages=[{"role": "user", "content": "x"}])
            )
        return ["ok", json.dumps(value, default=str, sort_keys=True)]
    except Exception as exc:
        return ["raised", type(exc).__module__ + "." + type(exc).__qualname__, str(exc)[:300]]


def test_fuzzed_provider_responses_never_change_the_app_outcome(server: str) -> None:
    originals = {
        (cls, "send"): cls.__dict__["send"]
        for lib in patch.libraries()
        for cls in (lib.Client, lib.AsyncClient)
    }
    stats = {"examples": 0, "events": 0, "conversion_errors": 0, "raised": 0}
    guard_before = dict(guard.counts)
    errors: list[str] = []
    clients = _Clients(server)

    @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(st.randoms(use_true_random=True))
    def check(rng: random.Random) -> None:
        api, stream = _configure(rng)
        plain = _outcome(clients, api, stream)
        emitter = RecordingEmitter()
        instrument(ClientSettings(app="fuzz"), emitter=emitter)
        try:
            with_costwatch = _outcome(clients, api, stream)
            assert emitter.flush(5)
        finally:
            uninstrument()
        assert with_costwatch == plain
        assert "costwatch" not in str(with_costwatch)
        stats["examples"] += 1
        stats["raised"] += plain[0] == "raised"
        stats["events"] += len(emitter.events)  # each validated on the wire by RecordingEmitter
        stats["conversion_errors"] += len(emitter.errors)
        errors.extend(f"{exc!r} for {_reply!r:.400}" for exc in emitter.errors)
        assert len(emitter.events) + len(emitter.errors) == len(emitter.items) >= 1

    try:
        check()
    finally:
        clients.close()
    # uninstrument() restored the exact function objects, every time.
    assert {(cls, "send"): cls.__dict__["send"] for (cls, _) in originals} == originals
    assert not patch.is_installed()
    new_guard = {
        k: v - guard_before.get(k, 0) for k, v in guard.counts.items() if v != guard_before.get(k, 0)
    }
    print(f"\nprovider fuzz: {stats}, internal errors caught on the call path {new_guard}")
    assert stats["examples"] >= EXAMPLES and stats["raised"] > 0
    # A parsing problem must not lose the call: to_event() never raised on a fuzzed response.
    assert stats["conversion_errors"] == 0, (stats, errors[:3])


def test_absurd_token_counts_are_unknown_not_an_invalid_event() -> None:
    """Found by the fuzz above: usage of 2**63 tokens made to_event() build an event the schema
    (tokens <= 1e12) refuses, so the call was lost. Now such counts are unknown (None)."""
    from costwatch.instrumentation import anthropic as anthropic_usage
    from costwatch.instrumentation import openai as openai_usage

    usage = openai_usage.normalize_usage("chat", {"prompt_tokens": 2**63, "completion_tokens": 10**30})
    assert usage is not None and usage.input_tokens is None and usage.output_tokens is None
    big = anthropic_usage.normalize_usage(
        {"input_tokens": 10**12, "cache_read_input_tokens": 10**12, "output_tokens": 5}
    )
    assert big is not None and big.input_tokens is None and big.output_tokens == 5
    ok = openai_usage.normalize_usage("chat", {"prompt_tokens": 10**12, "completion_tokens": 0})
    assert ok is not None and ok.input_tokens == 10**12
