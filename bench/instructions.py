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

Peers (``--peers``, the default; ``--no-peers`` skips them, ``--peers-only`` measures
nothing else): each peer runs in its own environment (`bench.venvs`) against the
uninstrumented baseline of that environment, measured in the same run, and costwatch is
measured in that environment too, so every comparison is within one environment and one
run. ``otel`` (``opentelemetry-instrumentation-openai-v2``: chat completions only, no
Responses, no Anthropic) in env ``otel`` (the main packages + the peer); ``openlit`` (OpenAI
chat and Responses, Anthropic messages) in env ``old`` (openai 2.x / anthropic 0.x on httpx,
what openlit requires). Peers export to in-process null exporters; their batch processors'
5 s schedule delay is stretched by the same valgrind slowdown as costwatch's flush interval.
Their results go to ``bench/.results/instructions_peers.json``.

``--cells chat/sync,chat/stream`` restricts a run to those (API, mode) cells.

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
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench import common, venvs

APIS = ("chat", "responses", "messages")
MODES = ("sync", "async", "stream")
VARIANTS = ("none", "floor", "costwatch")
FLOOR_APIS = ("chat",)  # the floor does not depend on the API: measured for chat, in every mode
DEFAULT_TIMER_CELLS = (("chat", "sync"),)  # costwatch also with its real 0.5 s flush interval
N_LO, N_HI = 20, 120
DEFAULT_INTERVAL_S = 0.5
# The least stretch of the timers: callgrind runs this worker 45–280× slower than natively on
# these machines (2026-12-04, idle); a measured ratio below this is load noise, not speed.
MIN_STRETCH = 20.0
TIMER_THREADS = ("costwatch-killswitch", "costwatch-limits")
TARGET_PCT = 1.0
# peer → (its environment, the APIs it instruments); every mode of those APIs
PEERS = {"otel": ("otel", ("chat",)), "openlit": ("old", APIS)}
PEER_DELAY_MS = 5000  # OTEL_BSP_SCHEDULE_DELAY / OTEL_BLRP_SCHEDULE_DELAY defaults
PEER_PACKAGES = (
    "openai", "anthropic", "httpx2", "httpx", "msgspec", "opentelemetry-sdk",
    "opentelemetry-instrumentation-openai-v2", "opentelemetry-util-genai", "openlit",
)  # fmt: skip
PRICING = {  # openlit reads prices from this file instead of fetching them
    "chat": {
        model: {"promptPrice": 0.00015, "completionPrice": 0.0006}
        for model in ("gpt-4o-mini", "gpt-4o-mini-2024-07-18", "claude-sonnet-4-20250514")
    }
}
PARALLEL = 2
# A fixed hash seed: with a random one, dict layouts and collection timings differ from run to
# run and the same code measured ±100 k instructions per call apart; fixed, two runs agree
# within a few hundred instructions in total.
_ENV = common.env_for_children(PYTHONHASHSEED="0")
_TOTALS = re.compile(r"^totals:\s+(\d+)", re.M)
_ANNOTATE_LINE = re.compile(r"^\s*([\d,]+) \(\s*[\d.]+%\)\s+(.*?)(?: \[(.*)\])?$")


def _worker(spec: dict[str, Any]) -> list[str]:
    return [venvs.python(spec.get("env", "main")), "-m", "bench.instructions_worker", json.dumps(spec)]


def parse_cells(text: str | None) -> list[tuple[str, str]] | None:
    """``chat/sync,messages/sync`` → [("chat", "sync"), ("messages", "sync")]; ``chat`` = every mode."""
    if not text:
        return None
    cells: list[tuple[str, str]] = []
    for item in text.split(","):
        api, _, mode = item.strip().partition("/")
        if api not in APIS or (mode and mode not in MODES):
            raise ValueError(f"unknown cell {item!r} (APIs {APIS}, modes {MODES})")
        cells += [(api, m) for m in ((mode,) if mode else MODES) if (api, m) not in cells]
    return cells


def _env_packages(env: str) -> dict[str, str]:
    code = (
        "import json, importlib.metadata as m\nout = {}\n"
        f"for name in {PEER_PACKAGES!r}:\n"
        "    try: out[name] = m.version(name)\n    except m.PackageNotFoundError: pass\n"
        "print(json.dumps(out))"
    )
    done = subprocess.run([venvs.python(env), "-c", code], capture_output=True, text=True, cwd="/")
    return json.loads(done.stdout) if done.returncode == 0 else {}


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
    """Mean wall seconds per call of the calls loop, natively (250 calls)."""
    spec = {k: v for k, v in spec.items() if k != "root"}
    done = common.run_json(_worker({**spec, "n": 250}), PYTHONHASHSEED="0")
    return max(1e-6, done["wall_s"] / 250)


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


