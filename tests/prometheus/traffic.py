"""An instrumented app for the Prometheus tests: real SDKs, ``import costwatch.autoinstrument``.

Run as a subprocess: ``python traffic.py MODE PROVIDER_URL`` with ``COSTWATCH_*`` in the
environment (URL, TOKEN, APP). Modes:

- ``mixed``: OpenAI chat (JSON and streamed) on two models, Anthropic messages (JSON and
  streamed), one model without a price, and a few errors (429, 500, 401); prints a JSON
  summary and exits 0 when every call behaved as scripted.
- ``expect-blocked``: calls OpenAI until costwatch refuses a call with
  ``costwatch.KillSwitchEngaged`` (exit 0, JSON summary) or 20 s pass (exit 1).
- ``otlp``: sets up the OpenTelemetry SDK the way docs/fleet.md shows (OTLP/HTTP exporter
  reading ``OTEL_EXPORTER_OTLP_ENDPOINT``), makes two calls inside an app span, flushes.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import anthropic
import openai

import costwatch
import costwatch.autoinstrument  # instruments this process (the SDK clients are patched per class)

MESSAGES: list[Any] = [{"role": "user", "content": "hi"}]


def mixed(url: str) -> dict[str, Any]:
    oa = openai.OpenAI(base_url=url + "/v1", api_key="sk-fake", max_retries=0)
    an = anthropic.Anthropic(base_url=url, api_key="sk-ant-fake", max_retries=0)
    errors: dict[str, str] = {}
    for model in ("gpt-4o-mini", "gpt-4o", "unpriced-model"):
        for _ in range(3):
            oa.chat.completions.create(model=model, messages=MESSAGES)
        stream = oa.chat.completions.create(
            model=model, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
        for _ in stream:
            pass
    for _ in range(2):
        an.messages.create(model="claude-sonnet-4", max_tokens=32, messages=MESSAGES)
    with an.messages.stream(model="claude-sonnet-4", max_tokens=32, messages=MESSAGES) as stream:
        for _ in stream.text_stream:
            pass
    for code in (429, 500, 401):
        try:
            oa.chat.completions.create(
                model="gpt-4o-mini", messages=MESSAGES, extra_headers={"x-fake-scenario": f"status:{code}"}
            )
        except openai.APIStatusError as exc:
            errors[str(code)] = type(exc).__name__
    flushed = costwatch.flush(10)
    return {"errors": errors, "flushed": flushed}


def expect_blocked(url: str) -> dict[str, Any]:
    oa = openai.OpenAI(base_url=url + "/v1", api_key="sk-fake", max_retries=0)
    deadline = time.monotonic() + 20
    calls = 0
    while time.monotonic() < deadline:
        try:
            oa.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        except costwatch.KillSwitchEngaged as exc:
            return {"blocked": True, "calls_before": calls, "error": f"{type(exc).__name__}: {exc}"}
        calls += 1
        time.sleep(0.1)
    return {"blocked": False, "calls_before": calls}


def otlp(url: str) -> dict[str, Any]:
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": "otlp-app"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    oa = openai.OpenAI(base_url=url + "/v1", api_key="sk-fake", max_retries=0)
    with trace.get_tracer("app").start_as_current_span("handle-request") as parent:
        oa.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        stream = oa.chat.completions.create(
            model="gpt-4o", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
        for _ in stream:
            pass
    flushed = costwatch.flush(10)
    exported = provider.force_flush(10_000)
    provider.shutdown()
    ctx = parent.get_span_context()
    return {
        "flushed": flushed and exported,
        "trace_id": f"{ctx.trace_id:032x}",
        "span_id": f"{ctx.span_id:016x}",
    }


def main() -> int:
    mode, url = sys.argv[1], sys.argv[2]
    if mode == "mixed":
        result = mixed(url)
        ok = result["flushed"] and len(result["errors"]) == 3
    elif mode == "otlp":
        result = otlp(url)
        ok = result["flushed"]
    elif mode == "expect-blocked":
        result = expect_blocked(url)
        ok = result["blocked"]
    else:
        print(f"unknown mode {mode!r}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
