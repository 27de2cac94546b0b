"""The typed decode of a response body (`from_bytes`) reads what the generic decode reads.

`from_bytes` must either agree with `from_body` on the generically decoded body, or
say None so the generic path runs: a value `as_int` / `as_cost` would refuse makes the
typed decode fail as a whole.
"""

from __future__ import annotations

import json

import msgspec
import pytest

from costwatch.instrumentation import anthropic as anthropic_usage
from costwatch.instrumentation import openai as openai_usage
from tests.fakes.provider import FIXTURES

JSON_FIXTURES = sorted(p.name for p in FIXTURES.glob("*.json") if not p.name.endswith(".expected.json"))


def _api(name: str) -> str:
    if name.startswith("anthropic"):
        return "messages"
    for api in ("responses", "embeddings", "completions"):
        if f"openai_{api}" in name:
            return api
    return "chat"


def _both(api: str, data: bytes) -> tuple[object, object]:
    try:
        body = msgspec.json.decode(data)
    except msgspec.DecodeError:
        body = None
    if api == "messages":
        return anthropic_usage.from_bytes(data), anthropic_usage.from_body(body)
    return openai_usage.from_bytes(api, data), openai_usage.from_body(api, body)


@pytest.mark.parametrize("name", JSON_FIXTURES)
def test_fixture_bodies_agree(name: str) -> None:
    api = _api(name)
    data = json.dumps(json.loads((FIXTURES / name).read_text())).encode()
    fast, generic = _both(api, data)
    assert fast is not None, "a real provider body takes the typed path"
    assert fast == generic


ODD_USAGES = [
    '{"prompt_tokens": 5.0, "completion_tokens": 2}',
    '{"prompt_tokens": true, "completion_tokens": 2}',
    '{"prompt_tokens": -1, "completion_tokens": 2}',
    '{"prompt_tokens": 99999999999999999999999, "completion_tokens": 2}',
    '{"prompt_tokens": 3, "completion_tokens": 2, "cost": true}',
    '{"prompt_tokens": 3, "completion_tokens": 2, "cost": 1}',
    '{"prompt_tokens": 3, "completion_tokens": null, "prompt_tokens_details": null}',
    '{"prompt_tokens": 3, "prompt_tokens_details": [], "completion_tokens_details": {}}',
    '{"prompt_tokens": 3, "prompt_tokens_details": 0}',
    '{"input_tokens": 3, "output_tokens": 2, "input_tokens_details": {"cached_tokens": 1}}',
    '{"input_tokens": 3, "prompt_tokens": null, "output_tokens": 2}',
    '{"input_tokens": 3, "output_tokens": 2, "cache_read_input_tokens": 7, '
    '"cache_creation": {"ephemeral_1h_input_tokens": 4}, "service_tier": "batch", "speed": 5}',
    '{"input_tokens": 999999999999, "output_tokens": 2, "cache_read_input_tokens": 999999999999}',
    '{"input_tokens": 3, "output_tokens_details": {"thinking_tokens": "x"}}',
    "null",
    "[]",
    '"text"',
]


@pytest.mark.parametrize("api", ["chat", "responses", "embeddings", "messages"])
@pytest.mark.parametrize("usage", ODD_USAGES)
def test_odd_values_agree_or_fall_back(api: str, usage: str) -> None:
    data = ('{"model": "m", "service_tier": "flex", "usage": ' + usage + "}").encode()
    fast, generic = _both(api, data)
    if fast is not None:
        assert fast == generic


@pytest.mark.parametrize("data", [b"", b"[1]", b"not json", b'{"model": 3}', b'{"usage": {}}'])
def test_odd_bodies_agree_or_fall_back(data: bytes) -> None:
    for api in ("chat", "responses", "messages"):
        fast, generic = _both(api, data)
        if fast is not None:
            assert fast == generic
