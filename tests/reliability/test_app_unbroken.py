"""The app is never broken by costwatch: with the daemon down, hanging, answering 500s, garbage or
401s, an instrumented app (sync, async, streaming, threads, os.fork, multiprocessing) gets exactly
the results and exceptions it gets without costwatch, in about the same time, and exits cleanly.

Each run is a fresh interpreter executing the same workload against the fake provider; the
uninstrumented baseline never imports costwatch.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes.provider import FakeProvider
from tests.fakes.sink import FakeDaemon
from tests.support.processes import clean_env

pytestmark = pytest.mark.slow

WORKLOAD = r"""
import asyncio, json, multiprocessing, os, sys, threading, time
if os.environ.get("CW_INSTRUMENT") == "1":
    import costwatch.autoinstrument
import anthropic, openai

base = sys.argv[1]
out = {}

def oa(**kw):
    return openai.OpenAI(base_url=base + "/v1", api_key="sk-test-abcdefghijklmnop", max_retries=kw.pop("retries", 0), **kw)

def outcome(fn):
    try:
        value = fn()
    except Exception as exc:  # what the app sees: the class, status and message
        return {"raised": type(exc).__module__ + "." + type(exc).__qualname__,
                "status": getattr(exc, "status_code", None), "message": str(exc)[:200]}
    return {"value": value}

msgs = [{"role": "user", "content": "hi"}]
def chat(scenario=None, **kw):
    headers = {"x-fake-scenario": scenario} if scenario else {}
    r = oa(**kw).chat.completions.create(model="gpt-4o-mini", messages=msgs, extra_headers=headers)
    return [r.choices[0].message.content, r.usage.model_dump() if r.usage else None, r.model]

out["chat"] = outcome(chat)
out["no_usage"] = outcome(lambda: chat("no-usage"))
for code in (400, 401, 404, 429, 500):
    out[f"status_{code}"] = outcome(lambda: chat(f"status:{code}"))
out["retried_429"] = outcome(lambda: chat("status:429", retries=2))
out["timeout"] = outcome(lambda: chat("slow:2", timeout=0.3))
out["dropped"] = outcome(lambda: chat("drop"))

def stream(options=None):
    kw = {"stream_options": options} if options else {}
    s = oa().chat.completions.create(model="gpt-4o-mini", messages=msgs, stream=True, **kw)
    return [[c.choices[0].delta.content if c.choices else None, bool(c.usage)] for c in s]
out["stream"] = outcome(stream)
out["stream_usage"] = outcome(lambda: stream({"include_usage": True}))
def broken_stream():
    s = oa().chat.completions.create(model="gpt-4o-mini", messages=msgs, stream=True,
                                     extra_headers={"x-fake-scenario": "drop"})
    return [c.choices[0].delta.content for c in s if c.choices]
out["broken_stream"] = outcome(broken_stream)
def abandoned():
    s = oa().chat.completions.create(model="gpt-4o-mini", messages=msgs, stream=True)
    first = next(iter(s)).choices[0].delta.role
    s.close()
    return first
out["abandoned_stream"] = outcome(abandoned)
out["responses"] = outcome(lambda: oa().responses.create(model="gpt-4o-mini", input="hi").output_text)
out["embeddings"] = outcome(lambda: len(oa().embeddings.create(model="text-embedding-3-small", input=["a", "b"]).data))

async def run_async():
    client = openai.AsyncOpenAI(base_url=base + "/v1", api_key="sk-test", max_retries=0)
    r = await client.chat.completions.create(model="gpt-4o-mini", messages=msgs)
    s = await client.chat.completions.create(model="gpt-4o-mini", messages=msgs, stream=True)
    text = "".join([c.choices[0].delta.content or "" async for c in s if c.choices])
    try:
        await client.chat.completions.create(model="gpt-4o-mini", messages=msgs,
                                             extra_headers={"x-fake-scenario": "status:503"})
        err = None
    except openai.APIStatusError as exc:
        err = [type(exc).__name__, exc.status_code]
    a = anthropic.AsyncAnthropic(base_url=base, api_key="sk-ant-test", max_retries=0)
    m = await a.messages.create(model="claude-sonnet-4-0", max_tokens=10, messages=msgs)
    return [r.choices[0].message.content, text, err, m.content[0].text, m.usage.output_tokens]
