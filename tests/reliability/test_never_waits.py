"""An app never waits on costwatch, and an operator command never claims what did not happen.

The app is a fresh interpreter running the real `openai` SDK against the fake provider,
with only what README tells users to set (``COSTWATCH_URL``, ``COSTWATCH_STATE_DIR``).
The daemon is down (connection refused), hung (accepts connections and never answers, like
a process stopped with SIGSTOP), or answering garbage. Each call's time is compared with the
same call in an uninstrumented run, and the process's exit is timed from its last line.
"""

from __future__ import annotations

import json
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from tests.fakes.provider import FakeProvider
from tests.fakes.sink import FakeDaemon
from tests.support.processes import DaemonProcess, LoopbackServer, clean_env, free_port

pytestmark = pytest.mark.slow

CALLS = 9
EXIT_BUDGET_S = 1.0
# Before this file's fixes a hung daemon cost the first calls ~2 s each (a lease exchange waited
# for) and the exit ~4 s. A wait shows in every call it touches; what remains is noise: a few ms
# per call, and one-off costs any extra import brings (costwatch's ~13k objects move the app's
# next full GC collection, ~45 ms, into whichever call allocates enough to trigger it).
MEDIAN_SLACK_MS = 10.0
CALL_SLACK_MS = 300.0
# Scheduling slack on top of the exit budget for costwatch's own exit work (its atexit handlers),
# on two cores shared with other work. The interpreter's teardown after them is not costwatch's:
# it is reported, not held to a bound (seconds under load, for any app that imported openai).
EXIT_SLACK_S = 0.5

APP = r"""
import atexit, json, os, sys, time
# Registered before costwatch's own handlers, so it runs after them (atexit runs last-in, first-out).
atexit.register(lambda: print(json.dumps({"exit_work_done_at": time.time()}), flush=True))
if os.environ.get("CW_INSTRUMENT") == "1":
    import costwatch.autoinstrument
import openai
client = openai.OpenAI(base_url=sys.argv[1] + "/v1", api_key="sk-test", max_retries=0)
msgs = [{"role": "user", "content": "hi"}]
client.chat.completions, client.responses  # the SDK imports these lazily: not part of any call's time
calls = []
for i in range(int(sys.argv[2])):
    started = time.perf_counter()
    kind = ("chat", "stream", "responses")[i % 3]
    if kind == "chat":
        client.chat.completions.create(model="gpt-4o-mini", messages=msgs)
    elif kind == "stream":
        for _ in client.chat.completions.create(model="gpt-4o-mini", messages=msgs, stream=True):
            pass
    else:
        client.responses.create(model="gpt-4o-mini", input="hi")
    calls.append((time.perf_counter() - started) * 1000)
print(json.dumps({"calls_ms": calls, "last_line_at": time.time()}), flush=True)
"""


class HungDaemon:
    """Accepts every connection and never answers: a daemon stopped with SIGSTOP, or wedged."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)  # held open, never read, never answered

    def close(self) -> None:
        self.sock.close()
        for conn in self.accepted:
            conn.close()


class GarbageServer:
    """Something else on the daemon's port: answers every request 200 with an HTML page."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def _page(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                body = b"<html><body>It works!</body></html>"
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _page

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.loopback = LoopbackServer(Handler)
        self.url = self.loopback.url

    def close(self) -> None:
        self.loopback.close()


@pytest.fixture(scope="module")
def provider() -> Iterator[FakeProvider]:
    with FakeProvider() as fake:
        yield fake


