"""The app side of hard budgets and rate limits: leases held locally, reservations per call.

The daemon (`costwatch.daemon.leases`) hands this process *slices* of each
pool (a hard budget in USD or tokens, a rate limit's requests or tokens per
window). Before a call leaves, `Limiter.admit` reserves the call's worst case
from every slice that covers it — input bounded per request shape
(`costwatch.instrumentation.bounds`: body bytes for text, formulas for media),
output = ``max_tokens`` / ``max_completion_tokens`` / ``max_output_tokens``
(the rule's ``default_max_tokens`` when the request sets none), priced at the
model's per-token rates that the daemon sends. When usage is known (on the
emitter thread, in `LimitedCallRecord.to_event`), the reservation is settled
with the real amount. A call whose worst case does not fit waits for one lease
exchange and is then refused with `BudgetExhausted` / `RateLimited` (or, for
``on_exceed: wait``, sleeps until the window rolls over, up to ``max_wait``).

Hot path: one attribute check when no limit applies; otherwise a few regex
searches on the body and one short lock around float counters. All I/O runs
on this module's own thread (``costwatch-limits``), which renews slices,
reports what was consumed and sizes the next slice from the recent rate.

Before reporting a budget's consumption the thread flushes the emitter, so
every reported dollar is already in the daemon's database: the daemon counts
a settled call either in the recorded spend or in this lease, never in
neither. Daemon unreachable: a slice that expired is replaced by nothing —
calls then pass (fail open) or are refused (``COSTWATCH_FAIL_CLOSED``).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import math
import os
import re
import socket
import threading
import time
import uuid
import weakref
from typing import Any

import msgspec

from costwatch.connection import DaemonConnection
from costwatch.errors import BudgetExhausted, CallBlocked, RateLimited
from costwatch.instrumentation import exit_budget
from costwatch.instrumentation.bounds import input_bound
from costwatch.instrumentation.killswitch import sdk_error
from costwatch.instrumentation.providers import AZURE_OPENAI, azure_deployment
from costwatch.instrumentation.record import CallRecord, guard
from costwatch.protocol import scope_key

__all__ = ["LimitedCallRecord", "Limiter", "Ticket"]

log = logging.getLogger("costwatch.limits")

_MODEL_RE = re.compile(rb'"model"\s*:\s*"([^"\\]{1,256})"')
_USER_RE = re.compile(rb'"(?:user|user_id)"\s*:\s*"([^"\\]{1,256})"')
_MAX_RE = re.compile(rb'"max(?:_completion|_output)?_tokens"\s*:\s*(\d{1,9})')
CACHE_WRITE_FACTOR = 2  # Anthropic bills a 1-hour cache write at 2x the input rate (5-minute: 1.25x)


class _Limit(msgspec.Struct, kw_only=True):
    id: str
    rule: str
    kind: str
    measure: str
    scope: dict[str, str] = {}
    per: list[str] = []
    on_exceed: str = "block"
    max_wait_s: float = 0.0
    default_max_tokens: int = 4096
    reserve: bool = True
    ttl_s: float = 10.0


class _Grant(msgspec.Struct, kw_only=True):
    limit: str
    group: str
    window: str
    granted: float
    ttl_s: float
    window_left_s: float | None
    free: float
    known: bool = True
    lease: int = 0
    reclaim: float = 0.0
    contended: bool = False


class _Reply(msgspec.Struct, kw_only=True):
    limits: list[_Limit] = []
    grants: list[_Grant] = []
    prices: dict[str, list[float] | None] = {}


_reply_decoder = msgspec.json.Decoder(_Reply)


class _Slice:
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

    def __init__(self, limit: _Limit, group: str, scope: dict[str, str]) -> None:
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


class Ticket:
    """The reservations of one admitted call; settled once, with the real amounts."""

    __slots__ = ("_limiter", "_once", "items", "prices")

    def __init__(
        self, limiter: Limiter, items: list[tuple[_Slice, float]], prices: list[float] | None
    ) -> None:
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


class _Call:
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
        self, limiter: Limiter, app: str, provider: str, model: str | None, user: str | None, body: bytes
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


class Limiter:
    """One per process: the slices, the prices, and the thread that talks to the daemon."""

    renew_s = 0.2  # exchange this often while slices are held
    idle_s = 1.0  # and this often otherwise (to learn about new rules)
    horizon_s = 1.0  # a slice covers about this long at the recent rate
    exchange_wait_s = 2.0  # a call waits at most this long for an exchange it needs
    min_gap_s = 0.01  # at least this long between two exchanges
    window_guard_s = 0.1  # stop admitting this long before a rate window ends (the call is still in flight)
    flush_timeout_s = 2.0
    connect_timeout_s = 0.5
    read_timeout_s = 5.0

    def __init__(self, emitter: Any, app: str) -> None:
        settings = emitter.settings
        self.emitter = emitter
        self.app = app
        self.fail_closed = bool(settings.fail_closed)
        self._settings = settings
        self.active = True  # until the daemon says there is nothing to enforce
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._limits: list[_Limit] = []
        self._known = False  # the limits are known (from the daemon's state file or an exchange)
        self._exchanged = False  # an exchange succeeded: there may be slices to hand back
        self._overdue = False  # a call waited the whole exchange_wait_s for the first exchange
        self._reachable = False
        self._started = 0  # exchanges begun / completed (calls wait for one that saw their need)
        self._completed = 0
        self._slices: dict[tuple[str, str], _Slice] = {}
        self._prices: dict[str, list[float] | None] = {}
        self._wanted_prices: set[str] = set()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._conn = DaemonConnection(settings.url, self.connect_timeout_s)
        self._pid = os.getpid()
        self._last_exchange = time.monotonic()
        self.holder = f"{socket.gethostname()}:{self._pid}:{uuid.uuid4().hex[:8]}"
        self.counters = {"exchanges": 0, "exchange_failures": 0, "blocked": 0, "waited": 0}
        if getattr(emitter, "hard_limits", None) == 0:
            # The daemon's state file says there is nothing to enforce (or there is no file): no
            # call waits for the first exchange, which still runs and brings any limit later.
            self._known = True
            self.active = False
        _live.add(self)

    @classmethod
    def for_emitter(cls, emitter: Any, app: str) -> Limiter | None:
        """Only with the real emitter (it has settings and flush()): doubles in tests get none."""
        if getattr(emitter, "settings", None) is None or not hasattr(emitter, "flush"):
            return None
        limiter = cls(emitter, app)
        limiter.start()
        return limiter

    # -- lifecycle --------------------------------------------------------------------------

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
            with self._lock:
                slices = [
                    {"limit": p.limit.id, "group": p.group, "lease": p.lease, "consumed": p.consumed()}
                    for p in self._slices.values()
                ]
            with contextlib.suppress(Exception):
                payload = {"holder": self.holder, "app": self.app, "release": True, "slices": slices}
                self._post(payload, timeout=left)
        self._conn.close()

    # -- hot path -----------------------------------------------------------------------------

    def prepare(self, provider: str, request: Any, attribution: Any) -> _Call | None:
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
        return _Call(self, self.app, provider, model, user, body)

    def admit(self, call: _Call) -> Ticket | float | CallBlocked:
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
        wanted: list[tuple[_Slice, float]] = []
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
                        piece = self._slices[(limit.id, group)] = _Slice(limit, group, scope)
                    amount, prices, missing = self._worst(limit, call, prices)
                    if missing is not None:
                        return self._missing_price(call, limit, missing, now)
                    wanted.append((piece, amount))
            if not wanted:
                return Ticket(self, [], None)
            failing: _Slice | None = None
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
        self, call: _Call, piece: _Slice, amount: float, now: float, reachable: bool
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

    def _error(self, call: _Call, piece: _Slice, amount: float, reachable: bool) -> CallBlocked:
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

    def _missing_price(self, call: _Call, limit: _Limit, key: str, now: float) -> float | CallBlocked:
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

    def _worst(
        self, limit: _Limit, call: _Call, prices: list[float] | None
    ) -> tuple[float, list[float] | None, str | None]:
        """(worst-case amount, prices, missing price key) of a call for one limit."""
        if limit.measure == "requests":
            return 1.0, prices, None
        if limit.measure == "usd" and prices is None:
            key = f"{call.provider}:{call.model}"
            prices = self._prices.get(key)
            if prices is None:  # settlement needs the price even without reservations
                return 0.0, None, key
        if not limit.reserve:
            return 0.0, prices, None
        match = _MAX_RE.search(call.body)
        out = int(match.group(1)) if match else limit.default_max_tokens
        inp = call.inp
        if inp < 0:
            inp = call.inp = input_bound(call.body, call.provider, call.model)
        if limit.measure == "tokens":
            return float(inp + out), prices, None
        assert prices is not None
        if b'"cache_control"' in call.body:  # every input token may be a cache write (1-hour: 2x input)
            inp *= CACHE_WRITE_FACTOR
        return inp * prices[0] + out * prices[1] + prices[2], prices, None

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
                        actual = (inp + _write_premium(event)) * p[0] + out * p[1] + p[2]
                    else:
                        actual = amount
                    piece.reserved = max(piece.reserved - amount, 0.0)
                    piece.settled += actual
                    if actual > amount:  # no reservation (reserve: false) or an estimate too low
                        piece.demand += actual - amount
                        piece.last_amount = max(piece.last_amount, actual)
        except Exception:
            guard.report("limits.settle")

    # -- the limits thread ------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop:
            try:
                self._exchange()
            except Exception as exc:  # our bug must not kill the thread
                self.counters["exchange_failures"] += 1
                log.debug("lease exchange failed: %r", exc)
            interval = self.renew_s if self._slices else self.idle_s
            started = time.monotonic()
            if self._wake.wait(interval):
                self._wake.clear()
                gap = self.min_gap_s - (time.monotonic() - started)
                if gap > 0:  # calls asking again while surplus comes back: not a busy loop
                    time.sleep(gap)

    def _exchange(self) -> None:
        """Report consumption, renew or shrink slices, ask for what blocked calls need."""
        if os.getpid() != self._pid:
            return
        with self._lock:
            self._started += 1
            seq = self._started
            snapshot = list(self._slices.values())
            settled_now = {id(p): p.settled for p in snapshot if p.limit.kind == "budget"}
        budget_news = any(p.settled > p.reported for p in snapshot if p.limit.kind == "budget")
        delivered = True
        if budget_news:
            spooled = self.emitter.stats().get("spooled", 0)
            delivered = bool(self.emitter.flush(self.flush_timeout_s))
            delivered = delivered and self.emitter.stats().get("spooled", 0) == spooled
        now = time.monotonic()
        elapsed, self._last_exchange = max(now - self._last_exchange, 1e-3), now
        slices: list[dict[str, Any]] = []
        sent: list[tuple[_Slice, float]] = []
        with self._lock:
            for piece in snapshot:
                if piece.limit.kind == "budget":
                    consumed = settled_now[id(piece)] if delivered else piece.reported
                else:
                    consumed = piece.consumed()
                idle = now - piece.last_used > 30 and piece.reserved == 0 and piece.need == 0
                if idle:  # give the slice back and forget it
                    self._slices.pop((piece.limit.id, piece.group), None)
                    piece.granted = piece.settled + piece.reserved  # keep undelivered spend counted
                    want = 0.0
                else:
                    want, release = self._size(piece, now, elapsed)
                    piece.granted -= release
                slices.append(
                    {
                        "limit": piece.limit.id,
                        "group": piece.group,
                        "scope": piece.scope,
                        "window": piece.window,
                        "lease": piece.lease,
                        "granted": piece.granted,
                        "consumed": consumed,
                        "want": want,
                        "need": piece.need if not idle else 0.0,
                        "spare": max(piece.available, 0.0),
                    }
                )
                sent.append((piece, consumed))
                piece.need = 0.0
            models = sorted(self._wanted_prices - set(self._prices))[:64]
        t_sent = time.monotonic()
        try:
            reply = self._post({"holder": self.holder, "app": self.app, "slices": slices, "models": models})
        except Exception:
            with self._lock:
                self._reachable = False
                self._completed = seq
            self.counters["exchange_failures"] += 1
            return
        self.counters["exchanges"] += 1
        with self._lock:
            self._apply(reply, sent, t_sent)
            self._reachable = True
            self._completed = seq

    def _size(self, piece: _Slice, now: float, elapsed: float) -> tuple[float, float]:
        """(want, release): cover about ``horizon_s`` at the recent rate, plus what calls wait for."""
        piece.rate = 0.5 * piece.rate + 0.5 * (piece.demand / elapsed)
        piece.demand = 0.0
        target = max(piece.rate * self.horizon_s, 2 * piece.last_amount)
        available = piece.available
        if now >= piece.valid_until:  # a new window or an expired lease: the daemon restarts it at 0
            available = 0.0
        want = max(target + piece.need - max(available, 0.0), 0.0)
        release = 0.0
        if piece.need == 0 and available > 3 * target and now < piece.valid_until:
            release = available - target
        if piece.limit.measure != "usd":
            want = float(math.ceil(want))
        return want, release

    def _apply(self, reply: _Reply, sent: list[tuple[_Slice, float]], t_sent: float) -> None:
        self._limits = reply.limits
        self._known = True
        self._exchanged = True
        self.active = bool(reply.limits)
        self._prices.update(reply.prices)
        self._wanted_prices -= set(reply.prices)
        ids = {limit.id: limit for limit in reply.limits}
        by_key = {(g.limit, g.group): g for g in reply.grants}
        for piece, consumed in sent:
            grant = by_key.get((piece.limit.id, piece.group))
            key = (piece.limit.id, piece.group)
            if grant is None or not grant.known or grant.limit not in ids:
                self._slices.pop(key, None)
                continue
            if grant.lease != piece.lease:
                if piece.lease:  # a new window or a new lease: a fresh slice; tickets keep the old one
                    fresh = _Slice(ids[grant.limit], piece.group, piece.scope)
                    fresh.rate, fresh.last_used = piece.rate, piece.last_used
                    if self._slices.get(key) is piece:
                        self._slices[key] = fresh
                    piece = fresh
                piece.window = grant.window
                piece.lease = grant.lease
                consumed = 0.0
            piece.limit = ids[grant.limit]
            piece.granted = grant.granted
            piece.reported = consumed
            piece.free = grant.free
            piece.contended = grant.contended
            if grant.reclaim > 0:  # another process's calls wait: hand back what is unused, now
                back = min(grant.reclaim, max(piece.available, 0.0))
                if back > 0:
                    piece.granted -= back
                    self._wake.set()
            expiry = t_sent + grant.ttl_s * 0.8  # the daemon's clock started later: stay inside it
            if grant.window_left_s is not None:
                piece.window_end = t_sent + grant.window_left_s
                # A call admitted at the very end of a window reaches the provider a little later.
                guard_s = min(self.window_guard_s, grant.window_left_s)
                expiry = min(expiry, piece.window_end - guard_s)
            else:
                piece.window_end = math.inf
            piece.valid_until = expiry

    def _post(self, payload: dict[str, Any], timeout: float | None = None) -> _Reply:
        body = msgspec.json.encode(payload)
        token = self._settings.resolved_token()
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        status, data = self._conn.request("POST", "/v1/leases", body, headers, timeout or self.read_timeout_s)
        if status == 404:  # a daemon without leases: nothing to enforce
            return _Reply()
        if status != 200:
            raise OSError(f"lease exchange answered {status}: {data[:200]!r}")
        return _reply_decoder.decode(data)

    def stats(self) -> dict[str, Any]:
        """Counters and the slices held (tests, diagnostics)."""
        with self._lock:
            slices = {
                f"{k[0]}|{k[1]}": {
                    "granted": p.granted,
                    "reserved": p.reserved,
                    "settled": p.settled,
                    "free": p.free,
                    "window": p.window,
                }
                for k, p in self._slices.items()
            }
        return {**self.counters, "known": self._known, "reachable": self._reachable, "slices": slices}


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


def _write_premium(event: Any) -> float:
    """Cache writes cost more than input (5-minute: 1.25x, 1-hour: 2x): the extra, in input tokens."""
    total = getattr(event, "cache_write_tokens", None) or 0
    if not total:
        return 0.0
    hour = getattr(event, "cache_write_1h_tokens", None) or 0
    five = getattr(event, "cache_write_5m_tokens", None)
    five = total - hour if five is None else five
    return 0.25 * five + 1.0 * max(total - five, 0)  # unsplit writes: at the 1-hour premium


def _amount(value: float, measure: str) -> str:
    if measure == "usd":
        return f"${value:,.4f}"
    return f"{value:,.0f} {measure}"


_live: weakref.WeakSet[Limiter] = weakref.WeakSet()


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
            limiter.holder = f"{socket.gethostname()}:{limiter._pid}:{uuid.uuid4().hex[:8]}"


def _release_all_at_exit() -> None:
    """Hand slices back on a normal exit (a crash is covered by the lease TTL), within the exit budget."""
    for limiter in list(_live):
        with contextlib.suppress(Exception):
            limiter.close(timeout=exit_budget.remaining(limiter._settings.exit_flush_timeout_s))


atexit.register(_release_all_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
