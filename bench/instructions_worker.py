"""N SDK calls in one process, for callgrind: ``python -m bench.instructions_worker '<json spec>'``.

Run under ``valgrind --tool=callgrind`` by `bench.instructions` (twice, with N = 20
and N = 120: the difference divided by 100 is the cost of one call, imports and
start-up cancel out). Spec: ``variant`` (``none``, ``floor``, ``costwatch``,
``otel``, ``openlit``), ``api`` (``chat``, ``responses``, ``messages``), ``mode``
(``sync``, ``async``, ``stream``: a sync streamed call read to the end), ``n``,
``url`` (the fast server); for costwatch also ``daemon``, ``state_dir`` and
``interval`` (the emitter's flush interval for this run, see `bench.instructions`);
for the peers (set up by `bench.overhead_worker.setup`, null exporters)
``peer_delay_ms`` (their batch processors' schedule delay, 5000 natively, stretched
the same way), ``pricing_json`` and ``openlit_instrumentors``. The peers run in
their own environments (`bench.venvs`), the worker is the same file.

``floor`` is the least any send patch can cost: a pass-through
``httpx2``/``httpx`` ``Client.send`` patch that appends (start, end, URL,
status, request id) to a deque. Prints one JSON line: wall time of the calls,
and for costwatch the emitter's ticks, POSTs and events sent.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import sys
import time
from collections import deque
from typing import Any

from bench.overhead_worker import EXPORTED
from bench.overhead_worker import setup as peer_setup

PROMPT = "Say hello"
MESSAGES = [{"role": "user", "content": PROMPT}]
MODELS = {"chat": "gpt-4o-mini", "responses": "gpt-4o-mini", "messages": "claude-sonnet-4-20250514"}
FLOOR: deque[tuple[Any, ...]] = deque(maxlen=10_000)


def _floor() -> None:
    """The bare-patch floor: pass-through sends that append five facts to a deque."""
    for name in ("httpx2", "httpx"):
        try:
            lib = __import__(name)
        except ImportError:
            continue
        _floor_sync(lib.Client)
        _floor_async(lib.AsyncClient)


def _floor_sync(cls: type) -> None:
    original = cls.send
    clock, append = time.perf_counter, FLOOR.append

    def send(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        t0 = clock()
        response = original(self, request, *args, **kwargs)
        append((t0, clock(), request.url, response.status_code, response.headers.get("x-request-id")))
        return response

    cls.send = send  # type: ignore[attr-defined]


def _floor_async(cls: type) -> None:
    original = cls.send
    clock, append = time.perf_counter, FLOOR.append

    async def send(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        t0 = clock()
        response = await original(self, request, *args, **kwargs)
        append((t0, clock(), request.url, response.status_code, response.headers.get("x-request-id")))
        return response

    cls.send = send  # type: ignore[attr-defined]


def _costwatch(spec: dict[str, Any]) -> Any:
    os.environ["COSTWATCH_URL"] = spec["daemon"]
    os.environ["COSTWATCH_STATE_DIR"] = spec["state_dir"]
    os.environ["COSTWATCH_APP"] = "bench"
    import costwatch.autoinstrument  # noqa: F401
    from costwatch.instrumentation import _emitter_for_tests, patch

    emitter = _emitter_for_tests()
    scale = spec["interval"] / 0.5  # the timers run as often per call as in a real run
    emitter._interval = spec["interval"]
    limiter = patch._limiter
    if limiter is not None:  # its lease exchanges are timer work too
        limiter.idle_s *= scale
        limiter.renew_s *= scale
        limiter.quiet_s *= scale
    counts = {"ticks": 0, "posts": 0}
    tick, post = emitter._tick, emitter._post

    def counted_tick() -> None:
        counts["ticks"] += 1
        tick()

    def counted_post(*args: Any, **kwargs: Any) -> bool:
        counts["posts"] += 1
        return post(*args, **kwargs)

    emitter._tick, emitter._post = counted_tick, counted_post
    emitter.bench_counts = counts
    return emitter


def _sync_call(api: str, mode: str) -> Any:
    stream = mode == "stream"
    if api == "messages":
        import anthropic

        client = anthropic.Anthropic(api_key="sk-ant-bench", base_url=URL, max_retries=0)

        def call() -> None:
            result = client.messages.create(
                model=MODELS[api], max_tokens=64, messages=MESSAGES, stream=stream
            )
            if stream:
                for _ in result:
                    pass

        return call
    import openai

    client = openai.OpenAI(api_key="sk-bench", base_url=URL + "/v1", max_retries=0)
    if api == "responses":

        def call() -> None:
            result = client.responses.create(model=MODELS[api], input=PROMPT, stream=stream)
            if stream:
                for _ in result:
                    pass

        return call

    def call() -> None:
        if stream:
            for _ in client.chat.completions.create(
                model=MODELS[api], messages=MESSAGES, stream=True, stream_options={"include_usage": True}
            ):
                pass
        else:
            client.chat.completions.create(model=MODELS[api], messages=MESSAGES)

    return call


async def _async_calls(api: str, n: int) -> None:
    if api == "messages":
        import anthropic

        aclient = anthropic.AsyncAnthropic(api_key="sk-ant-bench", base_url=URL, max_retries=0)
        for _ in range(n):
            await aclient.messages.create(model=MODELS[api], max_tokens=64, messages=MESSAGES)
        return
    import openai

    client = openai.AsyncOpenAI(api_key="sk-bench", base_url=URL + "/v1", max_retries=0)
    for _ in range(n):
        if api == "responses":
            await client.responses.create(model=MODELS[api], input=PROMPT)
        else:
            await client.chat.completions.create(model=MODELS[api], messages=MESSAGES)


URL = ""


def main() -> None:
    global URL
    spec = json.loads(sys.argv[1])
    URL = spec["url"]
    variant, api, mode, n = spec["variant"], spec["api"], spec["mode"], spec["n"]
    handle: Any = None
    if variant == "floor":
        _floor()
    elif variant == "costwatch":
        handle = _costwatch(spec)
    elif variant in ("otel", "openlit"):
        # The peers' batch processors export on a timer (5 s by default): stretched like
        # costwatch's flush interval, so they run as often per call as natively.
        for name in ("OTEL_BSP_SCHEDULE_DELAY", "OTEL_BLRP_SCHEDULE_DELAY"):
            os.environ[name] = str(round(spec.get("peer_delay_ms", 5000)))
        handle = peer_setup(variant, spec)
    started = time.perf_counter()
    if mode == "async":
        asyncio.run(_async_calls(api, n))
    else:
        call = _sync_call(api, mode)
        for _ in range(n):
            call()
    wall = time.perf_counter() - started
    out: dict[str, Any] = {"n": n, "wall_s": wall}
    if variant == "costwatch":
        from costwatch.instrumentation import flush

        flush(60.0)
        out.update(handle.bench_counts, sent=handle.stats()["sent"])
    elif variant in ("otel", "openlit"):
        handle.force_flush()
        from opentelemetry import _logs

        logs = _logs.get_logger_provider()
        if hasattr(logs, "force_flush"):
            logs.force_flush()
        out["exported"] = dict(EXPORTED)  # proof the peer was active
    elif variant == "floor":
        out["floor_records"] = len(FLOOR)
    import threading

    out["threads"] = [t.name for t in threading.enumerate()]  # alive ones, in the order they started
    # Collections per generation: where they fall moves a slope by up to ±250 k between runs.
    out["gc_collections"] = [g["collections"] for g in gc.get_stats()]
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
