"""Keeps the daemon's state file (`costwatch.statefile`) in step with the daemon.

A kill-switch change is written synchronously by the registry's listener, in
the thread that made it, so once `costwatch kill` has its answer the file says
so too. Hard limits come from rule files that can change at any time; a small
thread recounts them every ``refresh_s`` and rewrites the file when the count
changes. A file that cannot be written (read-only or full disk) is logged once
and never stops an engage.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from costwatch import statefile
from costwatch.daemon.killswitch import KillSwitchRegistry
from costwatch.protocol import DaemonState

__all__ = ["StateMirror"]

log = logging.getLogger("costwatch.daemon.mirror")


class StateMirror:
    refresh_s = 2.0

    def __init__(
        self,
        path: Path,
        registry: KillSwitchRegistry,
        db: Path,
        hard_limits: Callable[[], int] | None = None,
    ) -> None:
        self.path = path
        self._registry = registry
        self._db = str(db)
        self._count_limits = hard_limits
        self._hard_limits = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False
        self.writes = 0

    def start(self) -> None:
        self._hard_limits = self._count()
        self._registry.add_listener(self.write)
        self.write()
        if self._count_limits is not None:
            self._thread = threading.Thread(target=self._run, name="costwatch-statefile", daemon=True)
            self._thread.start()

    def shutdown(self) -> None:
        """Stop recounting; the file stays (an engaged switch stays engaged while the daemon is down)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def write(self) -> None:
        state = DaemonState(
            killswitch=self._registry.current(),
            hard_limits=self._hard_limits,
            db=self._db,
            pid=os.getpid(),
            written_at=time.time(),
        )
        with self._lock:
            try:
                statefile.write(self.path, state)
            except OSError as exc:
                if not self._failing:
                    log.warning("cannot write the state file %s: %s", self.path, exc)
                self._failing = True
                return
            self._failing = False
            self.writes += 1

    def _count(self) -> int:
        if self._count_limits is None:
            return 0
        try:
            return self._count_limits()
        except Exception as exc:
            log.debug("counting hard limits failed: %r", exc)
            return self._hard_limits

    def _run(self) -> None:
        while not self._stop.wait(self.refresh_s):
            count = self._count()
            if count != self._hard_limits:
                self._hard_limits = count
                self.write()
