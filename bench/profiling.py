"""py-spy sampling of a running process, summarized as the functions where time goes."""

from __future__ import annotations

import collections
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from bench.venvs import VENVS

PY_SPY = VENVS / "tools" / "bin" / "py-spy"


def ensure_pyspy() -> Path | None:
    if PY_SPY.exists():
        return PY_SPY
    import sys

    try:
        subprocess.run([sys.executable, "-m", "venv", str(VENVS / "tools")], check=True)
        subprocess.run([str(VENVS / "tools" / "bin" / "pip"), "install", "-q", "py-spy==0.4.1"], check=True,
                       capture_output=True)  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return None
    return PY_SPY if PY_SPY.exists() else None


def start(
    pid: int, seconds: float, rate: int = 200, threads: bool = True
) -> tuple[subprocess.Popen[bytes], Path] | None:
    """Start ``py-spy record`` on ``pid`` in the background (collapsed stacks); None without py-spy."""
    exe = ensure_pyspy()
    if exe is None:
        return None
    out = Path(tempfile.mkstemp(prefix="cwbench-pyspy-", suffix=".txt")[1])
    args = [str(exe), "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", str(rate),
            "--format", "raw", "--nonblocking", "-o", str(out)]  # fmt: skip
    if threads:
        args.append("--threads")
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), out


def finish(
    handle: tuple[subprocess.Popen[bytes], Path] | None, top: int = 15, thread: str | None = None
) -> dict[str, Any] | None:
    if handle is None:
        return None
    popen, out = handle
    try:
        popen.wait(120)
    except subprocess.TimeoutExpired:
        popen.kill()
        return None
    text = out.read_text(errors="replace") if out.exists() else ""  # py-spy may cut a UTF-8 name
    if thread is not None:
        text = "\n".join(line for line in text.splitlines() if thread in line.split(";", 1)[0])
    return summarize(text, top)


def _frame(f: str, line: bool = False) -> str:
    # "function (path/to/file.py:123)" → "function (dir/file.py)" or "function (dir/file.py:123)"
    name, _, loc = f.partition(" (")
    path, _, lineno = loc.rstrip(")").rpartition(":")
    short = "/".join(path.rsplit("/", 2)[-2:])
    return f"{name} ({short}:{lineno})" if line else f"{name} ({short})"


def summarize(collapsed: str, top: int = 15) -> dict[str, Any]:
    """Self and inclusive sample shares per function, and per thread."""
    self_ct: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    per_thread: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        thread = frames[0] if frames and frames[0].startswith(("thread", "process")) else "?"
        frames = [f for f in frames if " (" in f]
        if not frames:
            continue
        total += n
        per_thread[thread] += n
        self_ct[_frame(frames[-1], line=True)] += n
        for f in {_frame(f) for f in frames}:
            incl[f] += n
    pct = lambda c: [(k, round(100 * v / total, 1)) for k, v in c.most_common(top)] if total else []  # noqa: E731
    return {"samples": total, "self": pct(self_ct), "inclusive": pct(incl), "threads": pct(per_thread)}
