"""Alert rule models and the `alerts/*.yml` loader.

Rules are validated with pydantic so a typo is caught at load time, not at
3 a.m. when the rule would have fired; every error names the file, the line
and the field (pydantic's error location is walked through the YAML node tree,
whose marks carry line numbers).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from costwatch.protocol import SCOPE_KEYS

log = logging.getLogger("costwatch.rules")

__all__ = [
    "BudgetRule",
    "Channel",
    "DataQualityRule",
    "ForecastRule",
    "RateLimitRule",
    "Rule",
    "RuleError",
    "RuleSet",
    "Threshold",
    "ThresholdRule",
    "check_rules",
    "load_rules",
    "parse_duration",
]

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d|w)$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
CALENDAR_WINDOWS = ("day", "week", "month")
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")

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

    @property
    def is_percent(self) -> bool:
        return isinstance(self.at, str)

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
_FileRule = Union[BudgetRule, ThresholdRule, ForecastRule, DataQualityRule, RateLimitRule]  # noqa: UP007
Rule = Annotated[_FileRule, Field(discriminator="kind")]
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


class RuleError(Exception):
    """Raised by `load_rules`; `errors` holds one "file:line: field: message" string each."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


def check_rules(directory: Path | str) -> list[str]:
    """What `costwatch rules check [DIR]` prints: [] when every file is valid."""
    try:
        load_rules(Path(directory))
    except RuleError as exc:
        return exc.errors
    return []


def load_rules(directory: Path | str, environ: Mapping[str, str] | None = None) -> RuleSet:
    """Load and validate every `*.yml`/`*.yaml` in `directory`; all-or-nothing.

    A file with ``enabled: false`` is validated on its own and then left out
    (that is how `alerts/example.yml` ships); a Prometheus rule file (top-level
    ``groups:``) is skipped, so both kinds can share the `alerts/` directory.
    """
    directory = Path(directory)
    env = os.environ if environ is None else environ
    if not directory.is_dir():
        raise RuleError([f"{directory}: not a directory"])
    errors: list[str] = []
    active = _Collector()
    for path in sorted([*directory.glob("*.yml"), *directory.glob("*.yaml")]):
        parsed = _load_file(path, env, errors)
        if parsed is None:
            continue
        model, root = parsed
        if model.enabled:
            active.add(path, model, root, errors)
        else:
            alone = _Collector()
            alone.add(path, model, root, errors)
            alone.check_references(errors)
    active.check_references(errors)
    if errors:
        raise RuleError(errors)
    return active.ruleset


class _Collector:
    """Merges files into one RuleSet, remembering where each rule came from for error lines."""

    def __init__(self) -> None:
        self.ruleset = RuleSet()
        self.origins: list[tuple[str, yaml.Node, int, _FileRule]] = []  # (file, root node, index, rule)

    def add(self, path: Path, model: RulesFile, root: yaml.Node, errors: list[str]) -> None:
        for index, rule in enumerate(model.rules):
            line = _line(root, ("rules", index))
            if rule.name in self.ruleset.sources:
                errors.append(
                    f"{path}:{_line(root, ('rules', index, 'name'))}: rules[{index}].name: "
                    f"duplicate rule name "
                    f"{rule.name!r} (first defined at {self.ruleset.sources[rule.name]})"
                )
                continue
            self.ruleset.sources[rule.name] = f"{path}:{line}"
            if isinstance(rule, RateLimitRule):
                self.ruleset.rate_limits.append(rule)
            else:
                self.ruleset.rules.append(rule)
            self.origins.append((str(path), root, index, rule))
        for cname, channel in model.channels.items():
            if cname in self.ruleset.channels:
                errors.append(
                    f"{path}:{_line(root, ('channels', cname))}: channels.{cname}: duplicate channel name"
                )
            self.ruleset.channels[cname] = channel

    def check_references(self, errors: list[str]) -> None:
        """Channel names and forecast budgets may live in other files: checked once all are read."""
        budgets = {r.name: r for r in self.ruleset.rules if isinstance(r, BudgetRule)}
        for file, root, index, rule in self.origins:
            for i, cname in enumerate(rule.notify):
                if cname not in self.ruleset.channels:
                    errors.append(
                        _at(file, root, ("rules", index, "notify", i), f"unknown channel {cname!r}")
                    )
            if isinstance(rule, ForecastRule):
                target = budgets.get(rule.budget)
                if target is None:
                    errors.append(
                        _at(file, root, ("rules", index, "budget"), f"no budget rule {rule.budget!r}")
                    )
                elif rule.forecast.exhausts_before_window_end and not target.calendar:
                    loc = ("rules", index, "forecast", "exhausts_before_window_end")
                    msg = (
                        f"budget {rule.budget!r} has a rolling window, which never ends: use exhausts_within"
                    )
                    errors.append(_at(file, root, loc, msg))


