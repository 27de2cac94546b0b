"""One time budget for everything costwatch does while the app's process exits.

The emitter's final flush and the limiter's lease release each run from their
own ``atexit`` hook; both draw on one deadline, started by whichever runs first,
so the process waits at most ``exit_flush_timeout_s`` in total whatever the
daemon does (what is not delivered by then goes to the spool).
"""

from __future__ import annotations

import time

__all__ = ["remaining"]

_deadline: float | None = None


def remaining(total: float) -> float:
    """Seconds left of the exit budget of ``total`` seconds; the first call starts it."""
    global _deadline
    now = time.monotonic()
    if _deadline is None:
        _deadline = now + total
    return max(0.0, _deadline - now)
