"""One overhead variant in a fresh process: ``python -m bench.overhead_worker '<json spec>'``.

Instrumentation cannot be toggled cleanly inside one process, so the runner
starts one of these per (environment, mode, variant). It sets up the variant,
warms up, says ``ready``, then for every ``run N`` line on stdin times N calls
of the real ``openai`` SDK against the loopback fast server, one at a time,
and prints one JSON line per block. The runner drives the variants' blocks in
turn, so every variant sees the same machine load.

Variants: ``none`` (uninstrumented), ``costwatch`` (``import
costwatch.autoinstrument``, emitter → fake sink in count-only mode),
``otel`` (``opentelemetry-instrumentation-openai-v2`` with an SDK tracer
provider + batch processor + a null exporter, and an SDK meter provider),
``openlit`` (``openlit.init`` with the same null tracer/meter, OpenAI only).
Peers get exporters that drop everything, so only their in-process cost is
measured, as costwatch's sink only counts.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import sys
import time
from typing import Any

MESSAGES = [{"role": "user", "content": "Say hello"}]
MODEL = "gpt-4o-mini"
EXPORTED = {"spans": 0, "logs": 0}


def _otel_providers() -> tuple[Any, Any]:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class NullExporter(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            EXPORTED["spans"] += len(spans)
            return SpanExportResult.SUCCESS

        def shutdown(self) -> None:
            pass

    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(NullExporter()))
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    try:  # events/logs (openlit emits them; the official one may): a null exporter too
        from opentelemetry import _logs
        from opentelemetry.sdk._logs import LoggerProvider
        from opentelemetry.sdk._logs.export import (
            BatchLogRecordProcessor,
            LogRecordExporter,
            LogRecordExportResult,
        )

        class NullLogs(LogRecordExporter):
            def export(self, batch: Any) -> LogRecordExportResult:
                EXPORTED["logs"] += len(batch)
                return LogRecordExportResult.SUCCESS

            def shutdown(self) -> None:
                pass

            def force_flush(self, timeout_millis: int = 0) -> bool:
                return True

        logger_provider = LoggerProvider()
        logger_provider.add_log_record_processor(BatchLogRecordProcessor(NullLogs()))
        _logs.set_logger_provider(logger_provider)
    except ImportError:
        pass
    return tracer_provider, meter_provider


def setup(variant: str, spec: dict[str, Any]) -> Any:
    if variant == "none":
        return None
    if variant == "costwatch":
        os.environ["COSTWATCH_URL"] = spec["sink"]
        os.environ["COSTWATCH_STATE_DIR"] = spec["state_dir"]
        os.environ["COSTWATCH_APP"] = "bench"
        os.environ.setdefault("COSTWATCH_TOKEN", "bench")
        import costwatch.autoinstrument  # noqa: F401
        from costwatch.instrumentation import _emitter_for_tests

        return _emitter_for_tests()
    if variant == "otel":
        from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor

        tp, mp = _otel_providers()
        OpenAIInstrumentor().instrument(tracer_provider=tp, meter_provider=mp)
        return tp
    if variant == "openlit":
        import openlit
        from opentelemetry import metrics, trace

        tp, mp = _otel_providers()
        trace.set_tracer_provider(tp)
        metrics.set_meter_provider(mp)
        from openlit._instrumentors import MODULE_NAME_MAP

        kwargs: dict[str, Any] = dict(
            application_name="bench",
            # OpenAI only unless the spec names others (bench.instructions adds anthropic for messages)
            disabled_instrumentors=[
                name for name in MODULE_NAME_MAP if name not in spec.get("openlit_instrumentors", ["openai"])
            ],
            collect_gpu_stats=False,
            capture_message_content=False,
        )
        if spec.get("pricing_json"):
            kwargs["pricing_json"] = spec["pricing_json"]
        openlit.init(**kwargs)
        return tp
    raise ValueError(variant)


def _calls_sync(client: Any, n: int, stream: bool, out: list[int]) -> None:
    create = client.chat.completions.create
    clock = time.perf_counter_ns
    for _ in range(n):
        t = clock()
        if stream:
            for _ in create(
                model=MODEL, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
            ):
                pass
        else:
            create(model=MODEL, messages=MESSAGES)
        out.append(clock() - t)


async def _calls_async(client: Any, n: int, stream: bool, out: list[int]) -> None:
    create = client.chat.completions.create
    clock = time.perf_counter_ns
    for _ in range(n):
        t = clock()
        if stream:
            async for _ in await create(
                model=MODEL, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
            ):
                pass
        else:
            await create(model=MODEL, messages=MESSAGES)
        out.append(clock() - t)


def _settle(variant: str, handle: Any) -> None:
    """End of a block: hand off what the instrumentation still holds (counted in the block's time)."""
    if variant == "costwatch":
        from costwatch.instrumentation import flush

        flush(10.0)
    elif variant in ("otel", "openlit"):
        handle.force_flush()


def _block(variant: str, handle: Any, n: int, runner: Any) -> dict[str, Any]:
    times: list[int] = []
    gc.collect()
    em0 = handle.stats() if variant == "costwatch" and handle is not None else None
    cpu0, wall0 = time.process_time(), time.perf_counter()
    runner(n, times)
    _settle(variant, handle)
    wall = time.perf_counter() - wall0
    cpu = time.process_time() - cpu0  # every thread of the process: the emitter/exporter threads too
    times.sort()
    extra = {}
    if em0 is not None:
        time.sleep(0.02)  # the emitter stores its thread CPU time right after the tick that flushed
        em1 = handle.stats()
        extra = {
            "emitter_cpu_us": em1["emitter_cpu_us"] - em0["emitter_cpu_us"],
            "emitter_sent": em1["sent"] - em0["sent"],
        }
    return {**extra, "n": n, "wall_s": wall, "cpu_s": cpu, "median_us": times[n // 2] / 1000,
            "p90_us": times[int(n * 0.9)] / 1000, "p99_us": times[int(n * 0.99)] / 1000}  # fmt: skip


def main() -> None:
    """Set up, warm up, say ``ready``; then per stdin line ``run N`` time N calls and print a JSON line; ``quit``."""
    spec = json.loads(sys.argv[1])
    variant, mode, warmup = spec["variant"], spec["mode"], spec["warmup"]
    handle = setup(variant, spec)
    import openai

    base_url = spec["url"] + "/v1"
    stream = mode.endswith("stream")

    def serve(runner: Any) -> None:
        runner(warmup, [])
        _settle(variant, handle)
        print("ready", flush=True)
        for line in sys.stdin:
            cmd = line.split()
            if not cmd or cmd[0] == "quit":
                break
            print(json.dumps(_block(variant, handle, int(cmd[1]), runner)), flush=True)

    if mode.startswith("async"):
        # one event loop for the process's life (the async client's connections are bound to it)
        loop = asyncio.new_event_loop()
        client = openai.AsyncOpenAI(base_url=base_url, api_key="sk-bench-0000", max_retries=0)
        serve(lambda n, out: loop.run_until_complete(_calls_async(client, n, stream, out)))
    else:
        client = openai.OpenAI(base_url=base_url, api_key="sk-bench-0000", max_retries=0)
        serve(lambda n, out: _calls_sync(client, n, stream, out))
    final: dict[str, Any] = {
        "final": True,
        "variant": variant,
        "mode": mode,
        "env": spec["env"],
        "openai": openai.__version__,
    }
    if variant == "costwatch" and handle is not None:
        time.sleep(0.25)  # the emitter thread stores its CPU time after each tick
        stats = handle.stats()
        final["emitter"] = {
            k: stats[k]
            for k in (
                "sent",
                "submitted",
                "emitter_cpu_us",
                "dropped_queue_full",
                "spooled",
                "conversion_errors",
            )
        }
    if variant in ("otel", "openlit"):
        final["exported"] = dict(EXPORTED)  # proof the peer was active
    print(json.dumps(final), flush=True)
    os._exit(0)  # skip atexit flushes/exporters: measured already


if __name__ == "__main__":
    main()
