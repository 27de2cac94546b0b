"""The app side of hard budgets and rate limits: leases held locally, reservations per call.

The daemon (`costwatch.daemon.leases`) hands this process *slices* of each pool (a hard
budget in USD or tokens, a rate limit's requests or tokens per window). Before a call
leaves, the limiter reserves the call's worst case from every slice that covers it; when
usage is known the reservation is settled with the real amount. Hot path: one attribute
check when no limit applies; otherwise a few regex searches on the body and one short lock
around float counters. All I/O runs on the package's own thread (``costwatch-limits``).

- `limiter`: the call path — `Limiter.prepare` / `admit` / `settle`, `admit_sync` /
  `admit_async`, the refusals;
- `sizing`: a call's worst case before it leaves, and its real cost after;
- `slices`: what is held — a slice per pool, a call's facts, a call's reservations;
- `exchange`: the limits thread's lease exchange with the daemon, and how often it runs;
- `lifecycle`: starting and stopping that thread, fork and exit.
"""

from costwatch.instrumentation.limits.limiter import LimitedCallRecord, Limiter, admit_async, admit_sync
from costwatch.instrumentation.limits.slices import Ticket

__all__ = ["LimitedCallRecord", "Limiter", "Ticket", "admit_async", "admit_sync"]
