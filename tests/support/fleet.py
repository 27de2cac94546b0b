"""Fleet mode with real processes: daemons sharing one Postgres ledger, instrumented apps, the CLI.

Shared by tests/fleet (slow tests) and bench/fleet.py (the figures in docs/benchmarks.md).
"""

from __future__ import annotations

import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from tests.support.processes import ROOT, DaemonProcess, clean_env

WATCHER = ROOT / "tests" / "fleet" / "watcher_app.py"

__all__ = ["Watcher", "fleet_daemon", "kill_to_blocked_trial", "run_cli"]


def fleet_daemon(state_dir: Path, dsn: str, node: str, **env: str) -> DaemonProcess:
    env.setdefault("COSTWATCH_FLEET_POLL_S", "2")
    env.setdefault("COSTWATCH_FLEET_INTERVAL_S", "0.2")
    rules = state_dir / "rules"  # empty: no rule of the working directory's ./alerts runs here
    rules.mkdir(parents=True, exist_ok=True)
    return DaemonProcess(
        state_dir, "--rules", str(rules), COSTWATCH_FLEET_DSN=dsn, COSTWATCH_NODE=node, **env
    )


def run_cli(daemon: DaemonProcess, *args: str) -> subprocess.CompletedProcess[str]:
    env = clean_env(COSTWATCH_URL=daemon.url, COSTWATCH_STATE_DIR=str(daemon.state_dir))
    return subprocess.run(
        [sys.executable, "-m", "costwatch.cli", *args], env=env, capture_output=True, text=True, timeout=30
    )


class Watcher:
    """tests/fleet/watcher_app.py attached to one daemon; its state changes arrive on a queue."""

    def __init__(self, daemon: DaemonProcess, openai_url: str, app: str = "watched") -> None:
        env = daemon.app_env(app)
        self.proc = subprocess.Popen(
            [sys.executable, str(WATCHER), openai_url], env=env, stdout=subprocess.PIPE, text=True, cwd=ROOT
        )
        self.events: queue.Queue[tuple[str, float]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        assert self.next(30)[0] == "READY"

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            parts = line.split()
            self.events.put((parts[0], float(parts[1]) if len(parts) > 1 else time.time()))

    def next(self, timeout: float) -> tuple[str, float]:
        return self.events.get(timeout=timeout)

    def wait_for(self, state: str, timeout: float = 10.0) -> float:
        deadline = time.monotonic() + timeout
        while True:
            kind, when = self.next(max(0.01, deadline - time.monotonic()))
            if kind == state:
                return when

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(5)


def kill_to_blocked_trial(source: DaemonProcess, watcher: Watcher, timeout: float = 10.0) -> float:
    """`costwatch kill --fleet` on ``source`` until the watcher (on another daemon) is refused: seconds.

    Timed from just before the CLI process starts (its start-up included) to the first
    refused call; then `resume --fleet` and wait until calls go through again.
    """
    started = time.time()
    result = run_cli(source, "kill", "--fleet", "--reason", "fleet trial")
    assert result.returncode == 0, result.stderr
    blocked_at = watcher.wait_for("BLOCKED", timeout)
    result = run_cli(source, "resume", "--fleet")
    assert result.returncode == 0, result.stderr
    watcher.wait_for("OPEN", timeout)
    return blocked_at - started


def ledger_ids(dsn: str, node: str) -> list[str]:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        return [r[0] for r in conn.execute("SELECT id FROM costwatch.usage_events WHERE node = %s", [node])]


def post_batches(daemon: DaemonProcess, batches: int, size: int) -> list[str]:
    """Post ``batches`` of ``size`` events each; returns the ids acknowledged."""
    from costwatch.events import encode_many
    from tests.daemon.conftest import make_event

    ids: list[str] = []
    with httpx.Client(
        base_url=daemon.url, headers={"Authorization": f"Bearer {daemon.token}"}, timeout=30
    ) as c:
        for _ in range(batches):
            events = [make_event(input_tokens=10, output_tokens=1) for _ in range(size)]
            reply = c.post("/v1/events", content=encode_many(events))
            reply.raise_for_status()
            ids += [e.id for e in events]
    return ids
