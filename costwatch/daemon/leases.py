"""The lease authority: hard budgets and rate limits shared by every process on the host.

Checking a budget against spend already recorded lets every call in flight
cross the limit. Here each instrumented process instead holds a *lease*: a
slice of what is left, granted by this module, from which it reserves each
call's worst case before the call leaves (`costwatch.instrumentation.limits`).
This module turns the rules into limits, answers ``POST /v1/leases`` and wires
the service into the daemon; what is free and who holds what is
`costwatch.daemon.lease_pool`'s; the messages are `costwatch.protocol`'s.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from costwatch.daemon.auth import CHALLENGE, authorized
from costwatch.daemon.lease_pool import LeasePool, Limits, Spend
from costwatch.daemon.rules import BudgetRule, RuleError, RuleSet, load_rules, parse_duration
from costwatch.daemon.rules.windows import budget_values
from costwatch.events import UsageEvent
from costwatch.protocol import LeaseReply, LeaseRequest, Limit

if TYPE_CHECKING:
    from costwatch.daemon.scheduler import RuleService
    from costwatch.daemon.store import Store
    from costwatch.pricing import Pricer
    from costwatch.settings import DaemonSettings

__all__ = ["LeaseService"]

log = logging.getLogger("costwatch.leases")

MAX_BODY = 1024 * 1024
_PROBE_TOKENS = 10_000_000  # large enough to reach the top price tier: worst-case rates

_request_decoder = msgspec.json.Decoder(LeaseRequest)


class LeaseService:
    """The limits the rules define and the pool they draw from; ``exchange()`` is the whole protocol."""

    def __init__(
        self,
        rules: Callable[[], RuleSet],
        spend: Spend | None,
        prices: Callable[[str, str], list[float] | None] | None = None,
        clock: Callable[[], float] = time.time,
        timezone_name: str = "UTC",
    ) -> None:
        self._rules = rules
        self._prices = prices
        self.clock = clock
        self._price_cache: dict[str, list[float] | None] = {}
        self.counters = {"exchanges": 0, "expired": 0, "granted": 0, "refused": 0, "errors": 0, "reclaims": 0}
        self.pool = LeasePool(spend, timezone_name, self.counters)

    @property
    def fleet_limit(self) -> Callable[[BudgetRule, str, str, float, float, float], float] | None:
        """What this host may use of a `fleet: true` budget (`LeasePool.fleet_limit`)."""
        return self.pool.fleet_limit

    @fleet_limit.setter
    def fleet_limit(self, value: Callable[[BudgetRule, str, str, float, float, float], float] | None) -> None:
        self.pool.fleet_limit = value

    # -- service protocol (server.BackgroundService) --------------------------------------

    def start(self) -> None:
        """Nothing runs in the background: expiry is swept on each exchange."""

    def shutdown(self) -> None:
        pass

    # -- the protocol ---------------------------------------------------------------------

    def limits(self) -> Limits:
        ruleset = self._rules()
        out: Limits = {}
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
        pool = self.pool
        with pool.lock:
            now = self.clock()
            self.counters["exchanges"] += 1
            pool.expire(now)
            if request.release:
                pool.release(request.holder, request.slices)
                return LeaseReply(limits=[lim for lim, _ in limits.values()])
            spend_cache: dict[str, dict[str, float]] = {}
            grants = [pool.grant(request.holder, s, limits, now, spend_cache) for s in request.slices]
        prices = {m: self.price(m) for m in request.models[:64]}
        return LeaseReply(limits=[lim for lim, _ in limits.values()], grants=grants, prices=prices)

    def outstanding(self, limit_id: str, group: str) -> float:
        """Granted but not yet consumed, over live leases (tests and status)."""
        return self.pool.outstanding(limit_id, group)

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
