"""Shared by the limits tests and bench/overshoot.py: fake provider, in-process daemon, app processes.

The daemon is the real Starlette/uvicorn daemon (`start_in_thread`) with the lease service wired in
the way `costwatch daemon` wires it; the apps are separate Python processes using the real openai SDK
with ``import costwatch.autoinstrument``. The fake provider's usage follows the request, so spend
depends on ``max_tokens``: input = message characters / 4, output = a random share (50-100 %) of
``max_tokens`` — a model that writes long answers, the case where overshoot hurts.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from costwatch.daemon.leases import LeaseService
from costwatch.daemon.server import RunningDaemon, build_daemon, start_in_thread
from costwatch.settings import DaemonSettings
from tests.fakes import provider as fake_provider
from tests.fakes.provider import FakeProvider

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Rig:
    fake: FakeProvider
    daemon: RunningDaemon
    state_dir: Path
    rules_dir: Path
    arrivals: list[tuple[float, Any]] = field(default_factory=list)  # (time, LoggedRequest) at the fake

    @property
    def leases(self) -> LeaseService:
        leases = self.daemon.daemon.leases
        assert leases is not None
        return leases

    def env(self, app: str = "bench", **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("COSTWATCH_")}
        env.update(
            COSTWATCH_URL=self.daemon.url,
            COSTWATCH_TOKEN=self.daemon.token,
            COSTWATCH_APP=app,
            # The daemon's state dir, as on a real host (same user): apps read its state file there.
            COSTWATCH_STATE_DIR=str(self.state_dir / "daemon"),
            PYTHONPATH=str(ROOT),
        )
        env.update(extra)
        return env

    def spawn(self, cfg: dict[str, Any], app: str = "bench", **env: str) -> subprocess.Popen[str]:
        cfg = {"base_url": self.fake.openai_url, **cfg}
        return subprocess.Popen(
            [sys.executable, "-m", "tests.limits.worker", json.dumps(cfg)],
            cwd=ROOT,
            env=self.env(app, **env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def run(
        self, n: int, cfg: dict[str, Any], app: str = "bench", timeout: float = 60, **env: str
    ) -> list[dict]:
        """Run ``n`` worker processes at once; their JSON summaries."""
        procs = [self.spawn({**cfg, "seed": i}, app, **env) for i in range(n)]
        out = []
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=timeout)
            assert proc.returncode == 0, stderr[-3000:]
            out.append(json.loads(stdout.strip().splitlines()[-1]))
        return out

    def recorded(self, sql: str) -> Any:
        return self.daemon.daemon.store.read(lambda cur: cur.execute(sql).fetchall())

    def spend(self) -> float:
        return float(self.recorded("SELECT coalesce(sum(cost_usd), 0) FROM usage_events")[0][0])


def prompt_tokens(req: dict) -> int:
    """What the fake charges for a chat request's input, shape by shape, at the documented worst.

    Text: its JSON / 4 for ASCII (as before), one token per non-ASCII character (CJK is about
    one a character; bytes / 4 counts 0.75). Images: OpenAI's gpt-4o tile formula (85 + 170 a
    512-px tile), by the inline PNG's size and the part's detail; an image by URL at the formula's
    maximum (8 tiles). Tools: their JSON / 4 plus Anthropic's largest tool-use system prompt (530).
    """
    from costwatch.instrumentation.bounds import image_size, image_tokens

    images = 0

    def strip(node: Any) -> Any:
        nonlocal images
        if isinstance(node, list):
            return [strip(x) for x in node]
        if isinstance(node, dict):
            if node.get("type") == "image_url" and isinstance(node.get("image_url"), dict):
                url, detail = node["image_url"].get("url", ""), node["image_url"].get("detail")
                size = None
                if url.startswith("data:"):
                    import base64

                    size = image_size(base64.b64decode(url.partition(",")[2][:4096]))
                images += image_tokens("openai", "gpt-4o", detail, size)
                return {"type": "image_url"}
            return {k: strip(v) for k, v in node.items()}
        return node

    text = json.dumps(strip(req.get("messages") or []), ensure_ascii=False)
    ascii_chars = sum(1 for c in text if ord(c) < 128)
    tokens = ascii_chars // 4 + (len(text) - ascii_chars) + images
    if req.get("tools"):
        tokens += len(json.dumps(req["tools"])) // 4 + 530
    return max(1, tokens)


def _scaled_body(original: Any) -> Any:
    rng = random.Random(7)

    def body(api: str, model: str, usage: bool, req: dict) -> dict:
        out = original(api, model, usage, req)
        if usage and api == "chat" and isinstance(req, dict):
            max_tokens = int(req.get("max_tokens") or req.get("max_completion_tokens") or 16)
            prompt = prompt_tokens(req)
            completion = rng.randint(max(1, max_tokens // 2), max_tokens)
            out["usage"] = {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            }
        return out

    return body


@contextlib.contextmanager
def rig(tmp: Path, rules_yaml: str) -> Iterator[Rig]:
    """A fake provider with request-dependent usage, and a daemon enforcing ``rules_yaml``."""
    rules_dir = tmp / "rules"
    rules_dir.mkdir(parents=True, exist_ok=True)
    (rules_dir / "limits.yml").write_text(rules_yaml)
    original_body, original_log = fake_provider._json_body, FakeProvider._log
    fake_provider._json_body = _scaled_body(original_body)
    arrivals: list[tuple[float, Any]] = []

    def log(self: FakeProvider, entry: Any) -> None:
        with self._lock:
            arrivals.append((time.time(), entry))
        original_log(self, entry)

    FakeProvider._log = log  # type: ignore[method-assign]
    fake = FakeProvider().start()
    settings = DaemonSettings(state_dir=tmp / "daemon", port=0, host="127.0.0.1", rules=rules_dir)
    daemon = start_in_thread(build_daemon(settings, rules=False, spend_page=False))
    try:
        yielded = Rig(fake, daemon, tmp, rules_dir, arrivals)
        yield yielded
        assert yielded.leases.counters["errors"] == 0, "the lease authority failed an exchange"
    finally:
        daemon.stop()
        fake.stop()
        fake_provider._json_body = original_body
        FakeProvider._log = original_log  # type: ignore[method-assign]
