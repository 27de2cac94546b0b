"""Instructions per SDK call under callgrind: the deterministic overhead figure (issue 18).

Each (API, mode, variant) runs `bench.instructions_worker` twice under
``valgrind --tool=callgrind --separate-threads=yes``, with N = 20 and N = 120
calls; (I(120) - I(20)) / 100 is the cost of one call, every thread and the
exit flush included, imports and start-up cancelled out. Thread 1 is the
app's thread (the call path); the others are background threads (costwatch's
emitter and kill-switch long poll, asyncio's helpers).

Timers: under valgrind a call takes tens of times longer than natively, so a
timer that fires every 0.5 s (costwatch's flush) would fire tens of times more
often per call than in a real run. The section measures that slowdown (the
uninstrumented variant's seconds per call under valgrind against a native run
of the same worker) and runs costwatch with its flush interval multiplied by
it (and its lease exchanges' intervals): the emitter ticks and POSTs as often per call
as it would natively. The kill-switch long poll and the lease-exchange threads run by
the wall clock alone: their counts are reported apart, not in the per-call figure. One
cell (chat, sync) also runs costwatch with the unscaled 0.5 s interval, reported
apart (``costwatch @0.5 s``), so the timer share is visible and a stretched
timer cannot hide per-call work.

Where the instructions go: ``callgrind_annotate`` of costwatch's and the
uninstrumented run (N = 120, all threads summed), subtracted function by
function; the top of that difference is saved with the figures.
"""

from __future__ import annotations

import compileall
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench import common

APIS = ("chat", "responses", "messages")
MODES = ("sync", "async", "stream")
VARIANTS = ("none", "floor", "costwatch")
FLOOR_APIS = ("chat",)  # the floor does not depend on the API: measured for chat, in every mode
DEFAULT_TIMER_CELLS = (("chat", "sync"),)  # costwatch also with its real 0.5 s flush interval
N_LO, N_HI = 20, 120
DEFAULT_INTERVAL_S = 0.5
TIMER_THREADS = ("costwatch-killswitch", "costwatch-limits")
TARGET_PCT = 1.0
PARALLEL = 2
# A fixed hash seed: with a random one, dict layouts and collection timings differ from run to
# run and the same code measured ±100 k instructions per call apart; fixed, two runs agree
# within a few hundred instructions in total.
_ENV = common.env_for_children(PYTHONHASHSEED="0")
_TOTALS = re.compile(r"^totals:\s+(\d+)", re.M)
_ANNOTATE_LINE = re.compile(r"^\s*([\d,]+) \(\s*[\d.]+%\)\s+(.*?)(?: \[(.*)\])?$")


def _worker(spec: dict[str, Any]) -> list[str]:
    return [sys.executable, "-m", "bench.instructions_worker", json.dumps(spec)]


def _threads(out: Path) -> list[int]:
    """Instructions per thread, in thread order (files OUT-01, OUT-02, …)."""
    files = sorted(out.parent.glob(out.name + "-*"), key=lambda p: int(p.name.rsplit("-", 1)[1]))
    counts = []
    for path in files:
        match = _TOTALS.search(path.read_text(errors="replace")[-4000:]) or _TOTALS.search(
            path.read_text(errors="replace")
        )
        counts.append(int(match.group(1)) if match else 0)
    return counts


def _before_tree() -> tuple[Path, str] | None:
    """``COSTWATCH_BENCH_BEFORE=DIR[:LABEL]``: also measure the costwatch of another tree (e.g. a
    ``git archive`` of an older commit with this bench copied in), as ``costwatch-before``."""
    value = os.environ.get("COSTWATCH_BENCH_BEFORE")
    if not value:
        return None
    path, _, label = value.partition(":")
    return Path(path), label or Path(path).name


BEFORE_CELLS = (
    ("chat", "sync"),
    ("chat", "stream"),
    ("responses", "stream"),
    ("messages", "sync"),
    ("messages", "stream"),
)


def _callgrind(spec: dict[str, Any], out: Path) -> dict[str, Any]:
    args = [
        "valgrind",
        "--tool=callgrind",
        "--separate-threads=yes",
        f"--callgrind-out-file={out}",
        *_worker(spec),
    ]
    env = {**_ENV, "PYTHONPATH": spec["root"]} if spec.get("root") else _ENV
    # `python -m` puts the working directory first on sys.path: run from the tree measured.
    cwd = spec.get("root") or common.ROOT
    done = subprocess.run(args, capture_output=True, text=True, cwd=cwd, env=env, timeout=1800)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"callgrind run failed ({done.returncode}): {done.stderr[-2000:]}")
    threads = _threads(out)
    return {**json.loads(lines[-1]), "thread_counts": threads, "total": sum(threads)}