def _line(root: yaml.Node, loc: tuple[Any, ...]) -> int:
    return int(_at("", root, loc, "").split(":")[1])


# libyaml when PyYAML was built with it (the wheels are): alerts/example.yml parses in 0.8 ms
# instead of 16.9 ms with the pure-Python loader run twice (compose, then load) as before.
_YAML_LOADER: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _parse_yaml(text: str) -> tuple[yaml.Node | None, Any]:
    """The node tree (for line numbers in errors) and the data, from one parse."""
    loader = _YAML_LOADER(text)
    try:
        root = loader.get_single_node()
        return root, (loader.construct_document(root) if root is not None else None)
    finally:
        loader.dispose()


def _load_file(path: Path, env: Mapping[str, str], errors: list[str]) -> tuple[RulesFile, yaml.Node] | None:
    try:
        text = path.read_text()
        root, data = _parse_yaml(text)
    except OSError as exc:
        errors.append(f"{path}:1: {exc.strerror}")
        return None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        errors.append(f"{path}:{line}: YAML syntax: {exc.problem or exc}")
        return None
    except UnicodeDecodeError as exc:
        errors.append(f"{path}:1: not UTF-8 text (byte {exc.start}): rule files must be UTF-8")
        return None
    except yaml.YAMLError as exc:  # e.g. a control character the reader refuses
        errors.append(f"{path}:1: unreadable YAML: {str(exc).splitlines()[0]}")
        return None
    if data is None:
        return RulesFile(), yaml.MappingNode("tag:yaml.org,2002:map", [])
    if not isinstance(data, dict):
        errors.append(f"{path}:1: the file must be a mapping with `channels:` and/or `rules:`")
        return None
    if "groups" in data and "rules" not in data and "channels" not in data:
        log.info("%s: a Prometheus rule file (top-level `groups:`), not costwatch rules: skipped", path)
        return None
    enabled = data.get("enabled", True) is not False
    channels = data.get("channels")
    if isinstance(channels, dict):
        for cname, channel in channels.items():
            if isinstance(channel, dict) and isinstance(channel.get("url"), str):
                missing = [] if enabled else None  # a disabled file may name variables that are not set
                channel["url"] = _substitute(channel["url"], env, missing)
                for var in missing or []:
                    errors.append(
                        _at(
                            str(path),
                            root,
                            ("channels", cname, "url"),
                            f"environment variable {var} is not set",
                        )
                    )
    try:
        return RulesFile.model_validate(data), root
    except ValidationError as exc:
        for err in exc.errors():
            loc = tuple(err["loc"])
            if len(loc) > 2 and loc[0] == "rules" and loc[2] in RULE_KINDS:
                loc = loc[:2] + loc[3:]  # pydantic adds the discriminator value: rules.0.budget.limit
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            elif err["type"] == "union_tag_invalid":
                msg = f"kind must be one of {', '.join(RULE_KINDS)}"
            elif err["type"] == "union_tag_not_found":
                msg = f"missing `kind` (one of {', '.join(RULE_KINDS)})"
                loc = (*loc, "kind")
            errors.append(_at(str(path), root, loc, msg))
        return None


def _substitute(url: str, env: Mapping[str, str], missing: list[str] | None) -> str:
    """Replace ``${VAR}`` / ``${VAR:-default}``; unset variables without a default go to `missing`."""

    def repl(match: re.Match[str]) -> str:
        var, default = match.group(1), match.group(2)
        if var in env:
            return env[var]
        if default is not None:
            return default
        if missing is not None:
            missing.append(var)
        return ""

    return _ENV.sub(repl, url)


def _at(file: str, root: yaml.Node, loc: tuple[Any, ...], message: str) -> str:
    """Format one error, pointing at the line of the deepest YAML key or item the location reaches."""
    node: yaml.Node | None = root
    line = root.start_mark.line + 1 if root.start_mark is not None else 1
    for part in loc:
        found = _child(node, part) if node is not None else None
        if found is None:
            break
        line, node = found[0] + 1, found[1]
    where = _loc_text(loc)
    return f"{file}:{line}: {where}: {message}" if where else f"{file}:{line}: {message}"


def _walk(root: yaml.Node, loc: tuple[Any, ...]) -> yaml.Node | None:
    node: yaml.Node | None = root
    for part in loc:
        found = _child(node, part) if node is not None else None
        node = found[1] if found else None
    return node


def _child(node: yaml.Node, part: Any) -> tuple[int, yaml.Node] | None:
    """(0-based line of the key or item, value node) for one step of an error location."""
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if str(key.value) == str(part) or (part == "for_" and key.value == "for"):
                return key.start_mark.line, value
        return None
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
        return node.value[part].start_mark.line, node.value[part]
    return None


def _loc_text(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            name = "for" if part == "for_" else str(part)
            text += f".{name}" if text else name
    return text
