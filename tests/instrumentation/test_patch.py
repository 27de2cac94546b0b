"""instrument()/uninstrument() semantics, raw clients, pass-through and fault injection."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import httpx
import openai
import pytest

from costwatch.instrumentation import flush, instrument, openai_stream, patch, uninstrument
from costwatch.instrumentation import record as record_module
from costwatch.instrumentation.record import CallRecord, guard
from costwatch.instrumentation.sse import UsageChunkFilter
from costwatch.settings import ClientSettings
from tests.fakes.provider import TEXT, TEXT_PIECES, FakeProvider
from tests.instrumentation.conftest import HAS_HTTPX2, HTTP, RecordingEmitter

CLASSES = [httpx.Client, httpx.AsyncClient] + ([HTTP.Client, HTTP.AsyncClient] if HAS_HTTPX2 else [])
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}


def test_idempotent_and_exact_restore(emitter: RecordingEmitter) -> None:
    originals = [cls.__dict__["send"] for cls in CLASSES]
    instrument(ClientSettings(app="a"), emitter=emitter)
    patched = [cls.__dict__["send"] for cls in CLASSES]
    instrument(ClientSettings(app="b"), emitter=RecordingEmitter())
    assert [cls.__dict__["send"] for cls in CLASSES] == patched
    assert all(p is not o and p.__wrapped__ is o for p, o in zip(patched, originals, strict=True))
    assert emitter.started == 1
    uninstrument()
    assert all(cls.__dict__["send"] is o for cls, o in zip(CLASSES, originals, strict=True))
    uninstrument()  # twice is fine
    assert all(cls.__dict__["send"] is o for cls, o in zip(CLASSES, originals, strict=True))
    assert flush(0.1) is True


def test_disabled_by_environment(monkeypatch: pytest.MonkeyPatch, emitter: RecordingEmitter) -> None:
    monkeypatch.setenv("COSTWATCH_DISABLED", "1")
    originals = [cls.__dict__["send"] for cls in CLASSES]
    instrument(emitter=emitter)
    assert [cls.__dict__["send"] for cls in CLASSES] == originals
    assert not patch.is_installed() and emitter.started == 0


def test_raw_clients_on_llm_paths(fake_provider: FakeProvider, instrumented: RecordingEmitter) -> None:
    base = fake_provider.openai_url
    with HTTP.Client() as c2, httpx.Client() as c1:
        c2.post(base + "/chat/completions", json=CHAT)
        c1.post(base + "/embeddings", json={"model": "text-embedding-3-large", "input": "x"})
        c1.post(fake_provider.url + "/not-an-llm/path", json=CHAT)  # 404 from the fake, not recorded
        c1.get(base + "/models")

    async def main() -> None:
        async with httpx.AsyncClient() as a1, HTTP.AsyncClient() as a2:
            await a1.post(
                fake_provider.url + "/v1/messages", json={"model": "claude-3-5-haiku", "max_tokens": 1}
            )
            async with a2.stream("POST", base + "/responses", json={"model": "o3", "stream": True}) as r:
                [_ async for _ in r.aiter_bytes()]

    asyncio.run(main())
    events = instrumented.wait_events(4)
    assert [(e.operation, e.input_tokens) for e in events] == [
        ("chat", 25),
        ("embeddings", 6),
        ("messages", 134),
        ("responses", 31),
    ]
    assert events[3].stream and events[3].ttft_ms is not None


def test_legacy_httpx_client_as_openai_http_client(
    fake_provider: FakeProvider, instrumented: RecordingEmitter
) -> None:
    try:
        c = openai.OpenAI(base_url=fake_provider.openai_url, api_key="k", http_client=httpx.Client())
    except TypeError as exc:  # pragma: no cover - an SDK that refuses legacy httpx clients
        pytest.skip(str(exc))
    c.chat.completions.create(**CHAT)
    list(c.chat.completions.create(**CHAT, stream=True))
    events = instrumented.wait_events(2)
    assert [(e.input_tokens, e.output_tokens, e.stream) for e in events] == [(25, 9, False), (25, 9, True)]


def test_custom_transport_and_azure_path(instrumented: RecordingEmitter) -> None:
    def handler(request: Any) -> Any:
        body = {
            "model": "gpt-4o-2024-11-20",
            "choices": [],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2},
        }
        return HTTP.Response(200, json=body)

    with HTTP.Client(transport=HTTP.MockTransport(handler)) as c:
        c.post(
            "https://res.openai.azure.com/openai/deployments/prod-4o/chat/completions?api-version=2024-10-21",
            json={"messages": []},
        )
    [event] = instrumented.wait_events(1)
    assert (event.provider, event.request_model, event.model) == (
        "azure.openai",
        "prod-4o",
        "gpt-4o-2024-11-20",
    )
    assert event.server_address == "res.openai.azure.com"
    assert (event.input_tokens, event.output_tokens) == (3, 2)


@pytest.mark.parametrize("lib", [httpx, HTTP], ids=["httpx", "httpx2"])
def test_encoded_paths_idna_hosts_and_ports_read_as_the_url_properties_give_them(
    instrumented: RecordingEmitter, lib: Any
) -> None:
    """The call path reads the parsed URL directly; what it records matches ``URL.path``/``host``/``port``."""

    def handler(request: Any) -> Any:
        return lib.Response(200, json={"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1}})

    with lib.Client(transport=lib.MockTransport(handler)) as c:
        c.post("https://xn--fiqs8s.example:8443/openai/deployments/prod%204o/chat/completions", json={})
        c.post("http://127.0.0.1:9/v1/chat%2Fcompletions", json={"model": "m"})
    first, second = instrumented.wait_events(2)
    assert first.server_address == "中国.example:8443"
    assert (first.provider, first.request_model) == ("azure.openai", "prod 4o")
    assert (second.server_address, second.operation, second.request_model) == ("127.0.0.1:9", "chat", "m")


def test_clients_built_before_instrument_are_seen(
    fake_provider: FakeProvider, emitter: RecordingEmitter
) -> None:
    c = openai.OpenAI(base_url=fake_provider.openai_url, api_key="k")
    instrument(ClientSettings(app="t"), emitter=emitter)
    try:
        c.chat.completions.create(**CHAT)
    finally:
        uninstrument()
    c.chat.completions.create(**CHAT)  # after uninstrument: not recorded
    assert len(emitter.wait_events(1)) == 1


# ---- fault injection: costwatch failing never changes the app's result -------------------------


def _app_run(fake: FakeProvider) -> list:
    c = openai.OpenAI(base_url=fake.openai_url, api_key="k")
    out = [c.chat.completions.create(**CHAT).model_dump()]
    out += [ch.model_dump() for ch in c.chat.completions.create(**CHAT, stream=True)]
    return out


def test_fault_in_to_event(
    fake_provider: FakeProvider, instrumented: RecordingEmitter, monkeypatch: pytest.MonkeyPatch
) -> None:
    baseline_chunks = ["", *TEXT_PIECES, None]

    def boom(self: CallRecord) -> None:
        raise RuntimeError("bug in to_event")

    monkeypatch.setattr(CallRecord, "to_event", boom)
    out = _app_run(fake_provider)
    assert out[0]["choices"][0]["message"]["content"] == TEXT
    assert [c["choices"][0]["delta"]["content"] for c in out[1:]] == baseline_chunks
    assert instrumented.flush(5)
    assert len(instrumented.errors) == 2  # the emitter catches and counts them
    instrumented.errors.clear()


@pytest.mark.parametrize(
    "target",
    ["scan", "recognize", "add_chunk", "filter", "finish"],
)
def test_faults_on_the_call_path(
    fake_provider: FakeProvider,
    emitter: RecordingEmitter,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    target: str,
) -> None:
    baseline = _app_run(fake_provider)

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError(f"injected fault: {target}")

    if target == "scan":
        monkeypatch.setattr(openai_stream, "scan_stream", boom)
    elif target == "recognize":
        monkeypatch.setattr(patch, "recognize", boom)
    elif target == "add_chunk":
        monkeypatch.setattr(record_module, "HEAD_BYTES", None)  # add_chunk's arithmetic now raises
    elif target == "filter":
        monkeypatch.setattr(UsageChunkFilter, "feed", boom)
    elif target == "finish":
        monkeypatch.setattr(emitter, "submit", boom)
    instrument(ClientSettings(app="t", inject_stream_usage="off"), emitter=emitter)
    try:
        with caplog.at_level(logging.WARNING, logger="costwatch.instrumentation"):
            assert _app_run(fake_provider) == baseline
    finally:
        uninstrument()
        emitter.flush(5)
        emitter.errors.clear()
    if target in ("recognize", "finish", "add_chunk"):
        where = {"recognize": "begin", "finish": "finish", "add_chunk": "add_chunk"}[target]
        assert guard.counts.get(where, 0) > 0


def test_filter_fault_keeps_text(
    fake_provider: FakeProvider, instrumented: RecordingEmitter, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(self: UsageChunkFilter, chunk: bytes) -> bytes:
        raise RuntimeError("filter bug")

    monkeypatch.setattr(UsageChunkFilter, "feed", boom)
    c = openai.OpenAI(base_url=fake_provider.openai_url, api_key="k")
    chunks = list(c.chat.completions.create(**CHAT, stream=True))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == TEXT
    [event] = instrumented.wait_events(1)
    assert event.input_tokens == 25


def test_request_body_rewrite_keeps_headers(
    fake_provider: FakeProvider, instrumented: RecordingEmitter
) -> None:
    with HTTP.Client() as c:
        body = {**CHAT, "stream": True, "stream_options": {"other": 1}}
        with c.stream(
            "POST", fake_provider.openai_url + "/chat/completions", json=body, headers={"x-app-header": "v"}
        ) as r:
            raw = b"".join(r.iter_bytes())
    logged = fake_provider.requests[0]
    assert logged.body["stream_options"] == {"other": 1, "include_usage": True}
    assert logged.headers["x-app-header"] == "v"
    assert int(logged.headers["content-length"]) == len(json.dumps(logged.body, separators=(",", ":")))
    assert b'"choices":[]' not in raw and b'"usage"' not in raw
    assert raw.count(b"data: ") == len(TEXT_PIECES) + 3
    [event] = instrumented.wait_events(1)
    assert event.usage_source == "provider"


@pytest.mark.parametrize(("disabled", "patched"), [("0", True), ("1", False)])
def test_autoinstrument_in_a_fresh_process(tmp_path: Any, disabled: str, patched: bool) -> None:
    import os
    import subprocess
    import sys

    code = (
        "import costwatch.autoinstrument, httpx, costwatch;"
        "print(hasattr(httpx.Client.send, '__wrapped__'));"
        "costwatch.uninstrument(0.2);"
        "print(hasattr(httpx.Client.send, '__wrapped__'))"
    )
    env = {
        **os.environ,
        "COSTWATCH_DISABLED": disabled,
        "COSTWATCH_URL": "http://127.0.0.1:9",
        "COSTWATCH_STATE_DIR": str(tmp_path),
    }
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(patched), "False"]


def test_emitter_failing_to_start_leaves_the_app_uninstrumented(fake_provider: FakeProvider) -> None:
    class Broken(RecordingEmitter):
        def start(self) -> None:
            raise OSError("spool dir not writable")

    originals = [cls.__dict__["send"] for cls in CLASSES]
    instrument(ClientSettings(app="t"), emitter=Broken())
    assert [cls.__dict__["send"] for cls in CLASSES] == originals
    assert guard.counts.get("instrument", 0) >= 1
    assert flush(0.1) is True
