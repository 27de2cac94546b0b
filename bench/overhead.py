"""1. Instrumentation overhead: the real openai SDK against the loopback fast server, per variant.

Two environments, each with its own uninstrumented baseline measured in the
same run: ``main`` (openai 3.x on httpx2: none / costwatch / otel-openai-v2)
and ``old`` (openai 2.x on httpx: none / costwatch / openlit). Every
(environment, mode, variant) runs in its own fresh process; the processes of
one (environment, mode) are alive together and the runner has them time
blocks of ``k`` calls in turn (order rotated every block), so drifting machine
load hits every variant alike. Each block ends with the instrumentation's own
flush (costwatch: ``flush()``; peers: ``force_flush()``) inside the timed
window, and its CPU time counts every thread of the process. Ratios and added
µs are computed per block against the same block's baseline, then summarized
as min / median / max over blocks.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from bench import venvs
from bench.common import ROOT, env_for_children, mmm, start_url_proc

MODES = ("sync", "async", "stream")
GROUPS: dict[str, tuple[str, ...]] = {
    "main": ("none", "costwatch", "otel"),
    "old": ("none", "costwatch", "openlit"),
}
ENV_INTERPRETER = {"main": "otel", "old": "old"}  # main: the otel venv = main packages + the peer

PRICING = {  # openlit reads prices from a file instead of fetching them (no network here)
    "chat": {
        "gpt-4o-mini": {"promptPrice": 0.00015, "completionPrice": 0.0006},
        "gpt-4o-mini-2024-07-18": {"promptPrice": 0.00015, "completionPrice": 0.0006},
    }
}


class _Worker:
    def __init__(self, python: str, spec: dict[str, Any]) -> None:
        self.variant = spec["variant"]
        self.popen = subprocess.Popen([python, "-m", "bench.overhead_worker", json.dumps(spec)], cwd=ROOT,
                                      env=env_for_children(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True)  # fmt: skip

    def _line(self) -> str:
        assert self.popen.stdout is not None
        line = self.popen.stdout.readline()
        if not line:
            err = self.popen.stderr.read() if self.popen.stderr else ""
            raise RuntimeError(f"overhead worker {self.variant} died: {err[-2000:]}")
        return line.strip()

    def ready(self) -> None:
        while self._line() != "ready":
            pass

    def block(self, n: int) -> dict[str, Any]:
        assert self.popen.stdin is not None
        self.popen.stdin.write(f"run {n}\n")
        self.popen.stdin.flush()
        return json.loads(self._line())

    def quit(self) -> dict[str, Any]:
        assert self.popen.stdin is not None
        self.popen.stdin.write("quit\n")
        self.popen.stdin.flush()
        final = json.loads(self._line())
        self.popen.wait(30)
        return final


def run(quick: bool, log: Any = print) -> dict[str, Any]:
    blocks = 6 if quick else 20
    k = 500 if quick else 1_000
    if os.environ.get("CWBENCH_TINY"):  # development only
        blocks, k = 2, 100  # calls per block; blocks × k = calls per (environment, mode, variant)
    warmup = 300
    pythons: dict[str, str] = {}
    for group in GROUPS:
        try:
            pythons[group] = venvs.ensure(ENV_INTERPRETER[group])
        except BaseException as exc:  # a peer environment that cannot be built: run without it
            log(f"overhead: environment {ENV_INTERPRETER[group]} unavailable ({exc}); skipping its peer")
            if group == "main":
                pythons[group] = venvs.python("main")
    groups: dict[str, tuple[str, ...]] = {}
    for group, variants in GROUPS.items():
        if group not in pythons:
            continue
        if group == "main" and pythons[group] == venvs.python("main"):  # no otel environment
            variants = tuple(v for v in variants if v != "otel")
        groups[group] = variants
    server = start_url_proc([venvs.python("main"), "-m", "bench.fastserver"])
    sink = start_url_proc([venvs.python("main"), "-m", "tests.fakes.sink", "--count-only"])
    samples: list[dict[str, Any]] = []
    finals: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="cwbench-overhead-") as tmp:
            pricing = Path(tmp) / "pricing.json"
            pricing.write_text(json.dumps(PRICING))
            for mode in MODES:
                for group, variants in groups.items():
                    workers = []
                    for variant in variants:
                        spec = {
                            "variant": variant, "mode": mode, "warmup": warmup, "env": group, "url": server.url,
                            "sink": sink.url, "state_dir": str(Path(tmp) / f"state-{group}-{mode}"),
                            "pricing_json": str(pricing),
                        }  # fmt: skip
                        workers.append(_Worker(pythons[group], spec))
                    try:
                        for w in workers:
                            w.ready()
                        for b in range(blocks):
                            r = b % len(workers)
                            for w in workers[r:] + workers[:r]:
                                res = w.block(k)
                                res.update(env=group, mode=mode, variant=w.variant, block=b)
                                samples.append(res)
                        finals += [w.quit() for w in workers]
                    finally:
                        for w in workers:
                            if w.popen.poll() is None:
                                w.popen.kill()
                    summary = summarize(samples)
                    log(f"overhead {group:4} {mode:6} " + "  ".join(
                        f"{v}: {summary[f'{group}/{mode}/{v}']['per_call_us']['median']:.0f} µs/call"
                        + (f" ×{summary[f'{group}/{mode}/{v}']['wall_ratio']['median']:.3f}"
                           f" +{summary[f'{group}/{mode}/{v}']['added_median_us']['median']:.1f} µs" if v != "none" else "")
                        for v in variants))  # fmt: skip
    finally:
        server.stop()
        sink.stop()
    return {"quick": quick, "blocks": blocks, "calls_per_block": k, "warmup": warmup, "samples": samples,
            "finals": finals, "summary": summarize(samples, finals)}  # fmt: skip


def summarize(samples: list[dict[str, Any]], finals: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    for s in samples:
        s["per_call_us"] = s["wall_s"] / s["n"] * 1e6
    base = {(s["env"], s["mode"], s["block"]): s for s in samples if s["variant"] == "none"}
    final = {(f["env"], f["mode"], f["variant"]): f for f in finals or []}
    out: dict[str, Any] = {}
    keys = sorted({(s["env"], s["mode"], s["variant"]) for s in samples})
    for env, mode, variant in keys:
        rows = [s for s in samples if (s["env"], s["mode"], s["variant"]) == (env, mode, variant)]
        entry: dict[str, Any] = {
            "calls": sum(s["n"] for s in rows),
            "per_call_us": mmm([s["per_call_us"] for s in rows]),
            "median_call_us": mmm([s["median_us"] for s in rows]),
        }
        if variant != "none":
            pairs = [(s, base[(env, mode, s["block"])]) for s in rows if (env, mode, s["block"]) in base]
            entry["wall_ratio"] = mmm([s["per_call_us"] / b["per_call_us"] for s, b in pairs])
            entry["added_median_us"] = mmm([s["median_us"] - b["median_us"] for s, b in pairs])
            entry["cpu_ratio"] = mmm([s["cpu_s"] / s["n"] / (b["cpu_s"] / b["n"]) for s, b in pairs])
        f = final.get((env, mode, variant), {})
        entry["openai"] = f.get("openai", "?")
        em = f.get("emitter")
        if em:
            # µs of emitter-thread CPU per event = ms per 1k events, per block
            entry["emitter_cpu_ms_per_1k"] = mmm(
                [s["emitter_cpu_us"] / s["emitter_sent"] for s in rows if s.get("emitter_sent")]
            )
            entry["delivered"], entry["submitted"], entry["dropped"] = (
                em["sent"],
                em["submitted"],
                em["dropped_queue_full"],
            )
        if "exported" in f:
            entry["spans_exported"] = f["exported"]["spans"]
        out[f"{env}/{mode}/{variant}"] = entry
    return out
