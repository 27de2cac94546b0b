"""An instrumented app for the kill-switch test: ``import costwatch.autoinstrument`` + the real openai SDK.

Run as ``python instrumented_app.py OPENAI_BASE_URL`` with ``COSTWATCH_URL``, ``COSTWATCH_TOKEN``,
``COSTWATCH_APP`` set. Makes one chat call every 0.1 s and prints one JSON line per call:
``{"ok": true}`` or ``{"blocked": "KillSwitchEngaged", "error": "..."}``; exits after 60 s.
"""

from __future__ import annotations

import json
import sys
import time

import openai

import costwatch
import costwatch.autoinstrument  # instruments this process (patches httpx; import order is free)


def main() -> int:
    client = openai.OpenAI(base_url=sys.argv[1], api_key="sk-fake", max_retries=0)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
            line: dict[str, object] = {"ok": True}
        except costwatch.KillSwitchEngaged as exc:
            line = {"blocked": type(exc).__name__, "error": str(exc)}
        except Exception as exc:
            line = {"failed": type(exc).__name__, "error": str(exc)}
        print(json.dumps(line), flush=True)
        time.sleep(0.1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
