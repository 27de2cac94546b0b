"""The call path of hard limits: admission before a call leaves, settlement when its usage is known.

`Limiter.prepare` reads a request's model and user once (nothing more when no limit can
apply); `Limiter.admit` reserves the call's worst case (`sizing.worst`) from every slice
that covers it, under one short lock around float counters. A call whose worst case does
not fit waits for one lease exchange and is then refused with `BudgetExhausted` /
`RateLimited` (or, for ``on_exceed: wait``, sleeps until the window rolls over, up to
``max_wait``). `Limiter.settle` runs on the emitter thread (`LimitedCallRecord.to_event`)
and swaps each reservation for the real amount. No I/O here: the slices come from the
limits thread (`exchange`).
"""

from __future__ import annotations

import math
import os
import re
import threading
import time
from typing import Any

from costwatch import statefile
from costwatch.connection import DaemonConnection
from costwatch.errors import BudgetExhausted, CallBlocked, RateLimited
from costwatch.instrumentation.killswitch import sdk_error
from costwatch.instrumentation.limits.exchange import LeaseExchange
from costwatch.instrumentation.limits.lifecycle import Lifecycle, new_holder, track
from costwatch.instrumentation.limits.sizing import worst, write_premium
from costwatch.instrumentation.limits.slices import Call, Slice, Ticket
from costwatch.instrumentation.providers import AZURE_OPENAI, azure_deployment
from costwatch.instrumentation.record import CallRecord, guard
from costwatch.protocol import Limit, scope_key

__all__ = ["LimitedCallRecord", "Limiter", "admit_async", "admit_sync"]

_MODEL_RE = re.compile(rb'"model"\s*:\s*"([^"\\]{1,256})"')
_USER_RE = re.compile(rb'"(?:user|user_id)"\s*:\s*"([^"\\]{1,256})"')


class LimitedCallRecord(CallRecord):
    """A `CallRecord` whose reservations are settled when its event is built (emitter thread)."""

    __slots__ = ("gate", "ticket")

    def to_event(self) -> Any:
        event = None
        try:
            event = super().to_event()
            return event
        finally:
            ticket = self.ticket if hasattr(self, "ticket") else None
            if ticket is not None:
                ticket.settle(event)


class Limiter(Lifecycle, LeaseExchange):
    """One per process: the slices, the prices, and the thread that talks to the daemon."""

    exchange_wait_s = 2.0  # a call waits at most this long for an exchange it needs
    connect_timeout_s = 0.5

    def __init__(self, emitter: Any, app: str) -> None:
        settings = emitter.settings
        self.emitter = emitter
        self.app = app
        self.fail_closed = bool(settings.fail_closed)
        self._settings = settings
        self.active = True  # until the daemon says there is nothing to enforce
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._limits: list[Limit] = []
        self._known = False  # the limits are known (from the daemon's state file or an exchange)
        self._exchanged = False  # an exchange succeeded: there may be slices to hand back
        self._overdue = False  # a call waited the whole exchange_wait_s for the first exchange
        self._reachable = False
        self._started = 0  # exchanges begun / completed (calls wait for one that saw their need)
        self._completed = 0
        self._slices: dict[tuple[str, str], Slice] = {}
        self._prices: dict[str, list[float] | None] = {}
        self._wanted_prices: set[str] = set()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._conn = DaemonConnection(settings.url, self.connect_timeout_s)
        self._pid = os.getpid()
        self._last_exchange = time.monotonic()
        self.holder = new_holder()
        self.counters = {"exchanges": 0, "exchange_failures": 0, "blocked": 0, "waited": 0}
        if getattr(emitter, "hard_limits", None) == 0:
            # The daemon's state file says there is nothing to enforce (or there is no file): no
            # call waits for the first exchange, which still runs and brings any limit later.
            self._known = True
            self.active = False
        # Where the daemon announces hard limits (new ones bring an exchange when none are known).
        self._state_path = statefile.path_for(settings.state_dir, self._conn.port)
        self._state_stamp = statefile.stamp(self._state_path)
        track(self)

    @classmethod
    def for_emitter(cls, emitter: Any, app: str) -> Limiter | None:
        """Only with the real emitter (it has settings and flush()): doubles in tests get none."""
        if getattr(emitter, "settings", None) is None or not hasattr(emitter, "flush"):
            return None
        limiter = cls(emitter, app)
        limiter.start()
        return limiter

    # -- hot path -----------------------------------------------------------------------------

    def prepare(self, provider: str, request: Any, attribution: Any) -> Call | None:
        """Read model, user and body once; None when no limit can apply (nothing to do)."""
        if self._thread is None:  # a forked child: its own thread, started on first use
            self.start()
        limits = self._limits
        if self._known and not limits:
            return None
        try:
            body = request.content or b""
        except Exception:
            body = b""
        match = _MODEL_RE.search(body)
        model = match.group(1).decode("utf-8", "replace") if match else None
        if model is None and provider == AZURE_OPENAI:
            model = azure_deployment(request.url.path)
        user = attribution.user if attribution is not None else None
        if user is None:
            match = _USER_RE.search(body)
            user = match.group(1).decode("utf-8", "replace") if match else None
        return Call(self, self.app, provider, model, user, body)

    def admit(self, call: Call) -> Ticket | float | CallBlocked:
        """A ticket (go), seconds to sleep before asking again, or the error to raise."""
        now = time.monotonic()
        if not self._known:
            if self._completed == 0 and not self._overdue:
                if now - call.started < self.exchange_wait_s:
                    self._wake.set()  # the first exchange has not finished: wait for it (once per process)
                    return 0.005
                self._overdue = True  # a hung daemon: later calls do not wait for it either
            return Ticket(self, [], None)  # never heard from the daemon: the kill switch's fail-closed rules
        values = {"app": call.app, "provider": call.provider, "model": call.model, "user": call.user}
        wanted: list[tuple[Slice, float]] = []
        prices: list[float] | None = None
        with self._lock:
            for limit in self._limits:
                if any(values.get(k) != v for k, v in limit.scope.items()):
                    continue
                scope = dict(limit.scope)
                for key in limit.per:
                    value = values.get(key)
                    if value is None:
                        break
                    scope[key] = value
                else:
                    group = scope_key(scope)  # the daemon groups by the same text
                    piece = self._slices.get((limit.id, group))
                    if piece is None:
                        piece = self._slices[(limit.id, group)] = Slice(limit, group, scope)
                    amount, prices, missing = worst(limit, call, prices, self._prices)
                    if missing is not None:
                        return self._missing_price(call, limit, missing, now)
                    wanted.append((piece, amount))
            if not wanted:
                return Ticket(self, [], None)
            failing: Slice | None = None
            failing_amount = 0.0
            for piece, amount in wanted:
                fits = piece.available >= amount if amount > 0 else piece.available > 0
                if now >= piece.valid_until or not fits:
                    failing, failing_amount = piece, amount
                    break
            if failing is None:
                for piece, amount in wanted:
                    piece.reserved += amount
                    piece.demand += amount
                    piece.last_used = now
                    piece.last_amount = amount
                return Ticket(self, wanted, prices)
            if (
                failing.valid_until
                <= now
                < failing.window_end
                <= failing.valid_until + self.window_guard_s + 1e-6
            ):
                # The last moments of a rate window, where no slice is used (a call admitted now
                # would reach the provider in the next one): wait for the new window. Asking for
                # more here would only pile this window's pool onto this process.
                return failing.window_end - now + 0.001
            failing.last_amount = max(failing.last_amount, failing_amount)
            if (
                call.target >= 0
                and self._completed >= call.target
                and (failing.free > failing_amount or failing.contended)
            ):
                call.target = -1  # the pool has room (or others are handing surplus back): ask again
            if call.target < 0 or self._completed < call.target:
                if call.target < 0:
                    call.target = self._started + 1
                    failing.need += max(failing_amount, 1e-9)
                waiting_for_exchange = True
            else:
                waiting_for_exchange = False
            reachable = self._reachable
        if waiting_for_exchange:
            self._wake.set()
            if now - call.started < self.exchange_wait_s:
                return 0.002
            # No answer in time. A daemon that answers but is slow gets no benefit of the doubt:
            # only a failed exchange (unreachable) opens the fail-open path below.
        if not reachable and now >= failing.valid_until and not self.fail_closed:
            return Ticket(self, [], None)  # fail open: the daemon cannot say no
        return self._refuse(call, failing, failing_amount, now, reachable)

    def _refuse(
        self, call: Call, piece: Slice, amount: float, now: float, reachable: bool
    ) -> float | CallBlocked:
        limit = piece.limit
        if limit.on_exceed == "wait" and reachable:
            if call.deadline is None:
                call.deadline = now + limit.max_wait_s
                self.counters["waited"] += 1
            left = call.deadline - now
            if left > 0:
                call.target = -1  # ask again after the sleep
                until_roll = piece.window_end - now if piece.free <= 0 and piece.window_end > now else 0.05
                return min(left, max(until_roll, 0.005))
        self.counters["blocked"] += 1
        return self._error(call, piece, amount, reachable)

    def _error(self, call: Call, piece: Slice, amount: float, reachable: bool) -> CallBlocked:
        limit = piece.limit
        left = max(piece.available, 0.0) + (max(piece.free, 0.0) if math.isfinite(piece.free) else 0.0)
        where = piece.group
        if not reachable:
            reason = f"the costwatch daemon is unreachable and COSTWATCH_FAIL_CLOSED=1 is set ({limit.rule})"
        else:
            reason = limit.rule
        if limit.kind == "budget":
            message = (
                f"costwatch hard budget {limit.rule!r} ({where}) refused this call: "
                f"{_amount(left, limit.measure)} left in the window, this call may cost up to "
                f"{_amount(amount, limit.measure)}" + (f" (model {call.model})" if call.model else "") + "."
            )
            if not reachable:
                message = f"costwatch refused this call: {reason}."
            error = sdk_error(BudgetExhausted, message, scope=piece.scope, reason=reason)
        else:
            message = (
                f"costwatch rate limit {limit.rule!r} ({where}) refused this call: "
                f"{limit.measure} per window used up ({_amount(left, limit.measure)} left, "
                f"this call needs {_amount(amount, limit.measure)})."
            )
            if not reachable:
                message = f"costwatch refused this call: {reason}."
            error = sdk_error(RateLimited, message, scope=piece.scope, reason=reason)
        error.rule = limit.rule  # type: ignore[attr-defined]
        error.remaining = left  # type: ignore[attr-defined]
        error.unit = limit.measure  # type: ignore[attr-defined]
        return error

    def _missing_price(self, call: Call, limit: Limit, key: str, now: float) -> float | CallBlocked:
        """A USD budget needs the model's price: ask the daemon (once), refuse if it has none."""
        if key not in self._prices:
            self._wanted_prices.add(key)
            self._wake.set()
            if now - call.started < self.exchange_wait_s:
                return 0.002
        if not self._reachable and not self.fail_closed:
            return Ticket(self, [], None)
        self.counters["blocked"] += 1
        message = (
            f"costwatch hard budget {limit.rule!r} refused this call: no price is known for model "
            f"{call.model!r} ({call.provider}), so its cost cannot be bounded; add a price override"
        )
        error = sdk_error(BudgetExhausted, message, scope=dict(limit.scope), reason=limit.rule)
        error.rule = limit.rule  # type: ignore[attr-defined]
        error.remaining = None  # type: ignore[attr-defined]
        return error

    # -- emitter thread: settlement ------------------------------------------------------

    def settle(self, ticket: Ticket, event: Any) -> None:
        """Swap each reservation for the real amount (the worst case when usage is unknown)."""
        try:
            errored = event is None or event.error_class is not None
            inp = getattr(event, "input_tokens", None)
            out = getattr(event, "output_tokens", None)
            known = inp is not None and out is not None
            with self._lock:
                for piece, amount in ticket.items:
                    measure = piece.limit.measure
                    if measure == "requests":
                        actual = 1.0
                    elif not known:
                        actual = 0.0 if errored and event is not None else amount
                    elif measure == "tokens":
                        actual = float(inp + out)
                    elif ticket.prices is not None:
                        p = ticket.prices
                        actual = (inp + write_premium(event)) * p[0] + out * p[1] + p[2]
                    else:
                        actual = amount
                    piece.reserved = max(piece.reserved - amount, 0.0)
                    piece.settled += actual
                    if actual > amount:  # no reservation (reserve: false) or an estimate too low
                        piece.demand += actual - amount
                        piece.last_amount = max(piece.last_amount, actual)
        except Exception:
            guard.report("limits.settle")


