"""Wire shapes shared by the daemon and the instrumented processes (besides `UsageEvent`)."""

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
