"""One emitting process for the ingest benchmark: ``python -m bench.ingest_worker '<json spec>'``.

Builds its events before the start time (so generation is not measured), then
at ``start_at`` (wall clock, shared by all workers) either POSTs pre-encoded
batches over one keep-alive connection (``raw``) or submits them to a real
`Emitter` and flushes (``emitter``). Prints one JSON line.
"""

from __future__ import annotations

import http.client
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from costwatch.events import encode_many

from bench.eventgen import make_events


class _Item:
    __slots__ = ("event",)

    def __init__(self, event: Any) -> None:
        self.event = event

    def to_event(self) -> Any:
        return self.event


def _wait(start_at: float) -> None:
    """Say we are ready, then wait for the runner's go (one line on stdin)."""
    print("ready", flush=True)
    sys.stdin.readline()


def raw(spec: dict[str, Any], events: list[Any]) -> dict[str, Any]:
    batch = spec["batch"]
    bodies = [encode_many(events[i : i + batch]) for i in range(0, len(events), batch)]
    url = urlsplit(spec["url"])
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=120)
    headers = {"Authorization": f"Bearer {spec['token']}", "Content-Type": "application/json"}
    accepted = retries = 0
    latencies = []
    _wait(spec["start_at"])
    t0 = time.time()
    for body in bodies:
        while True:
            s = time.perf_counter()
            conn.request("POST", "/v1/events", body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            if resp.status == 503:  # backpressure: the daemon asks us to come back
                retries += 1
                time.sleep(0.02)
                continue
            if resp.status != 200:
                raise RuntimeError(f"POST answered {resp.status}: {data[:300]!r}")
            latencies.append(time.perf_counter() - s)
            accepted += json.loads(data)["accepted"]
            break
    t1 = time.time()
    latencies.sort()
    return {
        "sent": len(events), "accepted": accepted, "t0": t0, "t1": t1, "retries_503": retries,
        "post_ms_median": latencies[len(latencies) // 2] * 1000, "post_ms_max": latencies[-1] * 1000,
    }  # fmt: skip


def emitter(spec: dict[str, Any], events: list[Any]) -> dict[str, Any]:
    from costwatch.client_settings import ClientSettings
    from costwatch.instrumentation.emitter import Emitter

    state = Path(tempfile.mkdtemp(prefix="cwbench-emitter-"))
    settings = ClientSettings(
        url=spec["url"], token=spec["token"], app="bench", state_dir=state,
        queue_max_events=len(events) + 10, batch_max_events=spec["batch"],
    )  # fmt: skip
    em = Emitter(settings)
    em.start()
    items = [_Item(e) for e in events]
    _wait(spec["start_at"])
    t0 = time.time()
    submit = em.submit
    for item in items:
        submit(item)
    ok = em.flush(300)
    t1 = time.time()
    stats = em.stats()
    em.close(5)
    return {
        "sent": len(events), "accepted": stats["sent"], "t0": t0, "t1": t1, "flushed": ok,
        "spooled": stats["spooled"], "post_failures": stats["post_failures"],
        "emitter_cpu_us": stats["emitter_cpu_us"],
    }  # fmt: skip


def main() -> None:
    spec = json.loads(sys.argv[1])
    events = make_events(spec["events"], spec["t0"], spec["seed"], spec.get("spacing_s", 0.0005))
    result = raw(spec, events) if spec["mode"] == "raw" else emitter(spec, events)
    result["pid"] = os.getpid()
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
