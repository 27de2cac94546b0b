"""The lease authority: hard budgets and rate limits shared by every process on the host.

Checking a budget against spend already recorded lets every call in flight
cross the limit. Here each instrumented process instead holds a *lease*: a
slice of what is left, granted by this module, from which it reserves each
call's worst case before the call leaves (`costwatch.instrumentation.limits`).
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

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import msgspec
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from costwatch.daemon.auth import CHALLENGE, authorized
from costwatch.daemon.rules import BudgetRule, RateLimitRule, RuleError, RuleSet, load_rules, parse_duration
from costwatch.daemon.rules.windows import budget_values, window_bounds
from costwatch.events import UsageEvent

if TYPE_CHECKING:
    from costwatch.daemon.scheduler import RuleService
    from costwatch.daemon.store import Store
    from costwatch.pricing import Pricer
    from costwatch.settings import DaemonSettings

__all__ = ["LeaseRequest", "LeaseService", "Limit"]

log = logging.getLogger("costwatch.leases")

MAX_BODY = 1024 * 1024
_PROBE_TOKENS = 10_000_000  # large enough to reach the top price tier: worst-case rates
STARVED_S = 1.0  # others keep handing back surplus this long after a holder's calls last did not fit
MAX_SUBWINDOWS = 10  # a rate limit's window is cut into at most this many steps ...
MIN_SUBWINDOW_S = 1.0  # ... each at least this long


# -- wire shapes (the client in costwatch.instrumentation.limits mirrors them) ----------------


class Limit(msgspec.Struct, kw_only=True):
    """One pool a call may draw from: a hard budget, or a rate limit's requests or tokens."""

    id: str  # "<rule>" for budgets, "<rule>/requests" | "<rule>/tokens" for rate limits
    rule: str
    kind: str  # budget | rate_limit
    measure: str  # usd | tokens | requests
    scope: dict[str, str] = {}
    per: list[str] = []
    on_exceed: str = "block"  # block | wait
    max_wait_s: float = 0.0
    default_max_tokens: int = 4096
    reserve: bool = True
    ttl_s: float = 10.0


class SliceRequest(msgspec.Struct, kw_only=True):
    limit: str
    group: str  # scope_key of the rule scope plus the `per` values, e.g. "user=alice"
    scope: dict[str, str] = {}
    window: str = ""  # the window the client's numbers belong to ("" = none yet)
    granted: float = 0.0  # the client's view, after any voluntary release (it may only shrink)
    consumed: float = 0.0  # settled and delivered (budgets) / used (rate limits)
    want: float = 0.0  # how much more it asks for
    need: float = 0.0  # of which calls waiting right now need at least this much
    lease: int = 0  # the lease id these numbers belong to (0: none yet)
    spare: float = -1.0  # granted and not reserved by any call (-1: not reported, an older client)


class LeaseRequest(msgspec.Struct, kw_only=True):
    holder: str
    app: str = ""
    slices: list[SliceRequest] = []
    models: list[str] = []  # "provider:model" keys whose per-token prices the client needs
    release: bool = False  # the process is exiting: return everything


class Grant(msgspec.Struct, kw_only=True):
    limit: str
    group: str
    window: str
    granted: float  # cumulative for this lease and window
    ttl_s: float
    window_left_s: float | None  # seconds until the window rolls over (None: rolling)
    free: float  # still free in the pool after this grant (for messages and waits)
    known: bool = True  # False: no such limit any more (rule removed)
    lease: int = 0  # a new id means a new lease: the client starts counting from zero
    reclaim: float = 0.0  # another holder's calls are refused: hand back this much (what is unused)
    contended: bool = False  # this holder's calls are refused while others hold surplus: ask again


class LeaseReply(msgspec.Struct, kw_only=True):
    limits: list[Limit] = []
    grants: list[Grant] = []
    prices: dict[str, list[float] | None] = {}  # model -> [input, output, per request] USD per token


_request_decoder = msgspec.json.Decoder(LeaseRequest)


@dataclass
class _Lease:
    id: int
    window: str
    window_end: float  # epoch seconds (inf: a rolling window)
    span_s: float = 0.0  # a rate limit's whole window: its sub-window counts this long after it ends
    granted: float = 0.0
    consumed: float = 0.0
    expires_at: float = 0.0


# -- the authority --------------------------------------------------------------------------


