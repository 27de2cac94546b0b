"""Real processes on loopback for the Prometheus/Alertmanager tests.

Each helper starts one process on free loopback ports in a temp dir and is a
context manager that always stops it (SIGTERM, then SIGKILL); output goes to a
log file whose tail is shown when a wait times out. Every wait is bounded.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
import yaml

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "dashboards" / "costwatch-overview.json"
RULES = REPO / "alerts" / "prometheus" / "costwatch.rules.yml"
RULES_TEST = REPO / "alerts" / "prometheus" / "costwatch.rules.test.yml"
ALERTMANAGER_EXAMPLE = REPO / "alerts" / "prometheus" / "alertmanager.example.yml"
TRAFFIC = Path(__file__).resolve().parent / "traffic.py"

# USD per million tokens for the fake's models (the fake answers with "<model>-snap").
PRICES: list[dict[str, Any]] = [
    {"model": "gpt-4o-mini-snap", "provider": "openai", "input_per_mtok": 150, "output_per_mtok": 600},
    {"model": "gpt-4o-snap", "provider": "openai", "input_per_mtok": 2500, "output_per_mtok": 10000},
    {
        "model": "claude-sonnet-4-snap",
        "provider": "anthropic",
        "input_per_mtok": 3000,
        "output_per_mtok": 15000,
    },
]

T = TypeVar("T")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(what: str, probe: Callable[[], T | None], timeout: float, log: Path | None = None) -> T:
    """Poll ``probe`` until it returns something truthy; fail naming ``what`` (and the log tail)."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = probe()
        except (httpx.HTTPError, OSError, ValueError, KeyError) as exc:
            last_error, result = exc, None
        if result:
            return result
        time.sleep(0.1)
    tail = ""
    if log is not None and log.exists():
        tail = (
            "\n--- "
            + log.name
            + " (tail) ---\n"
            + "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        )
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what} (last error: {last_error}){tail}")


class Proc:
    """A subprocess with its log file; `stop()` is idempotent."""

    def __init__(
        self, name: str, argv: Sequence[str], log: Path, env: Mapping[str, str] | None = None
    ) -> None:
        self.name = name
        self.log = log
        self._logf = log.open("wb")
        self.popen = subprocess.Popen(
            list(argv),
            stdout=self._logf,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(env) if env is not None else None,
            cwd=REPO,
            start_new_session=True,
        )

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 10) -> None:
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.popen.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.popen.wait(5)
        self._logf.close()


@contextmanager
def running(proc: Proc) -> Iterator[Proc]:
    try:
        yield proc
    finally:
        proc.stop()


# -- costwatch daemon ----------------------------------------------------------------------
class Daemon:
    """``python -m costwatch.cli daemon`` on a free port with its own state dir."""

    def __init__(
        self,
        workdir: Path,
        name: str = "daemon",
        config: Mapping[str, Any] | None = None,
        rules: str | None = None,
    ) -> None:
        self.dir = workdir / name
        self.state_dir = self.dir / "state"
        self.state_dir.mkdir(parents=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, COSTWATCH_STATE_DIR=str(self.state_dir), PYTHONPATH=str(REPO))
        if config:
            path = self.dir / "config.yaml"
            path.write_text(yaml.safe_dump(dict(config)))
            env["COSTWATCH_CONFIG"] = str(path)
        rules_dir = self.dir / "rules"  # costwatch's own rules (alerts/*.yml format), if any
        rules_dir.mkdir()
        if rules:
            (rules_dir / "rules.yml").write_text(rules)
        argv = [sys.executable, "-m", "costwatch.cli", "daemon", "--db", str(self.dir / "costwatch.duckdb")]
        argv += ["--port", str(self.port), "--rules", str(rules_dir)]
        self.proc = Proc(name, argv, self.dir / "daemon.log", env)
        self.token = ""

    def metrics(self) -> str:
        return httpx.get(self.url + "/metrics", timeout=5).text

    def start(self, timeout: float = 20) -> Daemon:
        def healthy() -> bool:
            if not self.proc.alive():
                raise RuntimeError(f"{self.proc.name} exited with {self.proc.popen.returncode}")
            return httpx.get(self.url + "/healthz", timeout=1).status_code == 200

        try:
            wait_for(f"{self.proc.name} /healthz", healthy, timeout, self.proc.log)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\n{self.proc.log.read_text(errors='replace')[-3000:]}") from None
        self.token = (self.state_dir / "token").read_text().strip()
        return self

    def killswitch(self) -> dict[str, Any]:
        response = httpx.get(self.url + "/v1/killswitch", timeout=5)
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data

    def stop(self) -> None:
        self.proc.stop()


@contextmanager
def daemon(
    workdir: Path, name: str = "daemon", config: Mapping[str, Any] | None = None, rules: str | None = None
) -> Iterator[Daemon]:
    d = Daemon(workdir, name, config, rules)
    try:
        yield d.start()
    finally:
        d.stop()


