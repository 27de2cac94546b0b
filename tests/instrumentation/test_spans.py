"""GenAI spans: created in the background, with the call's parent and explicit times."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from costwatch import semconv
from costwatch.instrumentation import spans
from tests.fakes.provider import FakeProvider
from tests.instrumentation.conftest import RecordingEmitter

_provider = TracerProvider()
_exporter = InMemorySpanExporter()
_provider.add_span_processor(SimpleSpanProcessor(_exporter))


@pytest.fixture
def exporter(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    """An SDK provider for this test only (the global one can be set once per process)."""
    monkeypatch.setattr(spans, "tracer_provider", lambda: _provider)
    _exporter.clear()
    yield _exporter
    _exporter.clear()


def test_span_attributes_and_parent(
    fake_provider: FakeProvider, instrumented: RecordingEmitter, exporter: InMemorySpanExporter
) -> None:
    tracer = _provider.get_tracer("app")
    c = openai.OpenAI(base_url=fake_provider.openai_url, api_key="k")
    with tracer.start_as_current_span("handler") as parent:
        list(
            c.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "x"}], stream=True
            )
        )
    [event] = instrumented.wait_events(1)
    [span] = [s for s in exporter.get_finished_spans() if s.name != "handler"]
    assert span.name == "chat gpt-4o"
    assert span.kind == trace.SpanKind.CLIENT
    assert span.parent is not None and span.parent.span_id == parent.get_span_context().span_id
    assert span.context.trace_id == parent.get_span_context().trace_id
    attrs = dict(span.attributes)
    assert attrs[semconv.GEN_AI_PROVIDER_NAME] == "openai"
    assert attrs[semconv.GEN_AI_OPERATION_NAME] == "chat"
    assert attrs[semconv.GEN_AI_REQUEST_MODEL] == "gpt-4o"
    assert attrs[semconv.GEN_AI_RESPONSE_MODEL] == "gpt-4o-snap"
    assert attrs[semconv.GEN_AI_USAGE_INPUT_TOKENS] == 25
    assert attrs[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] == 9
    assert attrs[semconv.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS] == 10
    assert attrs[semconv.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS] == 3
    assert attrs[semconv.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK] == pytest.approx(event.ttft_ms / 1000)
    assert attrs[semconv.SERVER_ADDRESS] == "127.0.0.1"
    assert semconv.ERROR_TYPE not in attrs
    assert event.trace_id == f"{span.context.trace_id:032x}"
    assert event.span_id == f"{span.context.span_id:016x}"
    assert span.start_time == int(event.ts_start * 1e9)
    assert span.end_time - span.start_time == pytest.approx((event.ts_end - event.ts_start) * 1e9, abs=2000)


def test_error_span_and_anthropic_cache_write(
    fake_provider: FakeProvider, instrumented: RecordingEmitter, exporter: InMemorySpanExporter
) -> None:
    import anthropic

    c = openai.OpenAI(base_url=fake_provider.openai_url, api_key="k", max_retries=0)
    with pytest.raises(openai.NotFoundError):
        c.chat.completions.create(
            model="gpt-4o", messages=[], extra_headers={"x-fake-scenario": "status:404"}
        )
    a = anthropic.Anthropic(base_url=fake_provider.anthropic_url, api_key="k")
    a.messages.create(model="claude-opus-4", max_tokens=8, messages=[{"role": "user", "content": "x"}])
    instrumented.wait_events(2)
    ours = {s.name: s for s in exporter.get_finished_spans() if s.name.startswith("chat ")}
    assert ours["chat gpt-4o"].attributes[semconv.ERROR_TYPE] == "not_found"
    assert ours["chat gpt-4o"].status.status_code == trace.StatusCode.ERROR
    anth = ours["chat claude-opus-4"].attributes
    assert anth[semconv.GEN_AI_PROVIDER_NAME] == "anthropic"
    assert anth[semconv.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS] == 20
    assert anth[semconv.GEN_AI_USAGE_INPUT_TOKENS] == 134


def test_no_span_without_sdk_provider(fake_provider: FakeProvider, instrumented: RecordingEmitter) -> None:
    # the process default (no SDK provider configured by this test): nothing is created
    if not isinstance(trace.get_tracer_provider(), (trace.ProxyTracerProvider, trace.NoOpTracerProvider)):
        pytest.skip("a global SDK TracerProvider was installed by another test module")
    openai.OpenAI(base_url=fake_provider.openai_url, api_key="k").embeddings.create(
        model="text-embedding-3-small", input="x"
    )
    [event] = instrumented.wait_events(1)
    assert event.trace_id is None and event.span_id is None


def test_provider_reported_cost_under_both_candidate_conventions(
    fake_provider: FakeProvider, instrumented: RecordingEmitter, exporter: InMemorySpanExporter
) -> None:
    """Cost is computed in the daemon; a span carries one only when the response reported it."""
    c = openai.OpenAI(base_url=fake_provider.openai_url, api_key="k")
    for name in ("openai_chat_router_reported_cost", "openai_chat_gpt-5_flex"):
        c.chat.completions.create(
            model="m", messages=[], extra_headers={"x-fake-scenario": f"fixture:{name}"}
        )
    events = instrumented.wait_events(2)
    spans_by_model = {s.attributes[semconv.GEN_AI_RESPONSE_MODEL]: s for s in exporter.get_finished_spans()}
    reported = dict(spans_by_model["gpt-4o-mini"].attributes)
    assert reported[semconv.GEN_AI_USAGE_COST_AMOUNT] == 0.000285
    assert reported[semconv.GEN_AI_USAGE_COST_CURRENCY] == "USD"
    assert reported[semconv.GEN_AI_USAGE_COST_SOURCE] == "provider"
    assert reported[semconv.OPERATION_COST] == 0.000285
    assert reported[semconv.OPERATION_COST_UNITS] == "USD"
    computed_later = dict(spans_by_model["gpt-5-2025-08-07"].attributes)
    assert not any(key.startswith(("gen_ai.usage.cost", "operation.cost")) for key in computed_later)
    assert computed_later[semconv.OPENAI_RESPONSE_SERVICE_TIER] == "flex"
    assert {e.provider_cost_usd for e in events} == {0.000285, None}


def test_anthropic_span_input_tokens_include_cache(
    fake_provider: FakeProvider, instrumented: RecordingEmitter, exporter: InMemorySpanExporter
) -> None:
    """gen_ai.usage.input_tokens counts cache reads and writes (Anthropic's input_tokens does not)."""
    import anthropic

    a = anthropic.Anthropic(base_url=fake_provider.anthropic_url, api_key="k")
    a.messages.create(
        model="m", max_tokens=8, messages=[],
        extra_headers={"x-fake-scenario": "fixture:anthropic_claude-sonnet-4-5_cache_1h"},
    )  # fmt: skip
    [event] = instrumented.wait_events(1)
    [span] = exporter.get_finished_spans()
    attrs = dict(span.attributes)
    assert attrs[semconv.GEN_AI_USAGE_INPUT_TOKENS] == 500 + 20_000 + 6_000 == event.input_tokens
    assert attrs[semconv.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS] == 20_000
    assert attrs[semconv.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS] == 6_000
    assert semconv.OPENAI_RESPONSE_SERVICE_TIER not in attrs