class LeaseService:
    """Holds every live lease; ``exchange()`` is the whole protocol (also usable without HTTP)."""

    def __init__(
        self,
        rules: Callable[[], RuleSet],
        spend: Callable[[BudgetRule, datetime, datetime | None, datetime], dict[str, float]] | None,
        prices: Callable[[str, str], list[float] | None] | None = None,
        clock: Callable[[], float] = time.time,
        timezone_name: str = "UTC",
    ) -> None:
        self._rules = rules
        self._spend = spend
        self._prices = prices
        self.clock = clock
        self.tz = ZoneInfo(timezone_name)
        self._lock = threading.Lock()
        self._leases: dict[tuple[str, str, str], _Lease] = {}  # (holder, limit id, group)
        # rate limits: (limit, group, sub-window) -> (used by ended leases, when it stops counting)
        self._used: dict[tuple[str, str, str], tuple[float, float]] = {}
        self._price_cache: dict[str, list[float] | None] = {}
        # (limit, group) -> (holder whose calls did not fit, until): the others hand back surplus
        self._starved: dict[tuple[str, str], tuple[str, float]] = {}
        self._next_id = 0
        self.counters = {"exchanges": 0, "expired": 0, "granted": 0, "refused": 0, "errors": 0, "reclaims": 0}
        # Fleet budgets (`fleet: true`): f(rule, group, window, recorded, outstanding, want) -> what
        # this host may use in all, leased from Postgres (costwatch.daemon.fleet.budgets). None: no
        # fleet mode, and a fleet budget grants nothing (fails closed).
        self.fleet_limit: Callable[[BudgetRule, str, str, float, float, float], float] | None = None

    # -- service protocol (server.BackgroundService) --------------------------------------

    def start(self) -> None:
        """Nothing runs in the background: expiry is swept on each exchange."""

    def shutdown(self) -> None:
        pass

    # -- the protocol ---------------------------------------------------------------------

    def limits(self) -> dict[str, tuple[Limit, BudgetRule | RateLimitRule]]:
        ruleset = self._rules()
        out: dict[str, tuple[Limit, BudgetRule | RateLimitRule]] = {}
        for rule in ruleset.hard_budgets:
            out[rule.name] = (
                Limit(
                    id=rule.name,
                    rule=rule.name,
                    kind="budget",
                    measure=rule.unit,
                    scope=rule.scope.as_dict(),
                    per=list(rule.per),
                    default_max_tokens=rule.default_max_tokens,
                    reserve=rule.reserve,
                    ttl_s=parse_duration(rule.lease_ttl).total_seconds(),
                ),
                rule,
            )
        for rl in ruleset.rate_limits:
            if rl.dry_run:
                continue
            for measure, cap in (("requests", rl.requests), ("tokens", rl.tokens)):
                if cap is None:
                    continue
                out[f"{rl.name}/{measure}"] = (
                    Limit(
                        id=f"{rl.name}/{measure}",
                        rule=rl.name,
                        kind="rate_limit",
                        measure=measure,
                        scope=rl.scope.as_dict(),
                        per=list(rl.per),
                        on_exceed=rl.on_exceed,
                        max_wait_s=parse_duration(rl.max_wait).total_seconds(),
                        default_max_tokens=rl.default_max_tokens,
                        ttl_s=parse_duration(rl.lease_ttl).total_seconds(),
                    ),
                    rl,
                )
        return out

    def exchange(self, request: LeaseRequest) -> LeaseReply:
        """Renew, shrink, grant or release the holder's slices; one at a time for the whole host."""
        limits = self.limits()
        with self._lock:
            now = self.clock()
            self.counters["exchanges"] += 1
            self._expire(now)
            if request.release:
                for s in request.slices:  # last numbers first: a rate limit keeps what was used
                    lease = self._leases.get((request.holder, s.limit, s.group))
                    if lease is not None and s.lease == lease.id:
                        lease.consumed = max(lease.consumed, s.consumed)
                for key in [k for k in self._leases if k[0] == request.holder]:
                    self._retire(key, self._leases.pop(key), expired=False)
                return LeaseReply(limits=[lim for lim, _ in limits.values()])
            spend_cache: dict[str, dict[str, float]] = {}
            grants = [self._grant(request.holder, s, limits, now, spend_cache) for s in request.slices]
        prices = {m: self.price(m) for m in request.models[:64]}
        return LeaseReply(limits=[lim for lim, _ in limits.values()], grants=grants, prices=prices)

    def _grant(
        self,
        holder: str,
        s: SliceRequest,
        limits: dict[str, tuple[Limit, BudgetRule | RateLimitRule]],
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

    def _expire(self, now: float) -> None:
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
        with self._lock:
            return sum(
                max(lease.granted - lease.consumed, 0.0)
                for (_, lid, g), lease in self._leases.items()
                if lid == limit_id and g == group
            )

    def price(self, key: str) -> list[float] | None:
        """[input, output, per request] USD per token at the top tier (a worst case), cached.

        ``key`` is "provider:model" (split at the first colon: fine-tuned model names have more).
        """
        if key not in self._price_cache:
            provider, _, model = key.partition(":")
            self._price_cache[key] = self._prices(provider, model) if self._prices and model else None
        return self._price_cache[key]

    # -- HTTP -----------------------------------------------------------------------------

    def routes(self, token: str) -> list[Route]:
        """``POST /v1/leases`` (bearer token, like every write)."""
        expected = token.encode()

        async def leases(request: Request) -> Response:
            if not authorized(request, expected):
                return _error(401, "missing or invalid bearer token", CHALLENGE)
            body = await request.body()
            if len(body) > MAX_BODY:
                return _error(413, "lease request too large")
            try:
                lease_request = _request_decoder.decode(body)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                return _error(400, f"not a lease request: {exc}")
            try:
                reply = await run_in_threadpool(self.exchange, lease_request)
            except Exception as exc:
                self.counters["errors"] += 1
                log.exception("lease exchange failed")
                return _error(500, f"internal error: {type(exc).__name__}: {exc}")
            return Response(msgspec.json.encode(reply), media_type="application/json")

        return [Route("/v1/leases", leases, methods=["POST"])]

    # -- wiring -----------------------------------------------------------------------------

    @classmethod
    def from_settings(
        cls, settings: DaemonSettings, store: Store, pricer: Pricer, engine: RuleService | None = None
    ) -> LeaseService:
        """On the daemon's store and pricer; the rules are the rules ``engine``'s when it has a directory."""
        own = _OwnRules(
            settings.rules if settings.rules else (Path("alerts") if Path("alerts").is_dir() else None)
        )

        def rules() -> RuleSet:
            if engine is not None and engine.rules_dir is not None:
                return engine.ruleset  # reloads on SIGHUP
            return own.get()

        def spend(rule: BudgetRule, start: datetime, end: datetime | None, now: datetime) -> dict[str, float]:
            values = store.read(lambda cur: budget_values(cur, rule, start, end, now))
            return {k: v for k, (_, v) in values.items()}

        return cls(rules, spend, pricer_rates(pricer), timezone_name=settings.timezone)


def _span(rule: RateLimitRule) -> float:
    return parse_duration(rule.window).total_seconds()


def _subwindows(rule: RateLimitRule) -> int:
    """k: sub-windows per window, up to 10 and each at least a second (renewals come every 0.2 s)."""
    return max(1, min(MAX_SUBWINDOWS, math.floor(_span(rule) / MIN_SUBWINDOW_S)))


class _OwnRules:
    """Rules read from the directory when no rules engine runs; reread when a file changes."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self._stamp: tuple[Any, ...] | None = None
        self._ruleset = RuleSet()

    def get(self) -> RuleSet:
        if self.directory is None:
            return self._ruleset
        try:
            files = sorted([*self.directory.glob("*.yml"), *self.directory.glob("*.yaml")])
            stamp = tuple((p.name, p.stat().st_mtime_ns) for p in files)
        except OSError:
            return self._ruleset
        if stamp != self._stamp:
            try:
                self._ruleset = load_rules(self.directory)
            except RuleError as exc:
                log.error("lease rules not reloaded (keeping the old ones):\n%s", exc)
            self._stamp = stamp
        return self._ruleset


def pricer_rates(pricer: Any) -> Callable[[str, str], list[float] | None]:
    """Per-token rates read through `Pricer.price` with probe events (top tier: a worst case)."""

    def rates(provider: str, model: str) -> list[float] | None:
        def probe(inp: int, out: int) -> Any:
            event = UsageEvent(
                id="probe", call_id="probe", ts_start=time.time(), ts_end=time.time(), provider=provider,
                operation="chat", model=model, input_tokens=inp, output_tokens=out, usage_source="provider",
            )  # fmt: skip
            return pricer.price(event)

        try:
            both = probe(_PROBE_TOKENS, _PROBE_TOKENS)
        except Exception:
            log.exception("could not price %r", model)
            return None
        if both is None:
            return None
        per_request = max(both.cost_usd - both.input_cost_usd - both.output_cost_usd, 0.0)
        return [both.input_cost_usd / _PROBE_TOKENS, both.output_cost_usd / _PROBE_TOKENS, per_request]

    return rates


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(
        msgspec.json.encode({"error": message}),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )
