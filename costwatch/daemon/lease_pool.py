"""The lease authority's arithmetic: what is free in each pool, and who holds what.

The authority never grants more than is free::

    budget:     free = limit - recorded spend in the window - sum(granted - consumed) over live leases
    rate limit: free = cap - used by finished leases this window - sum(max(granted, consumed)) over live leases

``consumed`` is what a process reports it has settled *and delivered* (it
flushes its events before reporting), so a settled call is counted either in
the recorded spend or in the outstanding grant, and an undelivered one in the
outstanding grant: never in neither. Leases expire after the rule's
``lease_ttl`` unless renewed, so a crashed process's slice returns to the
pool. One lock serializes grants (the spend query runs inside it): two
processes can never be handed the same dollar.

No slice is stranded: when a holder's waiting calls do not fit, the pool is marked
*starved* for a second; every other holder's next grant asks it to hand back what it
does not use (``reclaim``) and gives it nothing beyond what its own waiting calls need,
and the starved holder is told (``contended``) that its calls should ask again rather
than be refused (they wait at most the client's ``exchange_wait_s``).

Rate limits slide: the window is cut into ``k`` sub-windows (up to 10, each at
least a second: ``window: 1m`` = 6 s steps) aligned to the epoch, a slice is
only valid inside its sub-window, and a grant counts what the previous ``k``
sub-windows used as well as the current one. Any span of one window length
overlaps at most ``k + 1`` consecutive sub-windows, so no such span — wherever
it starts — holds more than the limit (fixed windows let a burst at the end of
one window and the start of the next reach twice the limit). The price:
sustained throughput is at most ``k / (k + 1)`` of the limit (docs/limits.md).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

from costwatch.daemon.rules import BudgetRule, RateLimitRule, parse_duration
from costwatch.daemon.rules.windows import window_bounds
from costwatch.protocol import Grant, Limit, SliceRequest

__all__ = ["LeasePool", "Spend"]

STARVED_S = 1.0  # others keep handing back surplus this long after a holder's calls last did not fit
MAX_SUBWINDOWS = 10  # a rate limit's window is cut into at most this many steps ...
MIN_SUBWINDOW_S = 1.0  # ... each at least this long

# f(rule, window start, window end, now) -> recorded spend per group
Spend = Callable[[BudgetRule, datetime, datetime | None, datetime], dict[str, float]]
Limits = dict[str, tuple[Limit, BudgetRule | RateLimitRule]]


@dataclass
class _Lease:
    id: int
    window: str
    window_end: float  # epoch seconds (inf: a rolling window)
    span_s: float = 0.0  # a rate limit's whole window: its sub-window counts this long after it ends
    granted: float = 0.0
    consumed: float = 0.0
    expires_at: float = 0.0


class LeasePool:
    """Every live lease on the host; callers hold ``lock`` around ``expire``/``release``/``grant``."""

    def __init__(self, spend: Spend | None, timezone_name: str, counters: dict[str, int]) -> None:
        self.lock = threading.Lock()
        self._spend = spend
        self.tz = ZoneInfo(timezone_name)
        self.counters = counters
        self._leases: dict[tuple[str, str, str], _Lease] = {}  # (holder, limit id, group)
        # rate limits: (limit, group, sub-window) -> (used by ended leases, when it stops counting)
        self._used: dict[tuple[str, str, str], tuple[float, float]] = {}
        # (limit, group) -> (holder whose calls did not fit, until): the others hand back surplus
        self._starved: dict[tuple[str, str], tuple[str, float]] = {}
        self._next_id = 0
        # Fleet budgets (`fleet: true`): f(rule, group, window, recorded, outstanding, want) -> what
        # this host may use in all, leased from Postgres (costwatch.daemon.fleet.budgets). None: no
        # fleet mode, and a fleet budget grants nothing (fails closed).
        self.fleet_limit: Callable[[BudgetRule, str, str, float, float, float], float] | None = None

    def release(self, holder: str, slices: list[SliceRequest]) -> None:
        """The holder is exiting: take its last numbers, then end all its leases."""
        for s in slices:  # last numbers first: a rate limit keeps what was used
            lease = self._leases.get((holder, s.limit, s.group))
            if lease is not None and s.lease == lease.id:
                lease.consumed = max(lease.consumed, s.consumed)
        for key in [k for k in self._leases if k[0] == holder]:
            self._retire(key, self._leases.pop(key), expired=False)

    def grant(
        self,
        holder: str,
        s: SliceRequest,
        limits: Limits,
        now: float,
        spend_cache: dict[str, dict[str, float]],
    ) -> Grant:
        entry = limits.get(s.limit)
        key = (holder, s.limit, s.group)
        if entry is None:
            lease = self._leases.pop(key, None)
            if lease is not None:
                self._retire(key, lease, expired=False)
            return Grant(
                limit=s.limit,
                group=s.group,
                window="",
                granted=0,
                ttl_s=0,
                window_left_s=None,
                free=0,
                known=False,
            )
        limit, rule = entry
        window, left, start, end = self._window(rule, now)
        lease = self._leases.get(key)
        if lease is not None and lease.window != window:
            if s.lease == lease.id:  # the holder's last numbers for the window that ended
                lease.consumed = max(lease.consumed, s.consumed)
            self._retire(key, self._leases.pop(key), expired=False)
            lease = None
        if lease is None:
            self._next_id += 1
            window_end = now + left if left is not None else math.inf
            span = _span(rule) if isinstance(rule, RateLimitRule) else 0.0
            lease = self._leases[key] = _Lease(self._next_id, window, window_end, span)
        elif s.lease == lease.id:  # numbers of an older lease (expired meanwhile) mean nothing here
            lease.granted = min(lease.granted, max(s.granted, 0.0))
            lease.consumed = max(lease.consumed, s.consumed)
        lease.expires_at = now + limit.ttl_s
        free, holders = self._free(limit, rule, s, window, start, end, now, spend_cache)
        pool = (s.limit, s.group)
        starved = self._starved.get(pool)
        if starved is not None and starved[1] < now:
            del self._starved[pool]
            starved = None
        other_starving = starved is not None and starved[0] != holder
        # Fair share: one process may take 1/holders of what is free, or what a waiting call needs;
        # while another holder's calls are refused, only what a waiting call needs.
        share = 0.0 if other_starving else max(free, 0.0) / max(holders, 1)
        extra = min(max(s.want, 0.0), max(share, min(s.need, free)), max(free, 0.0))
        if limit.measure == "requests":
            extra = math.floor(extra)
        lease.granted += extra
        self.counters["granted" if extra > 0 else "refused"] += 1
        # No budget stranded: a holder whose calls do not fit, while the others' unused slices
        # would cover them, makes every other holder hand back what it does not use (at their
        # next renewal, <= 0.2 s); its calls ask again meanwhile.
        reclaim = max(lease.granted - lease.consumed, 0.0) if other_starving else 0.0
        contended = False
        if s.need > 0 and extra < s.need:
            shortfall = s.need - max(s.spare, 0.0) - extra
            # What the others hold beyond what they consumed: unused slices, and reservations of
            # calls in flight, which settle at or below their worst case.
            others = sum(
                max(other.granted - other.consumed, 0.0)
                for (h, lid, group), other in self._leases.items()
                if lid == s.limit and group == s.group and h != holder and other.window == window
            )
            contended = shortfall > 0 and others >= shortfall
            if contended:
                self._starved[pool] = (holder, now + STARVED_S)
                self.counters["reclaims"] += 1
        elif starved is not None and starved[0] == holder:
            del self._starved[pool]
        return Grant(
            reclaim=reclaim,
            contended=contended,
            limit=s.limit,
            group=s.group,
            window=window,
            granted=lease.granted,
            ttl_s=limit.ttl_s,
            window_left_s=left,
            free=max(free - extra, 0.0),
            lease=lease.id,
        )

    def _free(
        self,
        limit: Limit,
        rule: BudgetRule | RateLimitRule,
        s: SliceRequest,
        window: str,
        start: datetime | None,
        end: datetime | None,
        now: float,
        spend_cache: dict[str, dict[str, float]],
    ) -> tuple[float, int]:
        """(free amount, number of live leases) of the pool this slice draws from."""
        live = [
            lease
            for (_, lid, group), lease in self._leases.items()
            if lid == limit.id and group == s.group and lease.window == window
        ]
        if isinstance(rule, BudgetRule):
            if rule.name not in spend_cache:
                spend_cache[rule.name] = self._recorded(rule, start, end, now)
            recorded = spend_cache[rule.name].get(s.group, 0.0)
            outstanding = sum(max(lease.granted - lease.consumed, 0.0) for lease in live)
            limit_value = rule.limit
            if rule.fleet:
                fleet = self.fleet_limit
                limit_value = fleet(rule, s.group, window, recorded, outstanding, s.want) if fleet else 0.0
            return limit_value - recorded - outstanding, len(live)
        cap = float(rule.requests if limit.measure == "requests" else rule.tokens or 0)
        # Sliding: this sub-window and the k before it (any span of one window overlaps k + 1).
        current = int(window)
        counted = {str(i) for i in range(current - _subwindows(rule), current + 1)}
        used = sum(self._used.get((limit.id, s.group, w), (0.0, 0.0))[0] for w in counted)
        held = sum(
            max(lease.granted, lease.consumed)
            for (_, lid, group), lease in self._leases.items()
            if lid == limit.id and group == s.group and lease.window in counted
        )
        return cap - used - held, len(live)

    def _recorded(
        self, rule: BudgetRule, start: datetime | None, end: datetime | None, now: float
    ) -> dict[str, float]:
        if self._spend is None or start is None:
            return {}
        return self._spend(rule, start, end, datetime.fromtimestamp(now, tz=timezone.utc))

    def _window(
        self, rule: BudgetRule | RateLimitRule, now: float
    ) -> tuple[str, float | None, datetime | None, datetime | None]:
        """(window id, seconds left, start, end) of the window containing ``now``."""
        if isinstance(rule, RateLimitRule):
            step = _span(rule) / _subwindows(rule)
            index = math.floor(now / step)
            return str(index), (index + 1) * step - now, None, None
        tz = ZoneInfo(rule.timezone) if rule.timezone else self.tz
        start, end, window_id = window_bounds(rule, datetime.fromtimestamp(now, tz=timezone.utc), tz)
        left = end.timestamp() - now if end is not None else None
        return window_id, left, start, end

    def expire(self, now: float) -> None:
        """End the leases whose TTL passed (swept on each exchange: nothing runs in the background)."""
        for key in [k for k, lease in self._leases.items() if lease.expires_at < now]:
            self.counters["expired"] += 1
            self._retire(key, self._leases.pop(key), expired=True)
        if len(self._used) > 1_000:  # forget windows that are over: keep memory bounded
            for ukey in [k for k, (_, end) in self._used.items() if end < now]:
                del self._used[ukey]

    def _retire(self, key: tuple[str, str, str], lease: _Lease, expired: bool) -> None:
        """A lease ends; a budget's slice returns to the pool (its spend is in the database).

        A rate limit keeps what was used this window: what was reported on a release, and the
        whole grant when the holder vanished (it may have used it without saying so).
        """
        if "/" in key[1]:
            ukey = (key[1], key[2], lease.window)
            used = max(lease.granted, lease.consumed) if expired else lease.consumed
            self._used[ukey] = (self._used.get(ukey, (0.0, 0.0))[0] + used, lease.window_end + lease.span_s)

    def outstanding(self, limit_id: str, group: str) -> float:
        """Granted but not yet consumed, over live leases (tests and status)."""
        with self.lock:
            return sum(
                max(lease.granted - lease.consumed, 0.0)
                for (_, lid, g), lease in self._leases.items()
                if lid == limit_id and g == group
            )


def _span(rule: RateLimitRule) -> float:
    return parse_duration(rule.window).total_seconds()


def _subwindows(rule: RateLimitRule) -> int:
    """k: sub-windows per window, up to 10 and each at least a second (renewals come every 0.2 s)."""
    return max(1, min(MAX_SUBWINDOWS, math.floor(_span(rule) / MIN_SUBWINDOW_S)))
