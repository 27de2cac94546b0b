"""5a. What ``import costwatch.autoinstrument`` costs an app's process (issue 18: ≤ 30 ms of CPU).

Each sample is a fresh process (``-c``, bytecode compiled as pip leaves an install) that imports
its prelude first (nothing, or ``openai``: an app may import either first), then times
``import costwatch.autoinstrument`` with ``time.process_time()`` (every thread: the emitter's
threads start during the import) and ``time.perf_counter()``, and counts the GC-tracked objects
the import added (``len(gc.get_objects())`` after a full collection, before and after: what every
later full collection of the app walks). A real daemon runs (``COSTWATCH_URL``/``STATE_DIR``/token
set as README says). One more process per prelude runs under ``-X importtime`` for the breakdown.

Each run keeps the summaries of earlier runs (by commit) so the report shows before and after. With
``COSTWATCH_BENCH_BASELINE=REV`` the section also measures that revision's ``costwatch`` (``git archive``,
compiled, first on ``PYTHONPATH``) in processes alternating with the current tree's, so both see the
same load.
"""

from __future__ import annotations

import compileall
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path
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


def _export(rev: str, dest: Path) -> Path:
    """``costwatch/`` of a revision, compiled, in ``dest`` (for PYTHONPATH)."""
    dest.mkdir(parents=True)
    archive = dest / "tree.tar"
    subprocess.run(["git", "archive", "-o", str(archive), rev, "costwatch"], cwd=ROOT, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    compileall.compile_dir(str(dest / "costwatch"), quiet=1)
    return dest


def _summary(samples: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "samples": samples,
        "cpu_ms": mmm([s["cpu_ms"] for s in samples]),
        "wall_ms": mmm([s["wall_ms"] for s in samples]),
        "objects": mmm([s["objects"] for s in samples]),
        "modules": mmm([s["modules"] for s in samples]),
        "heavy": sorted({h for s in samples for h in s["heavy"]}),
    }


def run(quick: bool, log: Any = print) -> dict[str, Any]:
    n = 5 if quick else 15
    results: dict[str, Any] = {}
    baseline_rev = os.environ.get("COSTWATCH_BENCH_BASELINE")
    baseline: dict[str, Any] = {}
    with tempdir("imports") as tmp:
        daemon = start_daemon(tmp / "daemon")
        try:
            env = env_for_children(
                COSTWATCH_URL=daemon.url,
                COSTWATCH_TOKEN=daemon.token,
                COSTWATCH_STATE_DIR=str(tmp / "app"),
                COSTWATCH_APP="bench-imports",
            )
            trees = {"current": (ROOT, env)}
            if baseline_rev:
                old = _export(baseline_rev, tmp / "baseline")
                trees["baseline"] = (old, {**env, "PYTHONPATH": str(old)})
            for prelude in PRELUDES:
                samples: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
                for _ in range(n):
                    for name, (cwd, tree_env) in trees.items():  # alternately: the same load for both
                        done = subprocess.run(
                            [sys.executable, "-c", WORKER, prelude, *HEAVY],
                            capture_output=True, text=True, cwd=cwd, env=tree_env, timeout=120,
                        )  # fmt: skip
                        if done.returncode != 0:
                            raise RuntimeError(f"import worker ({name}) failed: {done.stderr[-2000:]}")
                        samples[name].append(json.loads(done.stdout.splitlines()[-1]))
                key = prelude or "nothing"
                tree = _importtime(prelude, env)
                results[key] = _summary(samples["current"])
                results[key]["importtime_top"] = sorted(
                    (r for r in tree if r["depth"] <= 3), key=lambda r: -r["cum_us"]
                )[:12]
                if baseline_rev:
                    baseline[key] = _summary(samples["baseline"])
                for name, summary in (("current", results[key]), ("baseline", baseline.get(key))):
                    if summary:
                        log(
                            f"imports after {key} ({name}): CPU {summary['cpu_ms']['median']:.1f} ms,"
                            f" objects {summary['objects']['median']:,.0f}, heavy {summary['heavy']}"
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
            "history": history, "baseline": {"rev": baseline_rev, "by_prelude": baseline} if baseline_rev else None}  # fmt: skip
