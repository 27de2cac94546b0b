"""What the limiter keeps: this process's slice of each pool, one call's facts, one call's reservations.

Shared by the call path (`limiter`), which reserves from slices, and the limits thread
(`exchange`), which renews and resizes them.
"""

from __future__ import annotations

import math
import time
from typing import Any

from costwatch.protocol import Limit

__all__ = ["Call", "Slice", "Ticket"]


class Slice:
    """This process's share of one pool (limit, group, window)."""

    __slots__ = (
        "contended",
        "demand",
        "free",
        "granted",
        "group",
        "last_amount",
        "last_used",
        "lease",
        "limit",
        "need",
        "rate",
        "reported",
        "reserved",
        "scope",
        "settled",
        "valid_until",
        "window",
        "window_end",
    )

    def __init__(self, limit: Limit, group: str, scope: dict[str, str]) -> None:
        self.limit = limit
        self.group = group
        self.scope = scope
        self.window = ""
        self.lease = 0
        self.granted = 0.0
        self.reserved = 0.0
        self.settled = 0.0
        self.reported = 0.0  # consumption the daemon knows is in its database (budgets)
        self.valid_until = 0.0  # monotonic: lease expiry or window end, whichever first
        self.window_end = 0.0
        self.free = math.inf  # the pool's free amount at the last exchange
        self.contended = False  # others hold surplus the daemon is reclaiming for our waiting calls
        self.need = 0.0  # asked for by calls that did not fit
        self.demand = 0.0  # reserved since the last exchange (sizes the next slice)
        self.rate = 0.0  # per second, smoothed
        self.last_used = time.monotonic()
        self.last_amount = 0.0  # the latest call's worst case (a floor for the slice size)

    @property
    def available(self) -> float:
        return self.granted - self.reserved - self.settled

    def consumed(self) -> float:
        """What to report: budgets count settled calls only; rate limits count calls started."""
        if self.limit.kind == "budget":
            return self.settled
        return self.settled + self.reserved


class Call:
    """What admission needs to know about one request, read once from its body."""

    __slots__ = (
        "app",
        "body",
        "deadline",
        "inp",
        "limiter",
        "model",
        "provider",
        "started",
        "target",
        "user",
    )

    def __init__(
        self, limiter: Any, app: str, provider: str, model: str | None, user: str | None, body: bytes
    ) -> None:
        self.limiter = limiter
        self.app = app
        self.provider = provider
        self.model = model
        self.user = user
        self.body = body
        self.target = -1  # the exchange whose answer this call waits for
        self.started = time.monotonic()
        self.deadline: float | None = None  # on_exceed: wait
        self.inp = -1  # the input bound, computed once (`bounds.input_bound`) when a limit needs it


class Ticket:
    """The reservations of one admitted call; settled once, with the real amounts."""

    __slots__ = ("_limiter", "_once", "items", "prices")

    def __init__(self, limiter: Any, items: list[tuple[Slice, float]], prices: list[float] | None) -> None:
        self._limiter = limiter
        self.items = items
        self.prices = prices
        self._once = [True]

    def settle(self, event: Any) -> None:
        try:
            self._once.pop()
        except IndexError:
            return
        self._limiter.settle(self, event)
