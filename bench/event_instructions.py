"""Diagnostic: instructions per event of the emitter's own work, by part (callgrind K-slopes).

``python -m bench.event_instructions [api/mode ...]`` records 100 real SDK calls per cell
against the fast server with an emitter that only keeps the `CallRecord`s, then runs,
under ``valgrind --tool=callgrind``, the emitter's conversion (``Emitter._convert``: the
same loop the emitter thread runs) and the batch encode K = 1 and K = 6 times over the
same records; (I(6) - I(1)) / 500 is one event. Steers the emitter work of issue 18;
the end-to-end figures come from ``python -m bench instructions``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from typing import Any

from bench.common import ROOT, env_for_children, start_url_proc

N = 100
CELLS = ("chat/sync", "chat/stream", "responses/sync", "responses/stream", "messages/sync", "messages/stream")


def _worker(spec: dict[str, Any]) -> None:
    """Inside valgrind: record N calls, then convert and encode them ``k`` times."""
    from bench import instructions_worker as worker

    worker.URL = spec["url"]
    records: list[Any] = []

    class _KillSwitch:
        active = False

    class Keep:
        killswitch = _KillSwitch()
        settings = None

        def start(self) -> None: ...
        def submit(self, record: object) -> None:
            records.append(record)

        def flush(self, timeout: float = 0) -> bool:
            return True

        def close(self, timeout: float = 0) -> None: ...

    import costwatch.instrumentation as ci
    from costwatch.events import encode_many
    from costwatch.instrumentation.emitter import Emitter

    ci.instrument(emitter=Keep())
    call = worker._sync_call(spec["api"], spec["mode"])
    for _ in range(N):
        call()
    ci.uninstrument()
    _ablate(os.environ.get("COSTWATCH_ABLATE", ""), records)
    convert = Emitter._convert
    shim = type("Shim", (), {"_counts": {"conversion_errors": 0}, "_log_once": lambda *a: None})()
    sizes = 0
    for _ in range(spec["k"]):
        events = convert(shim, records)  # type: ignore[arg-type]
        sizes += len(encode_many(events))
    print(json.dumps({"events": len(records), "bytes_per_event": sizes / spec["k"] / len(records)}))


def _ablate(what: str, records: list[Any]) -> None:
    """Diagnostic only: replace one part of the conversion by a constant to see its share."""
    from costwatch.instrumentation import convert, spans

    if not what:
        return
    sample = records[0].to_event()
    if "spans" in what:
        spans.enabled = lambda: False
    if "id" in what:
        convert.new_event_id = lambda now: sample.id
    if "ratelimits" in what:
        limits = [sample.ratelimit_remaining_requests, sample.ratelimit_remaining_tokens,
                  sample.ratelimit_limit_requests, sample.ratelimit_limit_tokens]  # fmt: skip
        convert._ratelimits = lambda headers, anthropic: limits
    if "body" in what:
        parsed = convert._parse_body(records[0])
        convert._parse_body = lambda record: parsed
    if "request" in what:
        fields = convert._request_fields(records[0].request_body)
        convert._request_fields = lambda data: fields
    if "scrub" in what:
        convert.scrub = lambda value, limit=256: value


def _instructions(spec: dict[str, Any]) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "cg.out")
        cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, "-m",
               "bench.event_instructions", "--worker", json.dumps(spec)]  # fmt: skip
        env = env_for_children() | {"PYTHONHASHSEED": "0", "COSTWATCH_ABLATE": spec.get("ablate", "")}
        subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True)
        with open(out) as f:
            for line in f:
                if line.startswith("summary:") or line.startswith("totals:"):
                    return int(line.split()[1])
    raise RuntimeError("no totals in the callgrind output")


def main(cells: list[str]) -> None:
    server = start_url_proc([sys.executable, "-m", "bench.fastserver"])
    try:
        for cell in cells:
            api, mode = cell.split("/")
            spec = {
                "api": api,
                "mode": mode,
                "url": server.url,
                "ablate": os.environ.get("COSTWATCH_ABLATE", ""),
            }
            low = _instructions(spec | {"k": 1})
            high = _instructions(spec | {"k": 6})
            print(
                f"{cell}: {(high - low) / (5 * N):,.0f} instructions per event (convert + encode)", flush=True
            )
    finally:
        server.stop()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        _worker(json.loads(sys.argv[2]))
    else:
        main(sys.argv[1:] or list(CELLS))
