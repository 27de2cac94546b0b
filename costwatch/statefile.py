"""The daemon's state mirrored into a small file, read by apps without a network wait.

The daemon rewrites ``<state dir>/daemon-<port>.json`` whenever its kill-switch
state changes and when its hard limits appear or go (a temporary file, then an
atomic rename, so a reader never sees half a file). An instrumented process
reads it when it starts, and again while the daemon does not answer, so:

- a process started after `costwatch kill` refuses its first call even when the
  daemon is down or hung (the long poll brings later changes);
- a process on a host without hard limits never waits for a lease exchange.

The file is keyed by the port of the URL apps use, so daemons sharing a state
directory on different ports do not overwrite each other's. It outlives the
daemon on purpose: an engaged switch stays engaged while the daemon is down.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import msgspec

from costwatch.protocol import DaemonState

__all__ = ["DaemonState", "path_for", "read", "stamp", "write"]

_decoder = msgspec.json.Decoder(DaemonState)


def path_for(state_dir: Path, port: int) -> Path:
    return state_dir / f"daemon-{port}.json"


def write(path: Path, state: DaemonState) -> None:
    """Atomically replace ``path`` (readable by the owner only, like the token)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(msgspec.json.encode(state))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read(path: Path) -> DaemonState | None:
    """The mirrored state, or None (no file, unreadable, damaged)."""
    try:
        with open(path, "rb") as f:
            data = f.read(1 << 20)
        return _decoder.decode(data)
    except (OSError, msgspec.DecodeError, msgspec.ValidationError):
        return None


def stamp(path: Path) -> int | None:
    """The file's modification time in ns (None: no file): cheap to compare between reads."""
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None
