"""5a. What ``import costwatch.autoinstrument`` costs an app's process (issue 18: ≤ 30 ms of CPU).

Each sample is a fresh process (``-c``, bytecode compiled as pip leaves an install) that imports
its prelude first (nothing, or ``openai``: an app may import either first), then times
``import costwatch.autoinstrument`` with ``time.process_time()`` (every thread: the emitter's
threads start during the import) and ``time.perf_counter()``, and counts the GC-tracked objects
the import added (``len(gc.get_objects())`` after a full collection, before and after: what every
later full collection of the app walks). A real daemon runs (``COSTWATCH_URL``/``STATE_DIR``/token
set as README says). One more process per prelude runs under ``-X importtime`` for the breakdown.

Each run keeps the summaries of earlier runs (by commit) so the report shows before and after.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from bench.common import ROOT, env_for_children, mmm, start_daemon, tempdir

TARGET_MS = 30.0
PRELUDES = ("", "openai")
# Never imported by an app's costwatch (tests/test_app_imports.py holds the same list).
HEAVY = ("pydantic", "pydantic_settings", "duckdb", "pyarrow", "starlette", "uvicorn", "apscheduler",
         "apprise", "rich", "genai_prices", "prometheus_client", "opentelemetry", "platformdirs", "yaml")  # fmt: skip

WORKER = """
import gc, json, sys, time
if sys.argv[1]:
    __import__(sys.argv[1])
gc.collect()
before = set(sys.modules)
n0 = len(gc.get_objects())
c0, w0 = time.process_time(), time.perf_counter()
import costwatch.autoinstrument
c1, w1 = time.process_time(), time.perf_counter()
gc.collect()
n1 = len(gc.get_objects())
added = sorted(set(sys.modules) - before)
print(json.dumps({"cpu_ms": (c1 - c0) * 1e3, "wall_ms": (w1 - w0) * 1e3, "objects": n1 - n0,
                  "modules": len(added), "heavy": sorted({m.split(".")[0] for m in added} & set(sys.argv[2:]))}))
"""


def _commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "?"
    dirty = git("status", "--porcelain", "--", "costwatch", "pyproject.toml")
    return head + ("+changes" if dirty else "")


def _importtime(prelude: str, env: dict[str, str]) -> list[dict[str, Any]]:
    """Modules the import added, by cumulative µs (-X importtime: inflated, for the breakdown only)."""
    code = (f"import {prelude}\n" if prelude else "") + "import costwatch.autoinstrument"
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, cwd=ROOT, env=env
    )
    rows, started, marker = [], False, prelude or "site"  # costwatch's lines follow the marker's
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        self_us, cum_us, raw = (
            part.strip(" ") if i < 2 else part for i, part in enumerate(line[12:].split("|"))
        )
        self_us, cum_us, name = self_us.strip(), cum_us.strip(), raw.strip()
        if not self_us.isdigit():
            continue
        if name == marker and raw.startswith(" ") and not raw.startswith("  "):
            started = True
            continue
        if started:
            rows.append({"module": name, "depth": (len(raw) - len(raw.lstrip()) - 1) // 2,
                         "self_us": int(self_us), "cum_us": int(cum_us)})  # fmt: skip
    return rows


def run(quick: bool, log: Any = print) -> dict[str, Any]:
    n = 5 if quick else 15
    results: dict[str, Any] = {}
    with tempdir("imports") as tmp:
        daemon = start_daemon(tmp / "daemon")
        try:
            env = env_for_children(
                COSTWATCH_URL=daemon.url,
                COSTWATCH_TOKEN=daemon.token,
                COSTWATCH_STATE_DIR=str(tmp / "app"),
                COSTWATCH_APP="bench-imports",
            )
            for prelude in PRELUDES:
                samples = []
                for _ in range(n):
                    done = subprocess.run(
                        [sys.executable, "-c", WORKER, prelude, *HEAVY],
                        capture_output=True, text=True, cwd=ROOT, env=env, timeout=120,
                    )  # fmt: skip
                    if done.returncode != 0:
                        raise RuntimeError(f"import worker failed: {done.stderr[-2000:]}")
                    samples.append(json.loads(done.stdout.splitlines()[-1]))
                key = prelude or "nothing"
                tree = _importtime(prelude, env)
                top = sorted((r for r in tree if r["depth"] <= 3), key=lambda r: -r["cum_us"])[:12]
                results[key] = {
                    "samples": samples,
                    "cpu_ms": mmm([s["cpu_ms"] for s in samples]),
                    "wall_ms": mmm([s["wall_ms"] for s in samples]),
                    "objects": mmm([s["objects"] for s in samples]),
                    "modules": mmm([s["modules"] for s in samples]),
                    "heavy": sorted({h for s in samples for h in s["heavy"]}),
                    "importtime_top": top,
                }
                log(
                    f"imports after {key}: CPU {results[key]['cpu_ms']['median']:.1f} ms,"
                    f" objects {results[key]['objects']['median']:,.0f}, heavy {results[key]['heavy']}"
                )
        finally:
            daemon.stop()
    from bench.common import load

    history = []
    prev = load("imports")
    if prev:
        history = [h for h in prev.get("history", []) if h["commit"] != prev.get("commit")]
        history.append(
            {"commit": prev.get("commit"), "started_utc": prev.get("started_utc"),
             "summary": {k: {f: v[f] for f in ("cpu_ms", "wall_ms", "objects", "heavy")} for k, v in prev["by_prelude"].items()}}
        )  # fmt: skip
    commit = _commit()
    history = [h for h in history if h["commit"] != commit][-4:]
    return {"quick": quick, "n": n, "target_ms": TARGET_MS, "commit": commit, "by_prelude": results,
            "history": history}  # fmt: skip
