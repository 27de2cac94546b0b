"""1b. Call-path cost alone: costwatch's ``send`` patch with an emitter that discards records.

Diagnostic for section 1. In one process (per mode), blocks of calls alternate
between instrumented (``costwatch.instrumentation.instrument(emitter=<discard>)``)
and uninstrumented (``uninstrument()`` restores the original ``send``), so the
difference is what the app thread pays inside ``send`` (recognition, record,
stream proxy, submit) without any emitter thread competing for the GIL or a core.
The emitter's own cost is section 1's ``emitter CPU`` column.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from bench.common import ROOT, env_for_children, mmm, start_url_proc

WORKER = r"""
import asyncio, gc, json, sys, time
spec = json.loads(sys.argv[1])
import openai
import costwatch.instrumentation as ci

class _KS:
    active = False

class Discard:
    killswitch = _KS()
    def start(self): pass
    def submit(self, record): pass
    def flush(self, timeout=0): return True
    def close(self, timeout=0): pass

MESSAGES = [{"role": "user", "content": "Say hello"}]
mode, blocks, k = spec["mode"], spec["blocks"], spec["k"]
stream = mode == "stream"
loop = asyncio.new_event_loop()
if mode == "async":
    client = openai.AsyncOpenAI(base_url=spec["url"] + "/v1", api_key="sk-bench-0000", max_retries=0)
    async def calls(n, out):
        for _ in range(n):
            t = time.perf_counter_ns()
            await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
            out.append(time.perf_counter_ns() - t)
    run = lambda n, out: loop.run_until_complete(calls(n, out))
else:
    client = openai.OpenAI(base_url=spec["url"] + "/v1", api_key="sk-bench-0000", max_retries=0)
    def run(n, out):
        for _ in range(n):
            t = time.perf_counter_ns()
            if stream:
                for _ in client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True,
                                                        stream_options={"include_usage": True}):
                    pass
            else:
                client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
            out.append(time.perf_counter_ns() - t)
run(300, [])
ci.instrument(emitter=Discard()); run(100, []); ci.uninstrument()
res = []
for b in range(blocks):
    for variant in (("off", "on") if b % 2 else ("on", "off")):
        if variant == "on":
            ci.instrument(emitter=Discard())
        times = []
        gc.collect()
        t0 = time.perf_counter()
        run(k, times)
        wall = time.perf_counter() - t0
        if variant == "on":
            ci.uninstrument()
        times.sort()
        res.append({"block": b, "variant": variant, "per_call_us": wall / k * 1e6, "median_us": times[k // 2] / 1000})
print(json.dumps(res))
"""


def run(quick: bool, log: Any = print) -> dict[str, Any]:
    import subprocess

    blocks = 6 if quick else 20
    k = 300 if quick else 500
    server = start_url_proc([sys.executable, "-m", "bench.fastserver"])
    out: dict[str, Any] = {"quick": quick, "blocks": blocks, "k": k, "summary": {}}
    try:
        for mode in ("sync", "async", "stream"):
            spec = {"mode": mode, "blocks": blocks, "k": k, "url": server.url}
            done = subprocess.run([sys.executable, "-c", WORKER, json.dumps(spec)], cwd=ROOT, env=env_for_children(),
                                  capture_output=True, text=True, timeout=900, check=True)  # fmt: skip
            res = json.loads(done.stdout.strip().splitlines()[-1])
            on = {r["block"]: r for r in res if r["variant"] == "on"}
            off = {r["block"]: r for r in res if r["variant"] == "off"}
            added = [on[b]["median_us"] - off[b]["median_us"] for b in on]
            ratio = [on[b]["per_call_us"] / off[b]["per_call_us"] for b in on]
            out["summary"][mode] = {"added_median_us": mmm(added), "wall_ratio": mmm(ratio),
                                    "calls": blocks * k, "off_median_us": mmm([r["median_us"] for r in off.values()])}  # fmt: skip
            log(
                f"callpath {mode:6}: +{out['summary'][mode]['added_median_us']['median']:.1f} µs median per call,"
                f" ×{out['summary'][mode]['wall_ratio']['median']:.3f} wall"
            )
    finally:
        server.stop()
    return out
