"""Kill-switch state: learned by polling and from ingest replies, expiry, fail-closed, the exception."""

from __future__ import annotations

import importlib
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from costwatch.errors import CallBlocked, KillSwitchEngaged
from costwatch.instrumentation.killswitch import KillSwitchView, blocked_error
from costwatch.protocol import KillSwitch, KillSwitchState

from .conftest import Item


def _wait(predicate, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def test_state_learned_by_polling_within_a_second(sink, make_emitter):
    emitter = make_emitter(sink.url, killswitch_poll_s=0.5)  # the default
    view = emitter.killswitch
    assert _wait(lambda: view.version == 0, 2) and not view.active
    switch = sink.engage({"app": "test"}, reason="budget blown")
    t0 = time.monotonic()
    assert _wait(lambda: view.active, 2)
    assert time.monotonic() - t0 < 1.0
    assert view.blocking("test", "openai", "gpt-4o", None).id == switch.id
    assert view.blocking("other-app", "openai", "gpt-4o", None) is None
    assert not view.needs_model
    sink.resume()
    assert _wait(lambda: not view.active, 1.5)
    assert view.blocking("test", "openai", "gpt-4o", None) is None


def test_state_learned_from_ingest_reply(sink, make_emitter):
    emitter = make_emitter(sink.url, killswitch_poll_s=60)
    view = emitter.killswitch
    # The first poll learns version 0, the second finds it unchanged: this sink answers at
    # once (no long poll), so the next one waits killswitch_poll_s.
    assert _wait(lambda: sink.polls == 2 and view.version == 0, 2)
    sink.engage({"model": "gpt-4o"})
    emitter.submit(Item())
    assert emitter.flush(2)
    assert view.active and view.needs_model and sink.polls == 2
    assert view.blocking("test", "openai", "gpt-4o", None) is not None
    assert view.blocking("test", "openai", "gpt-4o-mini", None) is None


def test_expired_switch_never_blocks():
    view = KillSwitchView()
    past = KillSwitch(id="a", scope={}, reason="old", engaged_at=time.time() - 60, expires_at=time.time() - 1)
    view.update(KillSwitchState(engaged=[past], version=3))
    assert not view.active and view.blocking("x", "openai", None, None) is None
    soon = KillSwitch(id="b", scope={"user": "u1"}, engaged_at=time.time(), expires_at=time.time() + 0.2)
    view.update(KillSwitchState(engaged=[soon], version=4))
    assert view.active and view.blocking("x", "openai", None, "u1") is soon
    time.sleep(0.25)
    view.refresh()
    assert not view.active and view.blocking("x", "openai", None, "u1") is None


def test_fail_closed_blocks_everything_while_daemon_is_unreachable(sink, make_emitter):
    sink.stop()
    emitter = make_emitter(sink.url, fail_closed=True, fail_closed_after_s=0.3)
    view = emitter.killswitch
    assert not view.active  # the clock starts at start()
    assert _wait(lambda: view.active, 2)
    switch = view.blocking("any", "anthropic", None, None)
    assert switch is not None
    message = str(blocked_error(switch))
    assert "unreachable" in message and "COSTWATCH_FAIL_CLOSED=1" in message
    sink.start()
    assert _wait(lambda: not view.active, 8)
    assert view.blocking("any", "anthropic", None, None) is None


def test_fail_open_by_default(sink, make_emitter):
    sink.stop()
    emitter = make_emitter(sink.url, fail_closed_after_s=0.0)
    emitter.submit(Item())
    assert emitter.flush(2)
    time.sleep(0.2)
    assert not emitter.killswitch.active
    assert emitter.killswitch.blocking("any", "openai", None, None) is None


def test_blocked_error_message_and_plain_class(monkeypatch):
    monkeypatch.delitem(sys.modules, "openai", raising=False)
    monkeypatch.delitem(sys.modules, "anthropic", raising=False)
    switch = KillSwitch(
        id="k", scope={"app": "shop"}, reason="daily budget 50 USD exceeded", source="rule:daily"
    )
    switch.engaged_at = 1_764_050_000.0
    error = blocked_error(switch)
    assert type(error) is KillSwitchEngaged
    message = str(error)
    assert "app=shop" in message and "daily budget 50 USD exceeded" in message
    assert "2025-11-25" in message and "costwatch resume --scope app=shop" in message
    assert error.scope == {"app": "shop"} and error.reason == "daily budget 50 USD exceeded"
    glob = str(blocked_error(KillSwitch(id="g", reason="stop", engaged_at=1.0)))
    assert "global" in glob and "`costwatch resume`" in glob


def test_blocked_error_derives_from_loaded_sdk_errors():
    import anthropic
    import openai

    error = blocked_error(KillSwitch(id="k", scope={"provider": "openai"}))
    assert isinstance(error, KillSwitchEngaged) and isinstance(error, CallBlocked)
    assert isinstance(error, openai.OpenAIError) and isinstance(error, anthropic.AnthropicError)
    assert not isinstance(error, openai.APIError)
    assert type(blocked_error(KillSwitch(id="j"))) is type(error)  # cached
    with pytest.raises(KillSwitchEngaged):
        raise error


# -- the SDKs do not retry it: a real client against a loopback server, requests counted -----------


class _LLM(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hits = 0

    def log_message(self, *args):
        pass

    def do_POST(self):
        type(self).hits += 1
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path.endswith("/messages"):
            body = {
                "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
                "content": [{"type": "text", "text": "hi"}], "stop_reason": "end_turn",
                "usage": {"input_tokens": 3, "output_tokens": 1},
            }  # fmt: skip
        else:
            body = {
                "id": "c1", "object": "chat.completion", "created": 1, "model": "gpt-x",
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": "hi"}}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
            }  # fmt: skip
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def llm_server():
    _LLM.hits = 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), _LLM)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _blocking_transport(httpx2, mode: dict):
    """Stands in for our send() patch: refuse before any I/O while ``mode['raise']`` is set."""

    class Transport(httpx2.HTTPTransport):
        attempts = 0

        def handle_request(self, request):
            type(self).attempts += 1
            exc = mode.get("raise")
            if exc is not None:
                raise exc()
            return super().handle_request(request)

    return Transport


