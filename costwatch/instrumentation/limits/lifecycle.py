"""The limits thread's life: started with the limiter (or on first use in a forked child),
stopped with a release of every slice at exit, within the exit budget.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import socket
import threading
import time
import uuid
import weakref
from typing import Any

from costwatch.connection import DaemonConnection
from costwatch.instrumentation import exit_budget

__all__ = ["Lifecycle", "new_holder", "track"]


class Lifecycle:
    """The start/stop half of `Limiter` (a mixin)."""

    def start(self) -> None:
        if self._thread is None and not self._stop:
            self._thread = threading.Thread(target=self._run, name="costwatch-limits", daemon=True)
            self._thread.start()

    def close(self, release: bool = True, timeout: float = 2.0) -> None:
        """Stop the thread and hand what this process holds back to the daemon, within ``timeout``."""
        deadline = time.monotonic() + timeout
        self._stop = True
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        left = deadline - time.monotonic()
        if release and self._exchanged and self._slices and os.getpid() == self._pid and left > 0.01:
            with contextlib.suppress(Exception):
                self._release(left)
        self._conn.close()


def new_holder() -> str:
    """This process's name at the daemon: a forked child gets its own."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


_live: weakref.WeakSet[Any] = weakref.WeakSet()  # the live Limiters


def track(limiter: Any) -> None:
    """Reset in a forked child and closed at exit."""
    _live.add(limiter)


def _after_fork_in_child() -> None:
    """A forked child holds no lease of its own: start over with a new holder id and thread."""
    for limiter in list(_live):
        with contextlib.suppress(Exception):
            limiter._lock = threading.Lock()
            limiter._slices = {}
            limiter._pid = os.getpid()
            limiter._conn = DaemonConnection(limiter._settings.url, limiter.connect_timeout_s)
            limiter._thread = None
            limiter._wake = threading.Event()
            limiter._started = limiter._completed = 0
            limiter.active = True  # so the first call starts the child's own thread (prepare())
            limiter.holder = new_holder()


def _release_all_at_exit() -> None:
    """Hand slices back on a normal exit (a crash is covered by the lease TTL), within the exit budget."""
    for limiter in list(_live):
        with contextlib.suppress(Exception):
            limiter.close(timeout=exit_budget.remaining(limiter._settings.exit_flush_timeout_s))


atexit.register(_release_all_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
