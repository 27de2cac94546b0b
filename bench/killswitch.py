"""4. Kill-switch propagation: `costwatch kill` → first blocked call in 10 instrumented processes.

Per round: a real daemon, 10 processes each calling the fast server with the
real openai SDK every ``pace_s`` (instrumented with ``costwatch.autoinstrument``,
default settings: each keeps a long poll on the daemon's kill-switch state);
once all are ready, the `costwatch kill` CLI runs; each process records the wall
time of its first `KillSwitchEngaged`. Propagation is measured from the
moment the daemon engaged the switch (its ``engaged_at``, same host clock) and
from the CLI's start (what an operator sees, CLI start-up included). Then `costwatch resume --all` and the next round.

Two loads: ``saturated`` (a call every 10 ms per process: both cores busy, the CLI gets
a small share of a core) and ``paced`` (20 calls/s per process, 200/s in all: a busy
service that leaves the machine some headroom). A process notices the switch at its
next call, so the first-block times include up to one pace interval.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

from bench.common import ROOT, costwatch_cmd, env_for_children, mmm, start_daemon, start_url_proc, tempdir

PROCS = 10
LOADS = (("saturated", 0.01), ("paced", 0.05))
TARGET_P99_MS = 500.0


def _cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def _busy(before: tuple[int, int], after: tuple[int, int]) -> float:
    """Share of all cores busy between two `_cpu_times` readings."""
    return (after[0] - before[0]) / max(1, after[1] - before[1])


def _p99(values: list[float]) -> float:
    vals = sorted(values)
    return vals[min(len(vals) - 1, round(0.99 * (len(vals) - 1)))]


def run(quick: bool, log: Any = print) -> dict[str, Any]:
    rounds = 2 if quick else 5
    loads = [_load(label, pace, rounds, log) for label, pace in LOADS]
    return {"quick": quick, "rounds": rounds, "procs": PROCS, "loads": loads}


def _load(label: str, pace_s: float, rounds: int, log: Any) -> dict[str, Any]:
    samples: list[dict[str, Any]] = []
    server = start_url_proc([sys.executable, "-m", "bench.fastserver"])
    try:
        with tempdir("killswitch") as tmp:
            state = tmp / "state"
            daemon = start_daemon(state)
            cli_env = env_for_children(COSTWATCH_STATE_DIR=str(state), COSTWATCH_URL=daemon.url)
            app_env = env_for_children(
                COSTWATCH_STATE_DIR=str(state), COSTWATCH_URL=daemon.url, COSTWATCH_APP="bench"
            )
            try:
                for r in range(rounds):
                    procs = [
                        subprocess.Popen([sys.executable, "-m", "bench.killswitch_worker", server.url, str(pace_s)],
                                         cwd=ROOT, env=app_env, stdout=subprocess.PIPE, text=True)
                        for _ in range(PROCS)
                    ]  # fmt: skip
                    for p in procs:
                        assert p.stdout is not None
                        if p.stdout.readline().strip() != "ready":
                            raise RuntimeError("a kill-switch worker did not get ready")
                    cpu0 = _cpu_times()
                    time.sleep(1.0)  # steady state: every process past its first poll
                    busy = _busy(cpu0, _cpu_times())
                    t_start = time.time()
                    subprocess.run([*costwatch_cmd(), "kill", "--reason", "bench"], env=cli_env,
                                   check=True, capture_output=True, timeout=60)  # fmt: skip
                    t_end = time.time()
                    engaged_at = max(
                        k["engaged_at"] for k in daemon.request("GET", "/v1/killswitch")["engaged"]
                    )
                    blocked = []
                    for p in procs:
                        out, _ = p.communicate(timeout=60)
                        blocked.append(json.loads(out.strip().splitlines()[-1])["blocked_at"])
                    subprocess.run([*costwatch_cmd(), "resume", "--all"], env=cli_env,
                                   check=True, capture_output=True, timeout=60)  # fmt: skip
                    from_start = [(b - t_start) * 1000 for b in blocked if b is not None]
                    from_engage = [(b - engaged_at) * 1000 for b in blocked if b is not None]
                    samples.append({"round": r, "cli_ms": (t_end - t_start) * 1000, "cli_to_engage_ms": (engaged_at - t_start) * 1000,
                                    "from_cli_start_ms": from_start, "from_engage_ms": from_engage,
                                    "not_blocked": sum(b is None for b in blocked), "cpu_busy_pct": busy * 100})  # fmt: skip
                    log(
                        f"killswitch {label} r{r} (CPU {busy:.0%} busy): CLI {(t_end - t_start) * 1000:.0f} ms (engaged after {(engaged_at - t_start) * 1000:.0f} ms);"
                        f" first block {min(from_engage):.0f}–{max(from_engage):.0f} ms after the daemon engaged,"
                        f" {min(from_start):.0f}–{max(from_start):.0f} ms after the CLI started"
                    )
            finally:
                daemon.stop()
    finally:
        server.stop()
    start_all = [v for s in samples for v in s["from_cli_start_ms"]]
    eng_all = [v for s in samples for v in s["from_engage_ms"]]
    return {
        "label": label, "pace_s": pace_s, "samples": samples,
        "summary": {
            "from_cli_start_ms": {**mmm(start_all), "p99": _p99(start_all)},
            "from_engage_ms": {**mmm(eng_all), "p99": _p99(eng_all)},
            "cli_ms": mmm([s["cli_ms"] for s in samples]),
            "cli_to_engage_ms": mmm([s["cli_to_engage_ms"] for s in samples]),
            "not_blocked": sum(s["not_blocked"] for s in samples),
            "cpu_busy_pct": mmm([s["cpu_busy_pct"] for s in samples]),
        },
    }  # fmt: skip
