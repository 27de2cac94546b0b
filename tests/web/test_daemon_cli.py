"""`costwatch daemon` serves the spend page at / and prints its link with the token in the fragment."""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import httpx

from tests.web.conftest import ROOT


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_daemon_prints_the_page_link_and_serves_the_page(tmp_path: Path) -> None:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("COSTWATCH_")}
    env.update(COSTWATCH_STATE_DIR=str(tmp_path), PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-m", "costwatch.cli", "daemon", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr or []], daemon=True).start()
    try:
        seen: list[str] = []  # the link is printed before uvicorn starts serving
        while not seen or "startup complete" not in seen[-1]:
            try:
                seen.append(lines.get(timeout=20))
            except queue.Empty:
                raise AssertionError(f"the daemon did not start; stderr: {seen}") from None
        links = [line.split(": ", 1)[1].strip() for line in seen if line.startswith("spend page: ")]
        assert links, f"no 'spend page: …' line on stderr: {seen}"
        link = links[0]
        token = (tmp_path / "token").read_text().strip()
        assert link == f"http://127.0.0.1:{port}/#token={token}"
        page = httpx.get(f"http://127.0.0.1:{port}/", timeout=10)
        assert page.status_code == 200 and "<title>costwatch · spend</title>" in page.text
        # The token is in the fragment only: it never reaches the server in a request line.
        assert token not in page.text
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
