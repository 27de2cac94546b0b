"""Real processes for end-to-end tests: `costwatch daemon` and instrumented app scripts."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without any COSTWATCH_* the developer may have set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COSTWATCH_", "OPENAI_", "ANTHROPIC_"))}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


class DaemonProcess:
    """``costwatch daemon`` in a subprocess on a free loopback port, with its own state dir."""

    def __init__(self, state_dir: Path, *args: str, port: int | None = None, **env: str) -> None:
        self.state_dir = state_dir
        self.port = port or free_port()
        self.db = state_dir / "costwatch.duckdb"
        self.args = args
        # What README tells a user to set: clients (CLI and apps) find the daemon from COSTWATCH_URL.
        self.env = clean_env(COSTWATCH_STATE_DIR=str(state_dir), COSTWATCH_URL=self.url, **env)
        self.proc: subprocess.Popen[str] | None = None
        self.log = state_dir / "daemon.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def token(self) -> str:
        return (self.state_dir / "token").read_text().strip()

    def start(self, timeout: float = 30.0) -> DaemonProcess:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "costwatch.cli",
            "daemon",
            "--db",
            str(self.db),
            "--port",
            str(self.port),
        ]
        with self.log.open("a") as log:
            self.proc = subprocess.Popen([*cmd, *self.args], env=self.env, stdout=log, stderr=log, text=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=0.5).status_code in (200, 503):
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"daemon did not answer within {timeout}s:\n{self.log.read_text()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        code = self.proc.returncode
        self.proc = None
        return code

    def __enter__(self) -> DaemonProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=10)

    def sql(self, query: str) -> list[dict[str, Any]]:
        """Rows as dicts, through the daemon's read-only SQL endpoint."""
        with self.client() as c:
            reply = c.post("/v1/sql", json={"sql": query})
        assert reply.status_code == 200, reply.text
        body = reply.json()
        return [dict(zip(body["columns"], row, strict=True)) for row in body["rows"]]

    def app_env(self, app: str = "e2e-app", **extra: str) -> dict[str, str]:
        """What an instrumented process on this host needs: it finds the token in the state dir."""
        return clean_env(
            COSTWATCH_URL=self.url, COSTWATCH_APP=app, COSTWATCH_STATE_DIR=str(self.state_dir), **extra
        )


# An app that makes one instrumented chat call against ``sys.argv[1]`` and flushes: prints the reply.
INSTRUMENTED_CHAT_APP = """
import json, sys
import costwatch.autoinstrument
import costwatch, openai
client = openai.OpenAI(base_url=sys.argv[1] + "/v1", api_key="sk-test", max_retries=0)
reply = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
assert costwatch.flush(10)
print(json.dumps({"content": reply.choices[0].message.content}))
"""


def run_script(source: str, env: dict[str, str], timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run a Python snippet in a fresh interpreter (fresh patches, fresh emitter)."""
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(source)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if result.returncode != 0:
        raise AssertionError(f"script failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


class LoopbackServer:
    """A threaded HTTP server on a free loopback port for a test's own handler class."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