def _peer_envs(cells: list[tuple[str, str]], log: Any) -> dict[str, dict[str, Any]]:
    """Each peer environment needed by ``cells``: its variants and cells; built on first use."""
    envs: dict[str, dict[str, Any]] = {}
    for peer, (env, apis) in PEERS.items():
        peer_cells = [c for c in cells if c[0] in apis]
        if not peer_cells:
            continue
        try:
            venvs.ensure(env)
        except BaseException as exc:  # a peer environment that cannot be built: run without it
            log(f"  environment {env} unavailable ({exc!r}): {peer} not measured")
            continue
        envs[env] = {"peer": peer, "variants": ["none", "costwatch", peer], "cells": peer_cells}
    return envs


def run(
    quick: bool,
    log: Any = print,
    cells: list[tuple[str, str]] | None = None,
    peers: bool = True,
    peers_only: bool = False,
) -> dict[str, Any]:
    if shutil.which("valgrind") is None:
        raise RuntimeError("valgrind is not installed (Debian package valgrind; ./dev test installs it)")
    apis = ("chat",) if quick else APIS
    modes = MODES
    cells = cells or [(api, mode) for api in apis for mode in modes]
    main = not peers_only
    peer_envs = _peer_envs(cells, log) if peers or peers_only else {}
    # env → (its variants, its cells); "main" is this interpreter's environment
    envs: dict[str, tuple[list[str], list[tuple[str, str]]]] = {}
    if main:
        envs["main"] = (["none", "floor", "costwatch"], cells)
    for env, info in peer_envs.items():
        envs[env] = (info["variants"], info["cells"])
    before = _before_tree() if main else None
    # Bytecode compiled up front: a first run that compiles and writes .pyc files would count
    # the compilation in N = 20 and not in N = 120. Each environment compiles its own
    # site-packages' bytecode at install time; the work tree's is compiled here (same
    # Python version in every environment).
    for root in (common.ROOT, *((before[0],) if before else ())):
        for sub in ("costwatch", "bench"):
            compileall.compile_dir(str(root / sub), quiet=1)
    server = common.start_url_proc([sys.executable, "-m", "bench.fastserver"])
    work = Path(tempfile.mkdtemp(prefix="cwbench-instructions-"))
    daemon = common.start_daemon(work / "state")
    pricing = work / "pricing.json"
    pricing.write_text(json.dumps(PRICING))
    results: dict[str, Any] = {}  # "api/mode/variant" (main) or "env:api/mode/variant"
    profiles = {}

    def key_of(env: str, api: str, mode: str, variant: str) -> str:
        return ("" if env == "main" else f"{env}:") + f"{api}/{mode}/{variant}"

    valgrind = subprocess.run(["valgrind", "--version"], capture_output=True, text=True).stdout.strip()
    started_utc = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
    machine = common.machine()  # load average at the start, for a run saved partial
    command = " ".join(["python -m bench", *sys.argv[1:]]) if sys.argv[0].endswith("__main__.py") else "?"

    def _sections(measured: list[tuple[str, str]]) -> dict[str, Any]:
        sections: dict[str, Any] = {}
        if main:
            sections["instructions"] = {
                "before": before[1] if before is not None else None,
                "quick": quick,
                "cells": [list(c) for c in measured],
                "peers": "instructions_peers" if peer_envs else None,
                "n": [N_LO, N_HI],
                "target_pct": TARGET_PCT,
                "results": {
                    k: v for k, v in results.items() if ":" not in k and tuple(k.split("/")[:2]) in measured
                },
                "profiles": profiles,
                "valgrind": valgrind,
            }
        if peer_envs:
            sections["instructions_peers"] = {
                "quick": quick,
                "cells": [list(c) for c in measured],
                "peers_only": peers_only,
                "n": [N_LO, N_HI],
                "target_pct": TARGET_PCT,
                "envs": {
                    env: {
                        **info,
                        "cells": [list(c) for c in info["cells"] if c in measured],
                        "packages": _env_packages(env),
                    }
                    for env, info in peer_envs.items()
                },
                "results": {
                    k: v
                    for k, v in results.items()
                    if ":" in k and tuple(k.split(":")[1].split("/")[:2]) in measured
                },
                "valgrind": valgrind,
            }
        return sections

    try:
        base = {"url": server.url, "daemon": daemon.url, "state_dir": str(daemon.state_dir)}

        def spec_of(env: str, api: str, mode: str, variant: str, **extra: Any) -> dict[str, Any]:
            spec = {**base, "env": env, "variant": variant, "api": api, "mode": mode, **extra}
            if variant == "openlit":
                spec.update(pricing_json=str(pricing), openlit_instrumentors=["anthropic" if api == "messages" else "openai"])  # fmt: skip
            return spec

        def measure(key: str, spec: dict[str, Any]) -> dict[str, Any]:
            runs = {}
            for n in (N_LO, N_HI):
                out = work / f"{key.replace(':', '-').replace('/', '-')}-{n}.out"
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
            log(f"  {key}: {row['per_call']:,} instructions per call "
                f"(app thread {row['app_thread']:,}, background {row['background']:,})")  # fmt: skip
            return row

        def run_jobs(jobs: list[tuple[str, dict[str, Any]]]) -> None:
            with ThreadPoolExecutor(PARALLEL) as pool:
                for (key, spec), row in zip(jobs, pool.map(lambda j: measure(*j), jobs), strict=True):
                    if "interval" in spec:
                        row["interval_s"] = spec["interval"]
                    if "peer_delay_ms" in spec:
                        row["peer_delay_ms"] = spec["peer_delay_ms"]
                    results[key] = row

        # Cell by cell (in the order given), so a run cut short keeps its finished cells: each
        # is saved as it completes (marked partial until the run ends).
        slowdowns: dict[tuple[str, str, str], float] = {}
        intervals: dict[tuple[str, str, str], float] = {}
        calls = N_HI - N_LO
        for done_cells, (api, mode) in enumerate(cells, 1):
            here = [
                (env, variants) for env, (variants, env_cells) in envs.items() if (api, mode) in env_cells
            ]
            # 1. uninstrumented (every environment) and floor (main), two at a time
            run_jobs([(key_of(env, api, mode, v), spec_of(env, api, mode, v)) for env, variants in here
                      for v in ("none", "floor") if v in variants and (v == "none" or api in FLOOR_APIS)])  # fmt: skip
            # 2. the valgrind slowdown per environment → the timers' stretch for this cell: the
            # mean wall time per call of the N = 120 run under valgrind against the same worker's
            # natively. Not the slope of wall times: on shared, saturated cores the N = 20 run can
            # take longer than the N = 120 one (seen: 176 s against 154 s) and the slope goes
            # negative. Never below the median of the cells so far, nor below MIN_STRETCH.
            for env, _ in here:
                bare = results[key_of(env, api, mode, "none")]
                native = _native_s_per_call(spec_of(env, api, mode, "none"))
                valgrind_s = bare["runs"][str(N_HI)]["wall_s"] / N_HI
                slowdowns[(env, api, mode)] = valgrind_s / native
                bare.update(native_s_per_call=native, slowdown=slowdowns[(env, api, mode)])
            typical = statistics.median(slowdowns.values())
            stretch = {
                env: min(1200.0, max(MIN_STRETCH, typical, slowdowns[(env, api, mode)])) for env, _ in here
            }
            # 3. costwatch with scaled timers (every environment), the peers likewise; and once
            # with the real 0.5 s
            jobs = []
            for env, variants in here:
                intervals[(env, api, mode)] = DEFAULT_INTERVAL_S * stretch[env]
                for v in variants:
                    if v == "costwatch":
                        jobs.append((key_of(env, api, mode, v), spec_of(env, api, mode, v, interval=intervals[(env, api, mode)])))  # fmt: skip
                    elif v in PEERS:
                        jobs.append((key_of(env, api, mode, v), spec_of(env, api, mode, v, peer_delay_ms=PEER_DELAY_MS * stretch[env])))  # fmt: skip
            if main and (api, mode) in DEFAULT_TIMER_CELLS:
                jobs.append((f"{api}/{mode}/costwatch@0.5s", spec_of("main", api, mode, "costwatch", interval=DEFAULT_INTERVAL_S)))  # fmt: skip
            if before is not None and (api, mode) in BEFORE_CELLS:
                jobs.append((f"{api}/{mode}/costwatch-before",
                             spec_of("main", api, mode, "costwatch", interval=intervals[("main", api, mode)], root=str(before[0]))))  # fmt: skip
            log(f"  {api}/{mode} timers stretched ×" + ", ×".join(f"{stretch[e]:.0f} ({e})" for e, _ in here))
            run_jobs(jobs)
            # 4. where the instructions go: costwatch's slope − the uninstrumented slope, by function
            if main:

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
            if done_cells < len(cells):
                for name, part in _sections(cells[:done_cells]).items():
                    stamps = {"started_utc": started_utc, "command": command, "machine": machine}
                    common.save(name, {**part, **stamps, "partial": True, "section": name})
            for f in work.glob(f"*{api}-{mode}-*.out-*"):  # callgrind files of a finished cell
                f.unlink()
    finally:
        daemon.stop()
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    # Saved by `bench.__main__` as one results file per entry.
    return {"_sections": _sections(cells)}