def run_app(provider: FakeProvider, env: dict[str, str]) -> tuple[list[float], float]:
    """Per-call times (ms) and the seconds costwatch's exit work took (after the app's last line)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", APP, provider.url, str(CALLS)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    done = proc.stdout.readline()
    proc.wait(timeout=60)
    assert proc.returncode == 0 and line and done, proc.stderr.read() if proc.stderr else ""
    out = json.loads(line)
    return out["calls_ms"], json.loads(done)["exit_work_done_at"] - out["last_line_at"]


@pytest.fixture(scope="module")
def baseline(provider: FakeProvider) -> list[float]:
    # Two uninstrumented runs: the slower of each call, so a hiccup in one is not held against costwatch.
    first, _ = run_app(provider, clean_env())
    second, _ = run_app(provider, clean_env())
    return [max(a, b) for a, b in zip(first, second, strict=True)]


@pytest.mark.parametrize("mode", ["hung", "down", "garbage"])
def test_no_call_waits_and_exit_keeps_its_budget_whatever_the_daemon_does(
    provider: FakeProvider, baseline: list[float], tmp_path: Path, mode: str
) -> None:
    state = tmp_path / "state"
    if mode == "hung":
        daemon: HungDaemon | FakeDaemon = HungDaemon()
    else:
        daemon = FakeDaemon().start()
        if mode == "down":
            daemon.stop()
        else:
            daemon.mode = "garbage"
    try:
        runs = []
        for attempt in range(2):
            env = clean_env(
                CW_INSTRUMENT="1",
                COSTWATCH_URL=daemon.url,
                COSTWATCH_STATE_DIR=str(state if attempt == 0 else tmp_path / "state2"),
                COSTWATCH_EXIT_FLUSH_TIMEOUT_S=str(EXIT_BUDGET_S),
            )
            calls, exit_wait = run_app(provider, env)
            # Our exit work (flush, watcher, lease release) keeps to its one budget.
            assert exit_wait < EXIT_BUDGET_S + EXIT_SLACK_S, (mode, exit_wait)
            runs.append(calls)
    finally:
        daemon.close() if isinstance(daemon, HungDaemon) else daemon.stop()
    # A wait costwatch causes shows in both runs; a scheduling hiccup on a busy machine in one.
    calls = [min(a, b) for a, b in zip(*runs, strict=True)]
    slower = [round(c - b, 1) for c, b in zip(calls, baseline, strict=True)]
    assert statistics.median(slower) < MEDIAN_SLACK_MS, (mode, slower, calls, baseline)
    assert max(slower) < CALL_SLACK_MS, (mode, slower, calls, baseline)

    # Nothing was lost: what could not be delivered is in the spool, and the next process
    # on this host replays it once a daemon answers.
    with FakeDaemon() as sink:
        replay = subprocess.Popen(
            [sys.executable, "-c", "import costwatch.autoinstrument, time; time.sleep(30)"],
            env=clean_env(COSTWATCH_URL=sink.url, COSTWATCH_STATE_DIR=str(state)),
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert sink.wait_for(lambda: sink.stored >= CALLS, timeout=15), (mode, sink.stored)
        finally:
            replay.terminate()
            replay.wait(10)
        assert sink.stored == CALLS


def test_a_process_started_after_kill_refuses_its_first_call_without_asking_the_daemon(
    provider: FakeProvider, tmp_path: Path
) -> None:
    """`costwatch kill` through COSTWATCH_URL on a non-default port; then the daemon is stopped
    with SIGSTOP (hung) and later with SIGTERM (down): a new process is refused at once."""
    script = r"""
import json, sys, time
import costwatch.autoinstrument
import costwatch, openai
client = openai.OpenAI(base_url=sys.argv[1] + "/v1", api_key="sk-test", max_retries=0)
started = time.perf_counter()
try:
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    outcome = "sent"
except costwatch.KillSwitchEngaged as exc:
    outcome = "blocked: " + str(exc)
print(json.dumps({"outcome": outcome, "ms": (time.perf_counter() - started) * 1000}), flush=True)
"""
    with DaemonProcess(tmp_path / "state") as daemon:
        kill = subprocess.run(
            [sys.executable, "-m", "costwatch.cli", "kill", "--reason", "runaway loop"],
            env=daemon.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert kill.returncode == 0, kill.stderr
        assert f"engaged at {daemon.url}" in kill.stdout
        before = provider.count
        for how in (signal.SIGSTOP, signal.SIGTERM):
            assert daemon.proc is not None
            if how == signal.SIGTERM:
                daemon.proc.send_signal(signal.SIGCONT)
                assert daemon.stop() == 0
            else:
                daemon.proc.send_signal(how)
            result = subprocess.run(
                [sys.executable, "-c", script, provider.url],
                env=daemon.app_env("after-kill"),
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert result.returncode == 0, result.stderr
            out = json.loads(result.stdout.strip().splitlines()[-1])
            assert out["outcome"].startswith("blocked: ") and "runaway loop" in out["outcome"], out
            assert out["ms"] < 100, (how, out)  # no network wait: the state file said so
        assert provider.count == before  # nothing reached the provider


@pytest.mark.parametrize("mode", ["down", "hung", "garbage"])
def test_kill_against_a_url_where_no_daemon_answers_fails_naming_it(tmp_path: Path, mode: str) -> None:
    """The one command an operator types in an emergency never says it engaged what it did not."""
    server = {"down": None, "hung": HungDaemon, "garbage": GarbageServer}[mode]
    running = server() if server is not None else None
    url = running.url if running is not None else f"http://127.0.0.1:{free_port()}"
    # A daemon's state dir with a database: nothing may be written to it behind the operator's back.
    env = clean_env(COSTWATCH_URL=url, COSTWATCH_STATE_DIR=str(tmp_path))
    try:
        for args in (
            ("kill", "--reason", "x", "--timeout", "1"),
            ("resume", "--all", "--timeout", "1"),
            ("rules", "reload", "--timeout", "1"),
            ("status", "--timeout", "1"),
        ):
            started = time.monotonic()
            out = subprocess.run(
                [sys.executable, "-m", "costwatch.cli", *args],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert out.returncode == 1, (args, out.stdout, out.stderr)
            assert out.stdout == "" and out.stderr.count("\n") == 1 and url in out.stderr, (args, out.stderr)
            assert "Traceback" not in out.stderr
            assert time.monotonic() - started < 10
            if args[0] == "kill":
                expected = {
                    "down": "the kill switch was NOT engaged",
                    "hung": "it is not known whether it took effect",
                    "garbage": "did not answer like a costwatch daemon",
                }[mode]
                assert expected in out.stderr, out.stderr
        assert not list(tmp_path.glob("*.duckdb"))  # no silent fallback to a file
    finally:
        if running is not None:
            running.close()