def _sdk_http(sdk_module):
    """The HTTP library this SDK generation is built on: httpx2 (openai 3 / anthropic 2) or httpx."""
    base = importlib.import_module(sdk_module.__name__ + "._base_client")
    return getattr(base, "httpx2", None) or base.httpx


@pytest.mark.parametrize("sdk", ["openai", "anthropic"])
def test_sdk_does_not_retry_the_kill_switch_error(sdk, llm_server):
    import anthropic
    import openai

    httpx2 = _sdk_http(openai if sdk == "openai" else anthropic)

    switch = KillSwitch(id="k", scope={"app": "test"}, reason="over budget", engaged_at=time.time())
    mode: dict = {}
    Transport = _blocking_transport(httpx2, mode)
    if sdk == "openai":
        client = openai.OpenAI(
            api_key="k",
            base_url=llm_server + "/v1",
            max_retries=2,
            http_client=httpx2.Client(transport=Transport()),
        )

        def call():
            return client.chat.completions.create(model="gpt-x", messages=[{"role": "user", "content": "hi"}])

        sdk_error = openai.OpenAIError
    else:
        client = anthropic.Anthropic(
            api_key="k", base_url=llm_server, max_retries=2, http_client=httpx2.Client(transport=Transport())
        )

        def call():
            return client.messages.create(
                model="claude-x", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
            )

        sdk_error = anthropic.AnthropicError

    call()  # the setup works: one attempt, one request
    assert Transport.attempts == 1 and _LLM.hits == 1

    mode["raise"] = lambda: blocked_error(switch)
    with pytest.raises(KillSwitchEngaged) as info:
        call()
    assert isinstance(info.value, sdk_error) and "over budget" in str(info.value)
    assert Transport.attempts == 2 and _LLM.hits == 1  # one attempt, no retry, nothing sent

    # Control: an ordinary exception is retried (and wrapped) by the same client.
    mode["raise"] = lambda: httpx2.ConnectError("refused")
    client = client.with_options(max_retries=1)
    with pytest.raises(sdk_error) as info:
        call()
    assert not isinstance(info.value, CallBlocked)
    assert Transport.attempts == 4
