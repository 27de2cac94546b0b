"""Doubles for the emitter and kill-switch view, and an instrumented-process fixture."""

from __future__ import annotations

import importlib
import importlib.util
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from costwatch.events import UsageEvent, decode, encode
from costwatch.instrumentation import instrument, uninstrument
from costwatch.protocol import KillSwitch
from costwatch.settings import ClientSettings

# The SDKs' HTTP library: httpx2 under openai 3.x / anthropic 2.x, httpx under the older line.
HAS_HTTPX2 = importlib.util.find_spec("httpx2") is not None
HTTP: Any = importlib.import_module("httpx2" if HAS_HTTPX2 else "httpx")


class FakeKillSwitch:
    """The `KillSwitchView` interface over a list of engaged switches."""

    def __init__(self) -> None:
        self.engaged: list[KillSwitch] = []
        self.calls: list[tuple[str, str, str | None, str | None]] = []

    @property
    def active(self) -> bool:
        return bool(self.engaged)

    @property
    def needs_model(self) -> bool:
        return any("model" in s.scope for s in self.engaged)

    def blocking(self, app: str, provider: str, model: str | None, user: str | None) -> KillSwitch | None:
        self.calls.append((app, provider, model, user))
        return next((s for s in self.engaged if s.matches(app, provider, model, user)), None)


class RecordingEmitter:
    """The `Emitter` interface; a real thread calls ``to_event()`` like the emitter does."""

    def __init__(self) -> None:
        self.killswitch = FakeKillSwitch()
        self.items: list[Any] = []
        self.events: list[UsageEvent] = []
        self.errors: list[BaseException] = []
        self.to_event_threads: set[str] = set()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.started = 0

    def start(self) -> None:
        self.started += 1
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="fake-emitter", daemon=True)
            self._thread.start()

    def submit(self, item: Any) -> None:
        with self._cond:
            self.items.append(item)
            self._cond.notify_all()

    def _run(self) -> None:
        done = 0
        while True:
            with self._cond:
                while done >= len(self.items) and not self._closed:
                    self._cond.wait(0.05)
                if self._closed and done >= len(self.items):
                    return
                item = self.items[done]
            try:
                self.to_event_threads.add(threading.current_thread().name)
                event = item.to_event()
                if event is not None:
                    assert decode(encode(event)) == event  # valid on the wire, as the daemon checks
                    with self._cond:
                        self.events.append(event)
            except BaseException as exc:  # the real emitter counts these
                self.errors.append(exc)
            with self._cond:
                done += 1
                self._done = done
                self._cond.notify_all()

    def flush(self, timeout: float = 2.0) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while getattr(self, "_done", 0) < len(self.items):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self, timeout: float = 2.0) -> None:
        self.flush(timeout)
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def wait_events(self, n: int, timeout: float = 5.0) -> list[UsageEvent]:
        """Poll (with a deadline) until n events exist; returns them in submission order."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.flush(0.1)
            if len(self.events) + len(self.errors) >= n:
                break
            time.sleep(0.005)
        assert not self.errors, self.errors
        assert len(self.events) == n, f"expected {n} events, got {len(self.events)}: {self.events}"
        return list(self.events)


@pytest.fixture
def emitter() -> RecordingEmitter:
    return RecordingEmitter()


@pytest.fixture
def instrumented(emitter: RecordingEmitter) -> Iterator[RecordingEmitter]:
    """This process instrumented with the recording emitter (usage injection for every host)."""
    settings = ClientSettings(app="test-app", inject_stream_usage="all", disabled=False)
    instrument(settings, emitter=emitter)
    try:
        yield emitter
    finally:
        uninstrument()


@pytest.fixture
def make_instrumented(emitter: RecordingEmitter) -> Iterator[Callable[..., RecordingEmitter]]:
    def make(**settings: Any) -> RecordingEmitter:
        instrument(ClientSettings(**{"app": "test-app", **settings}), emitter=emitter)
        return emitter

    yield make
    uninstrument()
