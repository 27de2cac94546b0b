"""An instrumented app that calls the fake provider every few ms and prints each change of state.

``python watcher_app.py OPENAI_URL`` with ``COSTWATCH_*`` set: prints ``READY``, then
``BLOCKED <unix time>`` when a call first raises `costwatch.KillSwitchEngaged` and
``OPEN <unix time>`` when calls go through again. Runs until killed.
"""

from __future__ import annotations

import sys
import time

import openai

import costwatch
import costwatch.autoinstrument

client = openai.OpenAI(base_url=sys.argv[1], api_key="sk-fake", max_retries=0)
state: str | None = None
print("READY", flush=True)
while True:
    try:
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        now = "OPEN"
    except costwatch.KillSwitchEngaged:
        now = "BLOCKED"
    if now != state:
        print(now, repr(time.time()), flush=True)
        state = now
    time.sleep(0.005)
