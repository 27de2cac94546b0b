"""The limits thread's side of the lease exchange (``POST /v1/leases``) with the daemon.

Each exchange reports what was consumed, renews or shrinks every slice held, asks for what
blocked calls need and for the prices of new models, and applies the grants. Before
reporting a budget's consumption the thread flushes the emitter, so every reported dollar
is already in the daemon's database: the daemon counts a settled call either in the
recorded spend or in this lease, never in neither. Daemon unreachable: a slice that expired
is replaced by nothing — calls then pass (fail open) or are refused
(``COSTWATCH_FAIL_CLOSED``).

How often: every ``renew_s`` while slices are held, every ``idle_s`` while limits exist but
no call draws on them. With nothing to enforce the thread does not ask the daemon every
second: it exchanges when the daemon's state file (`costwatch.statefile`, rewritten when the
number of hard limits changes) says there are hard limits, checked with one ``stat`` every
``idle_s``, and every ``quiet_s`` in case that file is not where this process looks.
"""

from __future__ import annotations

import logging
import math
import os
import time

import msgspec

from costwatch import statefile
from costwatch.instrumentation.limits.slices import Slice
from costwatch.protocol import LeaseReply, LeaseRequest, SliceRequest

__all__ = ["LeaseExchange"]

log = logging.getLogger("costwatch.limits")

_reply_decoder = msgspec.json.Decoder(LeaseReply)


class LeaseExchange:
    """The exchange half of `Limiter` (a mixin: the call path reads the state it writes directly)."""

    renew_s = 0.2  # exchange this often while slices are held
    idle_s = 1.0  # this often while limits exist but hold no slice (and how often to stat the state file)
    quiet_s = 30.0  # and at least this often with nothing to enforce (the state file brings news sooner)
    horizon_s = 1.0  # a slice covers about this long at the recent rate
    min_gap_s = 0.01  # at least this long between two exchanges
    window_guard_s = 0.1  # stop admitting this long before a rate window ends (the call is still in flight)
    flush_timeout_s = 2.0
    read_timeout_s = 5.0

    def _run(self) -> None:
        while not self._stop:
            try:
                self._exchange()
            except Exception as exc:  # our bug must not kill the thread
                self.counters["exchange_failures"] += 1
                log.debug("lease exchange failed: %r", exc)
            started = time.monotonic()
            if self._slices or self._limits or not self._known:
                woken = self._wake.wait(self.renew_s if self._slices else self.idle_s)
            else:
                woken = self._wait_quietly()
            if woken:
                self._wake.clear()
                gap = self.min_gap_s - (time.monotonic() - started)
                if gap > 0:  # calls asking again while surplus comes back: not a busy loop
                    time.sleep(gap)

    def _wait_quietly(self) -> bool:
        """Nothing to enforce: wait until woken (True), hard limits are announced or ``quiet_s`` passed."""
        until = time.monotonic() + self.quiet_s
        while not self._stop:
            left = until - time.monotonic()
            if left <= 0:
                return False
            if self._wake.wait(min(self.idle_s, left)):
                return True
            if self._limits_announced():
                return False
        return False

    def _limits_announced(self) -> bool:
        """The daemon's state file changed since the last look and counts hard limits."""
        stamp = statefile.stamp(self._state_path)
        if stamp is None or stamp == self._state_stamp:
            return False
        self._state_stamp = stamp
        state = statefile.read(self._state_path)
        return state is not None and state.hard_limits > 0

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
        slices: list[SliceRequest] = []
        sent: list[tuple[Slice, float]] = []
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
                    SliceRequest(
                        limit=piece.limit.id,
                        group=piece.group,
                        scope=piece.scope,
                        window=piece.window,
                        lease=piece.lease,
                        granted=piece.granted,
                        consumed=consumed,
                        want=want,
                        need=piece.need if not idle else 0.0,
                        spare=max(piece.available, 0.0),
                    )
                )
                sent.append((piece, consumed))
                piece.need = 0.0
            models = sorted(self._wanted_prices - set(self._prices))[:64]
        t_sent = time.monotonic()
        try:
            reply = self._post(LeaseRequest(holder=self.holder, app=self.app, slices=slices, models=models))
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

    def _size(self, piece: Slice, now: float, elapsed: float) -> tuple[float, float]:
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

    def _apply(self, reply: LeaseReply, sent: list[tuple[Slice, float]], t_sent: float) -> None:
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
                    fresh = Slice(ids[grant.limit], piece.group, piece.scope)
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

    def _post(self, request: LeaseRequest, timeout: float | None = None) -> LeaseReply:
        body = msgspec.json.encode(request)
        token = self._settings.resolved_token()
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        status, data = self._conn.request("POST", "/v1/leases", body, headers, timeout or self.read_timeout_s)
        if status == 404:  # a daemon without leases: nothing to enforce
            return LeaseReply()
        if status != 200:
            raise OSError(f"lease exchange answered {status}: {data[:200]!r}")
        return _reply_decoder.decode(data)

    def _release(self, timeout: float) -> None:
        """Hand every slice back (the process is exiting); a slice not handed back expires after its TTL."""
        with self._lock:
            slices = [
                SliceRequest(limit=p.limit.id, group=p.group, lease=p.lease, consumed=p.consumed())
                for p in self._slices.values()
            ]
        self._post(
            LeaseRequest(holder=self.holder, app=self.app, release=True, slices=slices), timeout=timeout
        )
