"""One instrumented app for the kill-switch benchmark: ``python -m bench.killswitch_worker URL PACE_S``.

Calls the fast server with the real openai SDK in a loop (one call every
``PACE_S``), says ``ready`` once a call succeeded and the emitter has the
daemon's kill-switch state, then prints the wall time of its first
`KillSwitchEngaged` as JSON and exits.
"""

from __future__ import annotations

import json
import os
import sys
import time

import costwatch.autoinstrument  # noqa: F401
import openai
from costwatch import KillSwitchEngaged
from costwatch.instrumentation import _emitter_for_tests


def main() -> None:
    url, pace = sys.argv[1], float(sys.argv[2])
    client = openai.OpenAI(base_url=url + "/v1", api_key="sk-bench-0000", max_retries=0)
    messages = [{"role": "user", "content": "hi"}]
    emitter = _emitter_for_tests()
    ready = False
    calls = 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            client.chat.completions.create(model="gpt-4o-mini", messages=messages)
            calls += 1
        except KillSwitchEngaged:
            t = time.time()
            print(json.dumps({"blocked_at": t, "calls": calls, "pid": os.getpid()}), flush=True)
            return
        if not ready and emitter is not None and emitter.killswitch.version >= 0:
            ready = True
            print("ready", flush=True)
        time.sleep(pace)
    print(json.dumps({"blocked_at": None, "calls": calls}), flush=True)


if __name__ == "__main__":
    main()
