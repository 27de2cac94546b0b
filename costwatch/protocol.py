"""Wire shapes shared by the daemon and the instrumented processes (besides `UsageEvent`).

Defined once here and imported by both sides, so the two cannot drift apart; the app imports
this module at start, so it needs nothing beyond msgspec.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

# A kill-switch scope is a conjunction of key=value pairs; {} means global.
SCOPE_KEYS: tuple[str, ...] = ("app", "provider", "model", "user")


def scope_key(scope: dict[str, str]) -> str:
    """Canonical text of a scope: 'app=x,model=y' (keys in `SCOPE_KEYS` order) or 'global'.

    Stored in `alert_events.scope` and used as the group of a lease on both sides of the wire,
    so the daemon and the apps must spell it the same way.
    """
    return ",".join(f"{k}={scope[k]}" for k in SCOPE_KEYS if scope.get(k) is not None) or "global"


def parse_scope_key(text: str) -> dict[str, str]:
    """The scope a `scope_key` text names ({} for 'global')."""
    if text == "global" or not text:
        return {}
    return dict(part.split("=", 1) for part in text.split(","))


def resume_command(scope: dict[str, str]) -> str:
    """The CLI line that lifts a kill switch with this scope."""
    return " ".join(["costwatch resume", *(f"--scope {k}={v}" for k, v in sorted(scope.items()))])


ScopeDict = Annotated[
    dict[Annotated[str, msgspec.Meta(max_length=16)], Annotated[str, msgspec.Meta(max_length=256)]],
    msgspec.Meta(max_length=4),
]


class KillSwitch(msgspec.Struct, kw_only=True):
    """One engaged kill switch."""

    id: str
    scope: ScopeDict = {}
    reason: str = ""
    source: str = "cli"  # cli | http | rule:<name> | alertmanager
    engaged_at: float = 0.0
    expires_at: float | None = None

    def matches(self, app: str, provider: str | None, model: str | None, user: str | None) -> bool:
        values = {"app": app, "provider": provider, "model": model, "user": user}
        return all(values.get(key) == value for key, value in self.scope.items())

    def describe(self) -> str:
        where = ", ".join(f"{k}={v}" for k, v in sorted(self.scope.items())) or "global"
        return f"scope {where}"


class KillSwitchState(msgspec.Struct, kw_only=True):
    """What every ingest reply and `GET /v1/killswitch` carry."""

    engaged: list[KillSwitch] = []
    version: int = 0


class IngestReply(msgspec.Struct, kw_only=True):
    accepted: int
    duplicates: int = 0
    rejected: list[dict] = []  # [{"index": i, "id": ..., "error": "..."}]
    killswitch: KillSwitchState = msgspec.field(default_factory=KillSwitchState)


class DaemonState(msgspec.Struct, kw_only=True):
    """The daemon's state as mirrored into its state file (`costwatch.statefile`)."""

    killswitch: KillSwitchState = msgspec.field(default_factory=KillSwitchState)
    hard_limits: int = 0  # hard budgets and rate limits the daemon enforces through leases
    db: str = ""
    pid: int = 0
    written_at: float = 0.0


# -- lease exchange (`POST /v1/leases`): the app's limits thread and the daemon's lease authority ----


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
    """The holder's numbers for one slice, and what it asks for."""

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
    holder: str  # "<host>:<pid>:<random>", one per process
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
    limits: list[Limit] = []  # every limit the daemon enforces now (empty: nothing to enforce)
    grants: list[Grant] = []  # one per slice of the request, in any order
    prices: dict[str, list[float] | None] = {}  # model -> [input, output, per request] USD per token