def _native_s_per_call(spec: dict[str, Any]) -> float:
    lo = common.run_json(_worker({**spec, "n": 50}), PYTHONHASHSEED="0")
    hi = common.run_json(_worker({**spec, "n": 250}), PYTHONHASHSEED="0")
    return max(1e-6, (hi["wall_s"] - lo["wall_s"]) / 200)


def annotate(out: Path, thread: int | None = None) -> dict[str, int]:
    """Self instructions by function, summed over every thread's file (or one thread's)."""
    by_fn: dict[str, int] = {}
    paths = sorted(out.parent.glob(out.name + "-*"))
    if thread is not None:
        paths = [out.parent / f"{out.name}-{thread:02d}"]
    for path in paths:
        text = subprocess.run(
            ["callgrind_annotate", "--threshold=100", str(path)], capture_output=True, text=True
        ).stdout
        for line in text.splitlines():
            match = _ANNOTATE_LINE.match(line)
            if not match or "PROGRAM TOTALS" in line:
                continue
            fn = match.group(2).rsplit("/", 1)[-1]  # file:function without the build path
            lib = (match.group(3) or "").rsplit("/", 1)[-1]
            key = f"{fn} [{lib}]" if lib else fn
            by_fn[key] = by_fn.get(key, 0) + int(match.group(1).replace(",", ""))
    return by_fn


def _diff(cw: dict[str, int], bare: dict[str, int], calls: int, top: int = 25) -> list[list[Any]]:
    rows = [(fn, cw.get(fn, 0) - bare.get(fn, 0)) for fn in set(cw) | set(bare)]
    rows.sort(key=lambda r: -r[1])
    return [[fn, round(delta / calls)] for fn, delta in rows[:top] if delta > 0]


def _top(by_fn: dict[str, int], calls: int, top: int = 25) -> list[list[Any]]:
    return [[fn, round(n / calls)] for fn, n in sorted(by_fn.items(), key=lambda r: -r[1])[:top]]


