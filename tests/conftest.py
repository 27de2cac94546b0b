"""Shared fixtures (generic: other test folders may add theirs here)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fakes.provider import FakeProvider


@pytest.fixture(scope="session")
def fake_provider_server() -> Iterator[FakeProvider]:
    with FakeProvider() as fake:
        yield fake


@pytest.fixture
def fake_provider(fake_provider_server: FakeProvider) -> FakeProvider:
    """The session's fake OpenAI + Anthropic server, with its request log and counters reset."""
    fake_provider_server.reset()
    return fake_provider_server
