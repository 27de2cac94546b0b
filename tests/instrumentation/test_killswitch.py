"""A blocked call raises before any byte leaves, is not retried, and is recorded."""

from __future__ import annotations

import anthropic
import openai
import pytest

import costwatch
from costwatch.protocol import KillSwitch
from tests.fakes.provider import FakeProvider
from tests.instrumentation.conftest import RecordingEmitter

MESSAGES = [{"role": "user", "content": "hi"}]


def test_model_scoped_switch_blocks_openai(
    fake_provider: FakeProvider, instrumented: RecordingEmitter
) -> None:
    instrumented.killswitch.engaged.append(KillSwitch(id="k1", scope={"model": "gpt-4o"}, reason="budget"))
    c = openai.OpenAI(base_url=fake_provider.openai_url, api_key="k", max_retries=3)
    with pytest.raises(costwatch.KillSwitchEngaged) as info:
        c.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert isinstance(info.value, openai.OpenAIError)
    assert not isinstance(info.value, openai.APIError)
    assert info.value.reason == "budget"
    assert fake_provider.count == 0
    # another model passes
    c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert fake_provider.count == 1
    blocked, passed = instrumented.wait_events(2)
    assert (blocked.blocked, blocked.error_class, blocked.http_status) == (True, "blocked", None)
    assert blocked.block_reason == "budget" and blocked.model == "gpt-4o"
    assert blocked.input_tokens is None and blocked.usage_source == "missing"
    assert passed.blocked is False
    assert instrumented.killswitch.calls[0] == ("test-app", "openai", "gpt-4o", None)


def test_user_scoped_switch_blocks_anthropic_stream(
    fake_provider: FakeProvider, instrumented: RecordingEmitter
) -> None:
    instrumented.killswitch.engaged.append(KillSwitch(id="k2", scope={"user": "mallory"}, reason="abuse"))
    c = anthropic.Anthropic(base_url=fake_provider.anthropic_url, api_key="k", max_retries=3)
    with costwatch.attribute(user="mallory"), pytest.raises(anthropic.AnthropicError) as info:
        c.messages.create(model="claude-sonnet-4", max_tokens=8, messages=MESSAGES, stream=True)
    assert isinstance(info.value, costwatch.CallBlocked)
    assert fake_provider.count == 0
    c.messages.create(model="claude-sonnet-4", max_tokens=8, messages=MESSAGES, metadata={"user_id": "bob"})
    assert fake_provider.count == 1
    [blocked, ok] = instrumented.wait_events(2)
    assert blocked.blocked and blocked.user == "mallory" and blocked.retry_attempt == 0
    assert ok.blocked is False
    # model was not needed, so not parsed on the hot path
    assert instrumented.killswitch.calls[0] == ("test-app", "anthropic", None, "mallory")
    assert instrumented.killswitch.calls[1] == ("test-app", "anthropic", None, "bob")


def test_user_from_openai_body(fake_provider: FakeProvider, instrumented: RecordingEmitter) -> None:
    instrumented.killswitch.engaged.append(KillSwitch(id="k3", scope={"user": "eve", "provider": "openai"}))
    c = openai.OpenAI(base_url=fake_provider.openai_url, api_key="k")
    with pytest.raises(costwatch.KillSwitchEngaged):
        c.embeddings.create(model="text-embedding-3-small", input="x", user="eve")
    assert fake_provider.count == 0
    [event] = instrumented.wait_events(1)
    assert event.blocked and event.operation == "embeddings"


def test_async_and_azure_model_scope(instrumented: RecordingEmitter) -> None:
    import asyncio

    from tests.instrumentation.conftest import HTTP

    instrumented.killswitch.engaged.append(KillSwitch(id="k4", scope={"model": "prod-4o"}))
    sent: list[object] = []

    def handler(request: object) -> object:
        sent.append(request)
        return HTTP.Response(200, json={})

    async def main() -> None:
        async with HTTP.AsyncClient(transport=HTTP.MockTransport(handler)) as c:
            with pytest.raises(costwatch.KillSwitchEngaged):
                await c.post(
                    "https://x.openai.azure.com/openai/deployments/prod-4o/chat/completions?api-version=1",
                    json={"messages": []},
                )

    asyncio.run(main())
    assert sent == []
    [event] = instrumented.wait_events(1)
    assert (event.provider, event.model, event.blocked) == ("azure.openai", "prod-4o", True)