def run(quick: bool, log: Any = print) -> dict[str, Any]:
    if shutil.which("valgrind") is None:
        raise RuntimeError("valgrind is not installed (Debian package valgrind; ./dev test installs it)")
    apis = ("chat",) if quick else APIS
    modes = MODES
    cells = [(api, mode) for api in apis for mode in modes]
    before = _before_tree()
    # Bytecode compiled up front: a first run that compiles and writes .pyc files would count
    # the compilation in N = 20 and not in N = 120.
    for root in (common.ROOT, *((before[0],) if before else ())):
        for sub in ("costwatch", "bench"):
            compileall.compile_dir(str(root / sub), quiet=1)
    server = common.start_url_proc([sys.executable, "-m", "bench.fastserver"])
    work = Path(tempfile.mkdtemp(prefix="cwbench-instructions-"))
    daemon = common.start_daemon(work / "state")
    results: dict[str, Any] = {}
    try:
        base = {"url": server.url, "daemon": daemon.url, "state_dir": str(daemon.state_dir)}

        def measure(key: tuple[str, str, str], spec: dict[str, Any]) -> dict[str, Any]:
            runs = {}
            for n in (N_LO, N_HI):
                out = work / f"{'-'.join(key)}-{n}.out"
                runs[n] = _callgrind({**spec, "n": n}, out)
            lo, hi = runs[N_LO], runs[N_HI]
            calls = N_HI - N_LO
            width = max(len(lo["thread_counts"]), len(hi["thread_counts"]))
            pad = lambda t: t + [0] * (width - len(t))  # noqa: E731
            per_thread = [
                round((h - lo_) / calls)
                for h, lo_ in zip(pad(hi["thread_counts"]), pad(lo["thread_counts"]), strict=True)
            ]
            # costwatch's timer threads (kill-switch long poll, limits lease exchange) run by the
            # wall clock, not per call: reported apart, never in the per-call figure.
            timers = [i for i, name in enumerate(hi.get("threads", [])) if name in TIMER_THREADS]
            assert all(i < len(per_thread) for i in timers), (hi.get("threads"), per_thread)
            timer_total = sum(per_thread[i] for i in timers)
            row = {
                "per_call": round((hi["total"] - lo["total"]) / calls) - timer_total,
                "app_thread": per_thread[0],
                "background": sum(per_thread[1:]) - timer_total,
                "timer_threads": {hi["threads"][i]: per_thread[i] for i in timers},
                "per_thread": per_thread,
                "s_per_call_valgrind": (hi["wall_s"] - lo["wall_s"]) / calls,
                "runs": {str(n): r for n, r in runs.items()},
            }
            log(f"  {' '.join(key)}: {row['per_call']:,} instructions per call "
                f"(app thread {row['app_thread']:,}, background {row['background']:,})")  # fmt: skip
            return row

        # 1. uninstrumented and floor (no timers), two at a time
        jobs = [((api, mode, v), {**base, "variant": v, "api": api, "mode": mode})
                for api, mode in cells for v in ("none", "floor") if v == "none" or api in FLOOR_APIS]  # fmt: skip
        with ThreadPoolExecutor(PARALLEL) as pool:
            for (key, _), row in zip(jobs, pool.map(lambda j: measure(*j), jobs), strict=True):
                results["/".join(key)] = row
        # 2. the valgrind slowdown per cell → costwatch's flush interval for that cell
        slowdowns = {}
        for api, mode in cells:
            native = _native_s_per_call({**base, "variant": "none", "api": api, "mode": mode})
            slowdowns[(api, mode)] = results[f"{api}/{mode}/none"]["s_per_call_valgrind"] / native
            results[f"{api}/{mode}/none"].update(native_s_per_call=native, slowdown=slowdowns[(api, mode)])
        # Wall time under valgrind on shared cores is noisy (two runs in parallel, other work):
        # a cell's own ratio can come out near 1. Never below the median of the cells.
        typical = statistics.median(slowdowns.values())
        intervals = {
            cell: min(600.0, DEFAULT_INTERVAL_S * max(1.0, typical, slowdown))
            for cell, slowdown in slowdowns.items()
        }
        # 3. costwatch with scaled timers; and once per mode with the real 0.5 s
        jobs = [((api, mode, "costwatch"),
                 {**base, "variant": "costwatch", "api": api, "mode": mode, "interval": intervals[(api, mode)]})
                for api, mode in cells]  # fmt: skip
        jobs += [((api, mode, "costwatch@0.5s"),
                  {**base, "variant": "costwatch", "api": api, "mode": mode, "interval": DEFAULT_INTERVAL_S})
                 for api, mode in DEFAULT_TIMER_CELLS if (api, mode) in cells]  # fmt: skip
        if before is not None:
            jobs += [((api, mode, "costwatch-before"),
                      {**base, "variant": "costwatch", "api": api, "mode": mode,
                       "interval": intervals[(api, mode)], "root": str(before[0])})
                     for api, mode in BEFORE_CELLS if (api, mode) in cells]  # fmt: skip
        log("  flush intervals: " + ", ".join(f"{a}/{m} {v:.1f} s" for (a, m), v in intervals.items()))
        with ThreadPoolExecutor(PARALLEL) as pool:
            for (key, spec), row in zip(jobs, pool.map(lambda j: measure(*j), jobs), strict=True):
                row["interval_s"] = spec["interval"]
                results["/".join(key)] = row
        # 4. where the instructions go: costwatch's slope − the uninstrumented slope, by function
        profiles = {}
        calls = N_HI - N_LO
        for api, mode in cells:

            def slope(
                variant: str, thread: int | None = None, api: str = api, mode: str = mode
            ) -> dict[str, int]:
                hi = annotate(work / f"{api}-{mode}-{variant}-{N_HI}.out", thread)
                lo = annotate(work / f"{api}-{mode}-{variant}-{N_LO}.out", thread)
                return {fn: hi.get(fn, 0) - lo.get(fn, 0) for fn in set(hi) | set(lo)}

            profiles[f"{api}/{mode}"] = {
                "added_by_function": _diff(slope("costwatch"), slope("none"), calls),
                "costwatch_app_thread_top": _top(slope("costwatch", 1), calls, 15),
            }
    finally:
        daemon.stop()
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return {
        "before": before[1] if before is not None else None,
        "quick": quick,
        "cells": [list(c) for c in cells],
        "n": [N_LO, N_HI],
        "target_pct": TARGET_PCT,
        "results": results,
        "profiles": profiles,
        "valgrind": subprocess.run(["valgrind", "--version"], capture_output=True, text=True).stdout.strip(),
    }