def admit_sync(record: LimitedCallRecord) -> CallBlocked | None:
    """Admit a call from a sync ``send``: may sleep (``on_exceed: wait``); returns the error to raise."""
    try:
        gate = record.gate
        outcome = gate.limiter.admit(gate)
        while isinstance(outcome, float):
            time.sleep(outcome)
            outcome = gate.limiter.admit(gate)
    except Exception:
        guard.report("limits.admit")
        return None
    return _outcome(record, outcome)


async def admit_async(record: LimitedCallRecord) -> CallBlocked | None:
    """The same from an async ``send``: sleeps with asyncio, never blocking the event loop."""
    import asyncio

    try:
        gate = record.gate
        outcome = gate.limiter.admit(gate)
        while isinstance(outcome, float):
            await asyncio.sleep(outcome)
            outcome = gate.limiter.admit(gate)
    except Exception:
        guard.report("limits.admit")
        return None
    return _outcome(record, outcome)


def _outcome(record: LimitedCallRecord, outcome: Ticket | CallBlocked) -> CallBlocked | None:
    if isinstance(outcome, Ticket):
        if outcome.items:
            record.ticket = outcome
        return None
    record.blocked = True
    record.block_reason = str(outcome)
    record.finish("blocked")
    return outcome


def _amount(value: float, measure: str) -> str:
    if measure == "usd":
        return f"${value:,.4f}"
    return f"{value:,.0f} {measure}"
