"""Alert rule models: what an `alerts/*.yml` file may say, validated with pydantic.

A typo is caught at load time, not at 3 a.m. when the rule would have fired
(`loading.py` turns pydantic's errors into "file:line: field: message").
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from costwatch.protocol import SCOPE_KEYS

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d|w)$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
CALENDAR_WINDOWS = ("day", "week", "month")

ScopeKey = Literal["app", "provider", "model", "user"]


def parse_duration(text: str) -> timedelta:
    """'90s', '5m', '24h', '7d', '2w' -> timedelta; ValueError otherwise."""
    match = _DURATION.match(str(text).strip())
    if not match:
        raise ValueError(f"{text!r} is not a duration like 30s, 5m, 24h, 7d or 2w")
    seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds <= 0:
        raise ValueError(f"{text!r} must be longer than zero")
    return timedelta(seconds=seconds)


def _duration_field(value: Any) -> str | None:
    if value is None:
        return None
    parse_duration(str(value))
    return str(value)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Channel(_Model):
    """A notification target; `url` is an Apprise URL (secrets via ``${ENV_VAR}``)."""

    url: str = Field(min_length=1)


class Scope(_Model):
    """A conjunction of filters; all empty means every call (global)."""

    app: str | None = None
    provider: str | None = None
    model: str | None = None
    user: str | None = None

    def as_dict(self) -> dict[str, str]:
        return {k: v for k in SCOPE_KEYS if (v := getattr(self, k)) is not None}


class Threshold(_Model):
    """One step of a budget ladder: ``at: 50%`` (of the limit) or ``at: 10`` (absolute)."""

    at: float | str
    action: Literal["notify", "kill"] = "notify"

    @field_validator("at")
    @classmethod
    def _check_at(cls, value: float | str) -> float | str:
        """Normalize to a float (absolute) or 'N%' (share of the limit)."""
        text = str(value).strip()
        percent = text.endswith("%")
        try:
            number = float(text.rstrip("%").strip().lstrip("$"))
        except ValueError:
            raise ValueError(f"{value!r} is neither an amount (10) nor a percentage (50%)") from None
        if number <= 0:
            raise ValueError("a threshold must be above 0")
        return f"{number:g}%" if percent else number

    def level(self, limit: float) -> float:
        """The absolute value at which this threshold is crossed."""
        if isinstance(self.at, str):
            return limit * float(self.at[:-1]) / 100.0
        return float(self.at)

    def label(self, unit: str) -> str:
        if isinstance(self.at, str):
            return self.at
        return f"${self.at:g}" if unit == "usd" else f"{self.at:g} tokens"


class _RuleBase(_Model):
    name: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.:-]+$")
    description: str = ""
    mode: Literal["active", "dry_run"] = "active"
    notify: list[str] = []
    scope: Scope = Field(default_factory=Scope)
    per: list[ScopeKey] = []

    @field_validator("per", mode="before")
    @classmethod
    def _per_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @property
    def dry_run(self) -> bool:
        return self.mode == "dry_run"

    @property
    def repeat(self) -> timedelta | None:
        """Re-notify a still-firing alert this often (not budgets: they fire once per window)."""
        every = getattr(self, "repeat_interval", None)
        return parse_duration(every) if every else None

    @property
    def hold(self) -> timedelta:
        """How long a condition must hold before it fires (`for:`); zero for budgets."""
        held = getattr(self, "for_", None)
        return parse_duration(held) if held else timedelta(0)


class BudgetRule(_RuleBase):
    """Spend (USD) or tokens in a calendar or rolling window against a limit, with a ladder."""

    kind: Literal["budget"]
    limit: float = Field(gt=0)
    unit: Literal["usd", "tokens"] = "usd"
    window: str
    timezone: str | None = None
    thresholds: list[Threshold] = Field(default_factory=lambda: [Threshold(at="100%")], min_length=1)
    lift_on_rollover: bool = True
    # Hard budgets are enforced in the apps before a call leaves (see docs/limits.md).
    hard: bool = False
    lease_ttl: str = "10s"  # a crashed process's slice returns to the pool after this long
    default_max_tokens: int = Field(default=4096, ge=1)  # worst-case output when a request sets none
    reserve: bool = True  # false: admit while the lease is not used up (comparison runs only)
    # One limit for every daemon of the fleet (needs hard: true and fleet_dsn): each daemon leases
    # slices of it from PostgreSQL (costwatch.daemon.fleet.budgets, docs/fleet.md).
    fleet: bool = False

    @field_validator("lease_ttl")
    @classmethod
    def _check_ttl(cls, value: Any) -> str:
        return _lease_ttl(value)

    @model_validator(mode="after")
    def _fleet_is_hard(self) -> BudgetRule:
        if self.fleet and not self.hard:
            raise ValueError("fleet: true is for hard budgets: set hard: true as well")
        return self

    @field_validator("window")
    @classmethod
    def _check_window(cls, value: str) -> str:
        if value in CALENDAR_WINDOWS:
            return value
        try:
            parse_duration(value)
        except ValueError:
            raise ValueError(
                f"{value!r} is neither a calendar window (day, week, month) nor a duration like 24h or 7d"
            ) from None
        return value

    @field_validator("timezone")
    @classmethod
    def _check_tz(cls, value: str | None) -> str | None:
        if value is not None:
            from zoneinfo import ZoneInfo

            try:
                ZoneInfo(value)
            except Exception:
                raise ValueError(f"unknown timezone {value!r}") from None
        return value

    @field_validator("thresholds")
    @classmethod
    def _distinct(cls, value: list[Threshold]) -> list[Threshold]:
        labels = [str(t.at) for t in value]
        if len(set(labels)) != len(labels):
            raise ValueError("the same threshold is listed twice")
        return value

    @property
    def calendar(self) -> bool:
        return self.window in CALENDAR_WINDOWS


class ThresholdRule(_RuleBase):
    """A metric over a rolling window compared to a value, held for a duration."""

    kind: Literal["threshold"]
    metric: Literal[
        "error_rate", "rate_limit_rate", "latency_p95", "latency_p99", "ttft_p95", "cost_per_hour"
    ]
    op: Literal[">", ">=", "<", "<="] = ">"
    value: float  # rates are fractions (0.05) or written as "5%"
    window: str = "5m"
    for_: str | None = Field(default=None, alias="for")
    repeat_interval: str | None = None
    min_requests: int = Field(default=1, ge=1)
    action: Literal["notify", "kill"] = "notify"

    @field_validator("value", mode="before")
    @classmethod
    def _percent(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().endswith("%"):
            return float(value.strip()[:-1]) / 100.0
        return value

    @field_validator("window", "for_", "repeat_interval")
    @classmethod
    def _check_durations(cls, value: Any) -> str | None:
        return _duration_field(value)


class ForecastCondition(_Model):
    exhausts_before_window_end: bool = False
    exhausts_within: str | None = None

    @field_validator("exhausts_within")
    @classmethod
    def _check_within(cls, value: Any) -> str | None:
        return _duration_field(value)

    @model_validator(mode="after")
    def _one_condition(self) -> ForecastCondition:
        if not self.exhausts_before_window_end and not self.exhausts_within:
            raise ValueError("set exhausts_before_window_end: true or exhausts_within: <duration>")
        return self


class ForecastRule(_RuleBase):
    """Burn-rate projection of a budget rule, alerting before the money runs out."""

    kind: Literal["forecast"]
    budget: str = Field(min_length=1)
    forecast: ForecastCondition
    lookback: str | None = None  # burn rate measured over this; default: the window so far
    min_spent_ratio: float = Field(default=0.0, ge=0, le=1)
    for_: str | None = Field(default=None, alias="for")
    repeat_interval: str | None = None

    @field_validator("lookback", "for_", "repeat_interval")
    @classmethod
    def _check_durations(cls, value: Any) -> str | None:
        return _duration_field(value)

    @field_validator("scope", "per")
    @classmethod
    def _no_own_scope(cls, value: Any) -> Any:
        if value and (not isinstance(value, Scope) or value.as_dict()):
            raise ValueError("a forecast uses the scope and `per` of its budget rule")
        return value


class DataQualityRule(_RuleBase):
    """Events whose cost or usage is unknown: a silent $0 must never hide spend."""

    kind: Literal["data_quality"]
    checks: list[Literal["unpriced", "missing_usage"]] = Field(
        default_factory=lambda: ["unpriced", "missing_usage"], min_length=1
    )
    window: str = "1h"
    min_events: int = Field(default=1, ge=1)
    for_: str | None = Field(default=None, alias="for")
    repeat_interval: str | None = None

    @field_validator("window", "for_", "repeat_interval")
    @classmethod
    def _check_durations(cls, value: Any) -> str | None:
        return _duration_field(value)


class RateLimitRule(_RuleBase):
    """Requests and/or tokens per window (default one minute), enforced in the apps via leases.

    Not evaluated by the alert engine: `load_rules` puts these in `RuleSet.rate_limits`.
    """

    kind: Literal["rate_limit"]
    requests: int | None = Field(default=None, gt=0)  # per window: 20 with window 1m = 20 RPM
    tokens: int | None = Field(default=None, gt=0)  # per window, input estimate + max output tokens
    window: str = "1m"
    on_exceed: Literal["block", "wait"] = "block"
    max_wait: str = "10s"  # on_exceed: wait sleeps at most this long, then blocks
    default_max_tokens: int = Field(default=4096, ge=1)
    lease_ttl: str = "10s"

    @field_validator("window", "max_wait")
    @classmethod
    def _check_durations(cls, value: Any) -> str | None:
        return _duration_field(value)

    @field_validator("lease_ttl")
    @classmethod
    def _check_ttl(cls, value: Any) -> str:
        return _lease_ttl(value)

    @model_validator(mode="after")
    def _some_limit(self) -> RateLimitRule:
        if self.requests is None and self.tokens is None:
            raise ValueError("set requests and/or tokens (per window)")
        if self.notify:
            raise ValueError("rate limits do not notify: refused calls are recorded as blocked events")
        return self


def _lease_ttl(value: Any) -> str:
    seconds = parse_duration(str(value)).total_seconds()
    if not 0.2 <= seconds <= 3600:
        raise ValueError(f"{value!r}: a lease TTL must be between 0.2s and 1h")
    return str(value)


AnyRule = Union[BudgetRule, ThresholdRule, ForecastRule, DataQualityRule]  # noqa: UP007 (py3.10 runtime alias)
FileRule = Union[BudgetRule, ThresholdRule, ForecastRule, DataQualityRule, RateLimitRule]  # noqa: UP007
Rule = Annotated[FileRule, Field(discriminator="kind")]
RULE_KINDS = ("budget", "threshold", "forecast", "data_quality", "rate_limit")


class RulesFile(_Model):
    """The shape of one `alerts/*.yml` file."""

    enabled: bool = True
    channels: dict[str, Channel] = {}
    rules: list[Rule] = []


@dataclass
class RuleSet:
    """Every rule and channel loaded from a directory (names unique across files)."""

    rules: list[AnyRule] = field(default_factory=list)
    channels: dict[str, Channel] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)  # rule name -> "file:line"
    # Enforced by the apps through leases (costwatch.daemon.leases), not by the alert engine.
    rate_limits: list[RateLimitRule] = field(default_factory=list)

    def get(self, name: str) -> AnyRule | None:
        return next((r for r in self.rules if r.name == name), None)

    @property
    def hard_budgets(self) -> list[BudgetRule]:
        return [r for r in self.rules if isinstance(r, BudgetRule) and r.hard and not r.dry_run]
