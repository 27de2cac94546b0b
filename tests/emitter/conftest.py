"""Fixtures for the emitter tests: a loopback fake daemon, fast settings, emitters closed at teardown."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # the repo is not installed in the venv
    sys.path.insert(0, str(ROOT))

from costwatch.events import UsageEvent, new_event_id  # noqa: E402
from costwatch.instrumentation.emitter import Emitter  # noqa: E402
from costwatch.settings import ClientSettings  # noqa: E402
from tests.fakes.sink import FakeDaemon  # noqa: E402


class Item:
    """What the instrumentation submits: raw facts turned into an event on the emitter thread."""

    __slots__ = ("event",)

    def __init__(self, event: UsageEvent | None = None) -> None:
        self.event = event or make_event()

    def to_event(self) -> UsageEvent | None:
        return self.event


class BadItem:
    def to_event(self) -> UsageEvent:
        raise KeyError("boom")


def make_event(**kw: object) -> UsageEvent:
    fields: dict = {
        "id": new_event_id(),
        "call_id": new_event_id(),
        "ts_start": 1_700_000_000.0,
        "ts_end": 1_700_000_000.5,
        "provider": "openai",
        "operation": "chat",
        "app": "test",
        "model": "gpt-4o-mini",
        "input_tokens": 10,
        "output_tokens": 5,
        "usage_source": "provider",
    }
    fields.update(kw)
    return UsageEvent(**fields)


@pytest.fixture
def sink() -> Iterator[FakeDaemon]:
    with FakeDaemon() as daemon:
        yield daemon


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., ClientSettings]:
    def factory(url: str = "http://127.0.0.1:9", **kw: object) -> ClientSettings:
        values: dict = {
            "url": url,
            "app": "test",
            "token": None,
            "state_dir": tmp_path / "state",
            "flush_interval_s": 0.02,
            "killswitch_poll_s": 0.2,
            "batch_max_events": 100,
            "queue_max_events": 1000,
        }
        values.update(kw)
        return ClientSettings(**values)

    return factory


@pytest.fixture
def make_emitter(make_settings: Callable[..., ClientSettings]) -> Iterator[Callable[..., Emitter]]:
    emitters: list[Emitter] = []

    def factory(url: str = "http://127.0.0.1:9", start: bool = True, **kw: object) -> Emitter:
        emitter = Emitter(make_settings(url, **kw))
        emitters.append(emitter)
        if start:
            emitter.start()
        return emitter

    yield factory
    for emitter in emitters:
        emitter.close(0.5)
