"""Diagnostic: where costwatch's emitter spends its CPU (``python -m bench.profile_emitter``).

1. Records 3,000 real openai SDK calls (half streamed) against the fast server with an
   emitter that only keeps the `CallRecord`s, then times ``to_event()`` and the batch encode
   per event (thread CPU time) and prints a cProfile of ``to_event`` (top self time).
2. With ``--pyspy``: runs one costwatch overhead worker (sync calls, real emitter → count-only
   sink) under py-spy and prints the emitter thread's profile.
Not part of ``python -m bench``; quoted in bench/notes.md.
"""

from __future__ import annotations

import cProfile
import io
import json
import pstats
import subprocess
import sys
import time

from bench.common import ROOT, env_for_children, start_url_proc


def to_event_profile(n: int = 3000) -> None:
    server = start_url_proc([sys.executable, "-m", "bench.fastserver"])
    records: list = []

    class _KS:
        active = False

    class Keep:
        killswitch = _KS()

        def start(self) -> None: ...
        def submit(self, record: object) -> None:
            records.append(record)

        def flush(self, timeout: float = 0) -> bool:
            return True

        def close(self, timeout: float = 0) -> None: ...

    import costwatch.instrumentation as ci
    import openai
    from costwatch.events import encode_many

    ci.instrument(emitter=Keep())
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="sk-bench-0000", max_retries=0)
    messages = [{"role": "user", "content": "hi"}]
    try:
        for i in range(n):
            if i % 2:
                for _ in client.chat.completions.create(model="gpt-4o-mini", messages=messages, stream=True,
                                                        stream_options={"include_usage": True}):  # fmt: skip
                    pass
            else:
                client.chat.completions.create(model="gpt-4o-mini", messages=messages)
    finally:
        ci.uninstrument()
        server.stop()
    half = n // 3
    t0 = time.thread_time()
    events = [r.to_event() for r in records[:half]]
    t1 = time.thread_time()
    encode_many(events)
    t2 = time.thread_time()
    print(
        f"to_event: {(t1 - t0) / half * 1e6:.1f} µs CPU per event; encode_many: {(t2 - t1) / half * 1e6:.2f} µs per event"
    )
    prof = cProfile.Profile()
    prof.enable()
    for r in records[half:]:
        r.to_event()
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(20)
    print(out.getvalue())


def emitter_thread_profile(seconds: int = 6) -> None:
    from bench import profiling

    server = start_url_proc([sys.executable, "-m", "bench.fastserver"])
    sink = start_url_proc([sys.executable, "-m", "tests.fakes.sink", "--count-only"])
    spec = {"variant": "costwatch", "mode": "sync", "warmup": 300, "env": "main", "url": server.url,
            "sink": sink.url, "state_dir": "/tmp/cwbench-profile-emitter"}  # fmt: skip
    worker = subprocess.Popen([sys.executable, "-m", "bench.overhead_worker", json.dumps(spec)], cwd=ROOT,
                              env=env_for_children(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert worker.stdout is not None and worker.stdin is not None
        assert worker.stdout.readline().strip() == "ready"
        handle = profiling.start(worker.pid, seconds, rate=500)
        time.sleep(0.3)
        worker.stdin.write("run 4000\n")
        worker.stdin.flush()
        print(worker.stdout.readline().strip())
        prof = profiling.finish(handle, top=25, thread="costwatch-emitter")
        worker.stdin.write("quit\n")
        worker.stdin.flush()
        worker.wait(30)
    finally:
        if worker.poll() is None:
            worker.kill()
        server.stop()
        sink.stop()
    print(json.dumps(prof, indent=1))


if __name__ == "__main__":
    to_event_profile()
    if "--pyspy" in sys.argv:
        emitter_thread_profile()
