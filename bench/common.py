"""Shared helpers: statistics, subprocesses, the daemon under test, the machine description."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / ".results"


def mmm(values: Sequence[float]) -> dict[str, float]:
    """min / median / max (and n) of a list of repeated measurements."""
    vals = sorted(values)
    if not vals:
        return {"n": 0}
    return {"n": len(vals), "min": vals[0], "median": statistics.median(vals), "max": vals[-1]}


def fmt_mmm(stat: dict[str, float] | None, digits: int = 1, unit: str = "") -> str:
    if not stat or not stat.get("n"):
        return "—"

    def f(v: float) -> str:
        return f"{v:,.{digits}f}"

    return f"{f(stat['median'])}{unit} ({f(stat['min'])} – {f(stat['max'])})"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env_for_children(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("COSTWATCH_URL", None)
    env.update(extra)
    return env


@dataclass
class Proc:
    """A child process that printed its URL on its first stdout line."""

    popen: subprocess.Popen[str]
    url: str

    def stop(self, timeout: float = 10) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def start_url_proc(args: list[str], timeout: float = 20, **env: str) -> Proc:
    popen = subprocess.Popen(
        args,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
        env=env_for_children(**env),
    )
    assert popen.stdout is not None
    line = popen.stdout.readline().strip()
    if not line.startswith("http"):
        popen.kill()
        raise RuntimeError(f"{args} did not start: {line!r}")
    return Proc(popen, line)


def run_json(args: list[str], timeout: float = 900, **env: str) -> dict[str, Any]:
    """Run a worker, return the JSON object on its last stdout line."""
    done = subprocess.run(
        args, capture_output=True, text=True, cwd=ROOT, env=env_for_children(**env), timeout=timeout
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{args[:4]} failed ({done.returncode}): {done.stderr[-2000:]}")
    return json.loads(lines[-1])


def rss_mb(pid: int) -> float:
    """Resident set size of a process (VmRSS), MB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def cpu_s(pid: int) -> float:
    """utime + stime of a process, seconds."""
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


# -- the real daemon ----------------------------------------------------------------------
@dataclass
class DaemonProc:
    popen: subprocess.Popen[bytes]
    url: str
    token: str
    state_dir: Path
    db: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def request(self, method: str, path: str, body: Any = None, timeout: float = 60) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())

    def stop(self, timeout: float = 60) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def costwatch_cmd() -> list[str]:
    return [sys.executable, "-m", "costwatch.cli"]


def start_daemon(state_dir: Path, db: Path | None = None, port: int | None = None, **env: str) -> DaemonProc:
    """``costwatch daemon --db DB --port N`` with ``COSTWATCH_STATE_DIR=state_dir``; waits for /healthz."""
    state_dir.mkdir(parents=True, exist_ok=True)
    db = db or state_dir / "costwatch.duckdb"
    port = port or free_port()
    rules = state_dir / "no-rules"
    rules.mkdir(exist_ok=True)
    log = open(state_dir / "daemon.log", "ab")  # noqa: SIM115
    popen = subprocess.Popen(
        [*costwatch_cmd(), "daemon", "--db", str(db), "--port", str(port), "--rules", str(rules)],
        stdout=log,
        stderr=log,
        cwd=ROOT,
        env=env_for_children(COSTWATCH_STATE_DIR=str(state_dir), COSTWATCH_LOG_LEVEL="WARNING", **env),
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        if popen.poll() is not None:
            raise RuntimeError(
                f"daemon exited {popen.returncode}: {(state_dir / 'daemon.log').read_text()[-2000:]}"
            )
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=1) as resp:
                if resp.status == 200:
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            popen.kill()
            raise RuntimeError("daemon did not become healthy")
        time.sleep(0.05)
    token = (state_dir / "token").read_text().strip()
    return DaemonProc(popen, url, token, state_dir, db)


@contextlib.contextmanager
def tempdir(prefix: str) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix=f"cwbench-{prefix}-") as d:
        yield Path(d)


# -- machine ------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    from importlib import metadata

    cpu = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    versions = {}
    for name in (
        "costwatch", "openai", "anthropic", "httpx2", "httpx", "duckdb", "pyarrow", "msgspec", "starlette",
        "uvicorn", "opentelemetry-api", "opentelemetry-sdk",
    ):  # fmt: skip
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    load = os.getloadavg()
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "packages": versions,
        "loadavg_at_start": [round(x, 2) for x in load],
    }


def save(section: str, data: dict[str, Any]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{section}.json").write_text(json.dumps(data, indent=1, default=str))


def load(section: str) -> dict[str, Any] | None:
    path = RESULTS / f"{section}.json"
    return json.loads(path.read_text()) if path.exists() else None
