"""Spool replay helpers in their own process: ``python -m bench.spool_worker write|replay '<json>'``.

``write``: an app that spooled ``events`` events while the daemon was down, then
exited (its lock goes with it, so its segments are orphans any emitter may take
over). ``replay``: a fresh process whose `Emitter` finds the daemon up and
replays the spool; reports when the spool directory holds no segment any more.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from bench.eventgen import make_events


def write(spec: dict) -> dict:
    from costwatch.instrumentation.spool import Spool

    spool = Spool(Path(spec["spool_dir"]), spec["max_bytes"])
    left, t0, seed = spec["events"], spec["t0"], spec["seed"]
    started = time.perf_counter()
    gen = 0.0
    while left > 0:
        n = min(50_000, left)
        g = time.perf_counter()
        events = make_events(n, t0, seed)
        gen += time.perf_counter() - g
        t0 = events[-1].ts_start + 0.001
        seed += 1
        for i in range(0, n, 2_000):  # the emitter spools batch by batch
            spool.append(events[i : i + 2_000])
        left -= n
    spool.seal()
    spool.close()
    return {"written": spool.written, "dropped": spool.dropped, "write_s": time.perf_counter() - started - gen,
            "bytes": sum(p.stat().st_size for p in Path(spec["spool_dir"]).glob("*.ndjson"))}  # fmt: skip


def replay(spec: dict) -> dict:
    from costwatch.client_settings import ClientSettings
    from costwatch.instrumentation.emitter import Emitter

    spool_dir = Path(spec["spool_dir"])
    settings = ClientSettings(url=spec["url"], token=spec["token"], app="bench", state_dir=spool_dir.parent,
                              spool_max_bytes=spec["max_bytes"])  # fmt: skip
    em = Emitter(settings)
    t0 = time.time()
    em.start()
    deadline = time.monotonic() + spec.get("timeout_s", 600)
    while time.monotonic() < deadline:
        left = [n for n in os.listdir(spool_dir) if ".ndjson" in n]
        if not left and em.stats()["replayed"] >= spec["events"]:
            break
        time.sleep(0.02)
    t1 = time.time()
    time.sleep(0.15)
    stats = em.stats()
    em.close(2)
    return {"t0": t0, "t1": t1, "replayed": stats["replayed"], "post_failures": stats["post_failures"],
            "emitter_cpu_us": stats["emitter_cpu_us"], "left": len([n for n in os.listdir(spool_dir) if ".ndjson" in n])}  # fmt: skip


if __name__ == "__main__":
    spec = json.loads(sys.argv[2])
    print(json.dumps(write(spec) if sys.argv[1] == "write" else replay(spec)), flush=True)
