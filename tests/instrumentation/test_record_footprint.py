"""A queued `CallRecord` keeps no SDK objects alive, so the app's garbage dies as it would uninstrumented.

Records wait for the emitter's next tick. When they held the request and the
response (and, for streams, the cycle response → stream proxy → record →
response), an SDK loop that never triggers the cyclic GC on its own ran dozens of
collections per 1,000 calls, full ones among them.
"""

from __future__ import annotations

import gc
import weakref
from typing import Any

import openai
import pytest

from costwatch.instrumentation import instrument, uninstrument
from tests.fakes.provider import FakeProvider
from tests.instrumentation.conftest import HTTP, FakeKillSwitch

MESSAGES = [{"role": "user", "content": "Say hello"}]
CALLS = 200


class HoldingEmitter:
    """Keeps every record unconverted, as a queue does between ticks."""

    def __init__(self) -> None:
        self.killswitch = FakeKillSwitch()
        self.items: list[Any] = []

    def start(self) -> None: ...

    def submit(self, item: Any) -> None:
        self.items.append(item)

    def flush(self, timeout: float = 0) -> bool:
        return True

    def close(self, timeout: float = 0) -> None: ...


def _tracked_objects_per_record(fake: FakeProvider, stream: bool) -> float:
    emitter = HoldingEmitter()
    client = openai.OpenAI(base_url=fake.openai_url, api_key="sk-test-key-000000000000", max_retries=0)

    def call() -> None:
        if stream:
            for _ in client.chat.completions.create(
                model="gpt-4o-mini", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
            ):
                pass
        else:
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

    instrument(emitter=emitter)
    try:
        for _ in range(20):  # warm caches (pydantic models, connection pool)
            call()
        emitter.items.clear()
        gc.collect()
        before = len(gc.get_objects())
        for _ in range(CALLS):
            call()
        gc.collect()
        after = len(gc.get_objects())
    finally:
        uninstrument()
    assert len(emitter.items) == CALLS
    events = [item.to_event() for item in emitter.items]
    assert all(e is not None and e.input_tokens is not None for e in events), "records must stay convertible"
    return (after - before) / CALLS


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_queued_records_hold_few_gc_objects(fake_provider: FakeProvider, stream: bool) -> None:
    # A record, its latch, its chunk list, its call id: about 8 here. Holding the SDK's
    # request and response kept 36 (JSON) and 56 (streams) per record alive.
    assert _tracked_objects_per_record(fake_provider, stream) < 20


def test_finish_drops_request_and_response() -> None:
    from costwatch.context import Attribution
    from costwatch.instrumentation.providers import Endpoint
    from costwatch.instrumentation.record import CallId, CallRecord

    submitted: list[Any] = []
    request = HTTP.Request("POST", "http://h:8080/v1/chat/completions", json={"model": "m"},
                           headers={"Idempotency-Key": "key-1"})  # fmt: skip
    record = CallRecord(Endpoint("openai", "chat"), request, False, "app", CallId(), "0",
                        Attribution(None, {}), None, submitted.append)  # fmt: skip
    response = HTTP.Response(
        200,
        headers=[
            ("Content-Type", "application/json"),
            ("x-ratelimit-remaining-requests", "7"),
            ("X-RateLimit-Limit-Requests", "9"),
            ("x-ratelimit-limit-requests", "10"),
        ],
        content=b'{"model": "m-1", "usage": {"prompt_tokens": 3, "completion_tokens": 4}}',
        request=request,
    )
    record.response = response
    refs = weakref.ref(request), weakref.ref(response)
    record.finish("complete")
    del request, response
    gc.collect()
    assert [r() for r in refs] == [None, None], "the record must not keep the SDK's objects"
    [event] = [item.to_event() for item in submitted]
    assert (event.model, event.input_tokens, event.output_tokens) == ("m-1", 3, 4)
    assert event.server_address == "h:8080" and event.call_id == "key-1"
    assert event.ratelimit_remaining_requests == 7
    assert event.ratelimit_limit_requests is None  # sent twice: not a count
