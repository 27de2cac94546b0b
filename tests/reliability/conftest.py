"""Shared helpers for the reliability tests: real daemon processes, app scripts, DuckDB reads."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.processes import ROOT, DaemonProcess, clean_env


@pytest.fixture
def daemon_proc(tmp_path: Path) -> Iterator[DaemonProcess]:
    """A `costwatch daemon` subprocess (not started); always stopped at teardown."""
    daemon = DaemonProcess(tmp_path / "state")
    try:
        yield daemon
    finally:
        daemon.stop()


def spawn(source: str, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    """A Python snippet in a fresh interpreter, not waited for (the caller reaps it)."""
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(source), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=str(ROOT),
    )


def reap(procs: list[subprocess.Popen[str]], timeout: float) -> list[tuple[int, str, str]]:
    """Wait for every process (kill what overruns); (returncode, stdout, stderr) each."""
    results = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate(timeout=10)
        results.append((proc.returncode, out, err))
    return results


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


__all__ = ["ROOT", "DaemonProcess", "clean_env", "last_json", "reap", "spawn"]