def run_traffic(
    daemon: Daemon, provider_url: str, app: str, mode: str = "mixed", timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run tests/prometheus/traffic.py (the real openai SDK + ``import costwatch.autoinstrument``)."""
    env = dict(
        os.environ,
        PYTHONPATH=str(REPO),
        COSTWATCH_URL=daemon.url,
        COSTWATCH_TOKEN=daemon.token,
        COSTWATCH_APP=app,
        COSTWATCH_STATE_DIR=str(daemon.dir / f"client-{app}"),
        COSTWATCH_KILLSWITCH_POLL_S="0.2",
    )
    return subprocess.run(
        [sys.executable, str(TRAFFIC), mode, provider_url],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# -- Prometheus ------------------------------------------------------------------------------
class Prometheus:
    """A real Prometheus on loopback scraping ``targets`` every second."""

    def __init__(
        self,
        workdir: Path,
        targets: Mapping[str, str],
        rule_files: Sequence[Path] = (),
        alertmanager_url: str | None = None,
        interval: str = "1s",
        extra_scrape_configs: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            raise RuntimeError("prometheus is not installed (Debian package `prometheus`)")
        self.dir = workdir / "prometheus"
        self.dir.mkdir(parents=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config: dict[str, Any] = {
            "global": {
                "scrape_interval": interval,
                "evaluation_interval": interval,
                "scrape_timeout": interval,
            },
            "scrape_configs": [
                {
                    "job_name": "costwatch",
                    "static_configs": [
                        {"targets": [target.removeprefix("http://")], "labels": {"host": host}}
                        for host, target in targets.items()
                    ],
                },
                *extra_scrape_configs,
            ],
            "rule_files": [str(p) for p in rule_files],
        }
        if alertmanager_url:
            config["alerting"] = {
                "alertmanagers": [
                    {"static_configs": [{"targets": [alertmanager_url.removeprefix("http://")]}]}
                ]
            }
        (self.dir / "prometheus.yml").write_text(yaml.safe_dump(config))
        argv = [
            binary,
            f"--config.file={self.dir / 'prometheus.yml'}",
            f"--storage.tsdb.path={self.dir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]
        self.proc = Proc("prometheus", argv, self.dir / "prometheus.log")

    def api(self, path: str, **params: Any) -> dict[str, Any]:
        response = httpx.get(self.url + "/api/v1/" + path, params=params, timeout=10)
        data: dict[str, Any] = response.json()
        return data

    def query(self, expr: str) -> dict[str, Any]:
        return self.api("query", query=expr)

    def wait_ready(self, timeout: float = 20) -> None:
        wait_for(
            "prometheus /-/ready",
            lambda: httpx.get(self.url + "/-/ready", timeout=1).status_code == 200,
            timeout,
            self.proc.log,
        )

    def wait_result(self, expr: str, timeout: float, n: int = 1) -> list[dict[str, Any]]:
        """Poll until ``expr`` returns at least ``n`` series; return them."""

        def probe() -> list[dict[str, Any]] | None:
            data = self.query(expr)
            result: list[dict[str, Any]] = data["data"]["result"]
            return result if data.get("status") == "success" and len(result) >= n else None

        return wait_for(f"Prometheus to return {n} series for {expr!r}", probe, timeout, self.proc.log)

    def stop(self) -> None:
        self.proc.stop()


@contextmanager
def prometheus(workdir: Path, targets: Mapping[str, str], **kwargs: Any) -> Iterator[Prometheus]:
    p = Prometheus(workdir, targets, **kwargs)
    try:
        p.wait_ready()
        yield p
    finally:
        p.stop()


# -- Alertmanager ----------------------------------------------------------------------------
class Alertmanager:
    """Debian's ``prometheus-alertmanager`` on loopback, clustering off."""

    def __init__(self, workdir: Path, config: Mapping[str, Any]) -> None:
        binary = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
        if binary is None:
            raise RuntimeError("alertmanager is not installed (Debian package `prometheus-alertmanager`)")
        self.dir = workdir / "alertmanager"
        self.dir.mkdir(parents=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        (self.dir / "alertmanager.yml").write_text(yaml.safe_dump(dict(config)))
        argv = [
            binary,
            f"--config.file={self.dir / 'alertmanager.yml'}",
            f"--storage.path={self.dir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--cluster.listen-address=",
            "--log.level=warn",
        ]
        self.proc = Proc("alertmanager", argv, self.dir / "alertmanager.log")

    def wait_ready(self, timeout: float = 20) -> None:
        wait_for(
            "alertmanager /-/ready",
            lambda: httpx.get(self.url + "/-/ready", timeout=1).status_code == 200,
            timeout,
            self.proc.log,
        )

    def stop(self) -> None:
        self.proc.stop()


@contextmanager
def alertmanager(workdir: Path, config: Mapping[str, Any]) -> Iterator[Alertmanager]:
    a = Alertmanager(workdir, config)
    try:
        a.wait_ready()
        yield a
    finally:
        a.stop()
