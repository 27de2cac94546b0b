"""OpenTelemetry GenAI spans, created on the emitter thread with explicit times.

The parent context is captured on the call path (a contextvar read); the span
itself is built later from the finished event fields, so the app pays nothing
for it. Nothing happens unless an SDK ``TracerProvider`` is configured (the
API's default proxy/no-op providers are skipped).

Token attributes carry costwatch's normalized counts: ``gen_ai.usage.input_tokens``
includes cache reads and writes for every provider (Anthropic's ``input_tokens`` does
not; `costwatch.instrumentation.anthropic` adds them), as the GenAI conventions ask.

Cost: the span is built on the emitter thread, and costwatch computes cost in the
daemon, so the only cost known here is one the response reported itself
(``provider_cost_usd``, e.g. a router's ``usage.cost``). Only then does the span carry
cost, under both candidate conventions (see `costwatch.semconv`):
``gen_ai.usage.cost.amount`` / ``.currency`` / ``.source = provider`` and
``operation.cost`` / ``operation.cost_units``. Computed costs are in the ledger
(`usage_events.cost_usd`) and the ``costwatch_llm_cost_usd`` metric, joined to spans by
``trace_id`` / ``span_id``.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

from costwatch import semconv

# OpenTelemetry is used only once the app has imported it (~20 ms of an app's start otherwise):
# without `opentelemetry.context` there is no current span to be a parent, and without
# `opentelemetry.trace` no SDK TracerProvider can have been set. Each module is taken once it is
# in `sys.modules` (an import in progress in another thread is waited for by `import`).
_otel_context: Any = None
_trace: Any = None

_OPERATIONS = {
    "chat": semconv.OPERATION_CHAT,
    "responses": semconv.OPERATION_CHAT,
    "messages": semconv.OPERATION_CHAT,
    "embeddings": semconv.OPERATION_EMBEDDINGS,
    "completions": semconv.OPERATION_TEXT_COMPLETION,
}
_OPENAI_PROVIDERS = ("openai", "azure.openai")
_tracers: dict[int, Any] = {}
_UNSET = object()
_batch = threading.local()  # .tracer: pinned by `pin()` for one emitter batch


def current_context() -> Any:
    """Call path: the parent context, or None while the app has not imported OpenTelemetry."""
    otel_context = _otel_context
    if otel_context is None:
        otel_context = _adopt_context()
        if otel_context is None:
            return None
    return otel_context.get_current()


def _adopt_context() -> Any:
    global _otel_context
    if "opentelemetry.context" in sys.modules:
        from opentelemetry import context

        _otel_context = context
    return _otel_context


def _trace_api() -> Any:
    """`opentelemetry.trace` once the app has imported it (the SDK does), else None."""
    global _trace
    if _trace is None and "opentelemetry.trace" in sys.modules:
        from opentelemetry import trace

        _trace = trace
    return _trace


def tracer_provider() -> Any:
    """The global provider (a seam for tests, which cannot reset the global one)."""
    return _trace.get_tracer_provider()


def pin() -> None:
    """Look the provider up once for a whole batch (this thread) instead of once per event."""
    try:
        _batch.tracer = _lookup()
    except Exception:  # left to each event's own lookup, whose failure is counted per event
        _batch.tracer = _UNSET


def unpin() -> None:
    _batch.tracer = _UNSET


def enabled() -> bool:
    """Cheap pre-check: False when a pinned batch has no SDK provider (span work is skipped)."""
    return getattr(_batch, "tracer", _UNSET) is not None


def _tracer() -> Any:
    tracer = getattr(_batch, "tracer", _UNSET)
    return _lookup() if tracer is _UNSET else tracer


def _lookup() -> Any:
    if _trace_api() is None:
        return None
    provider = tracer_provider()
    if isinstance(provider, (_trace.ProxyTracerProvider, _trace.NoOpTracerProvider)):
        return None
    tracer = _tracers.get(id(provider))
    if tracer is None:
        from costwatch._version import __version__

        tracer = _tracers[id(provider)] = provider.get_tracer("costwatch", __version__)
    return tracer


def emit(fields: dict[str, Any], parent: Any, wall0: float) -> tuple[str, str] | None:
    """Record one CLIENT span for the event fields; returns (trace_id, span_id) hex or None."""
    tracer = _tracer()
    if tracer is None:
        return None
    operation = _OPERATIONS.get(fields["operation"], fields["operation"])
    model = fields.get("request_model") or fields.get("model") or ""
    attributes: dict[str, Any] = {
        semconv.GEN_AI_PROVIDER_NAME: fields["provider"],
        semconv.GEN_AI_OPERATION_NAME: operation,
        semconv.SERVER_ADDRESS: fields["server_address"].rsplit(":", 1)[0]
        if fields.get("server_address")
        else "",
    }
    optional = {
        semconv.GEN_AI_REQUEST_MODEL: fields.get("request_model"),
        semconv.GEN_AI_RESPONSE_MODEL: fields.get("response_model"),
        semconv.GEN_AI_USAGE_INPUT_TOKENS: fields.get("input_tokens"),
        semconv.GEN_AI_USAGE_OUTPUT_TOKENS: fields.get("output_tokens"),
        semconv.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS: fields.get("cached_input_tokens"),
        semconv.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS: fields.get("cache_write_tokens"),
        semconv.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS: fields.get("reasoning_tokens"),
        semconv.ERROR_TYPE: fields.get("error_class"),
    }
    if fields.get("service_tier") and fields["provider"] in _OPENAI_PROVIDERS:
        optional[semconv.OPENAI_RESPONSE_SERVICE_TIER] = fields["service_tier"]
    cost = fields.get("provider_cost_usd")
    if cost is not None:
        optional[semconv.GEN_AI_USAGE_COST_AMOUNT] = cost
        optional[semconv.GEN_AI_USAGE_COST_CURRENCY] = semconv.COST_CURRENCY_USD
        optional[semconv.GEN_AI_USAGE_COST_SOURCE] = semconv.COST_SOURCE_PROVIDER
        optional[semconv.OPERATION_COST] = cost
        optional[semconv.OPERATION_COST_UNITS] = semconv.COST_CURRENCY_USD
    if fields.get("ttft_ms") is not None:
        optional[semconv.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK] = fields["ttft_ms"] / 1000
    attributes.update({k: v for k, v in optional.items() if v is not None})
    start_ns = int(wall0 * 1e9)
    end_ns = start_ns + int(max(0.0, fields["ts_end"] - fields["ts_start"]) * 1e9)
    span = tracer.start_span(
        f"{operation} {model}".strip(),
        context=parent,
        kind=_trace.SpanKind.CLIENT,
        attributes=attributes,
        start_time=start_ns,
    )
    if fields.get("error_class"):
        span.set_status(_trace.Status(_trace.StatusCode.ERROR))
    span.end(end_time=end_ns)
    ctx = span.get_span_context()
    if not ctx.is_valid:
        return None
    return f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"