out["async"] = outcome(lambda: asyncio.run(run_async()))

def claude_stream():
    c = anthropic.Anthropic(base_url=base, api_key="sk-ant-test", max_retries=0)
    with c.messages.stream(model="claude-sonnet-4-0", max_tokens=10, messages=msgs) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    return [text, final.usage.output_tokens]
out["anthropic_stream"] = outcome(claude_stream)

results = {}
def worker(i):
    results[i] = outcome(lambda: chat()[0] + str(i))
threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
[t.start() for t in threads]
[t.join() for t in threads]
out["threads"] = [results[i] for i in range(6)]

read, write = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(read)
    data = json.dumps(outcome(chat)).encode()
    os.write(write, data)
    os._exit(0)
os.close(write)
child = b""
while chunk := os.read(read, 65536):
    child += chunk
_, status = os.waitpid(pid, 0)
out["fork"] = [json.loads(child), os.waitstatus_to_exitcode(status)]

def task(i):
    return chat()[0] + str(i)
with multiprocessing.get_context("fork").Pool(2) as pool:
    out["pool"] = outcome(lambda: pool.map(task, range(4)))

print(json.dumps(out, sort_keys=True))
"""


@pytest.fixture(scope="module")
def provider() -> Iterator[FakeProvider]:
    with FakeProvider() as fake:
        yield fake


def _run(provider: FakeProvider, env: dict[str, str]) -> tuple[dict, float, str]:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", WORKLOAD, provider.url], env=env, capture_output=True, text=True, timeout=90
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1]), elapsed, result.stderr


@pytest.fixture(scope="module")
def baseline(provider: FakeProvider) -> tuple[dict, float]:
    out, elapsed, _ = _run(provider, clean_env())
    # The workload really covers successes and failures.
    assert out["chat"]["value"][0] == "Hello from the fake"
    assert out["status_429"]["raised"] == "openai.RateLimitError"
    assert out["timeout"]["raised"] == "openai.APITimeoutError"
    assert out["fork"][1] == 0 and out["pool"]["value"] == [f"Hello from the fake{i}" for i in range(4)]
    return out, elapsed


@pytest.mark.parametrize("mode", ["down", "hang", "500", "garbage", "401", "ok"])
def test_results_and_exceptions_identical_whatever_the_daemon_does(
    provider: FakeProvider, baseline: tuple[dict, float], tmp_path: Path, mode: str
) -> None:
    expected, base_elapsed = baseline
    with FakeDaemon(token="right") as sink:
        sink.hang_s = 60
        if mode == "down":
            sink.stop()
        elif mode == "401":
            sink.token = "something-else"
        else:
            sink.mode = mode
        env = clean_env(
            CW_INSTRUMENT="1",
            COSTWATCH_URL=sink.url,
            COSTWATCH_TOKEN="right",
            COSTWATCH_APP="unbroken",
            COSTWATCH_STATE_DIR=str(tmp_path / "state"),
            COSTWATCH_EXIT_FLUSH_TIMEOUT_S="1",
        )
        out, elapsed, stderr = _run(provider, env)
        sink.release_hangs()
    assert out == expected
    # Never slower by more than the exit flush deadline (plus noise on a busy CI box).
    assert elapsed < base_elapsed + 6, (elapsed, base_elapsed)
    assert "Traceback" not in stderr, stderr[-2000:]
    if mode == "ok":
        assert sink.stored > 20  # the instrumented run did record (else this test proves nothing)
