"""Alert rules: `alerts/*.yml` models and loading, the evaluation engine, forecasts, backtests.

| module | holds |
| --- | --- |
| `models` | the rule models (pydantic), durations, `RuleSet` |
| `loading` | YAML loading and validation, `RuleError` with file:line errors |
| `windows` | budget windows and the SQL fragments every rule runs |
| `messages` | alert text: amounts, times, top spenders, the budget message |
| `forecast` | burn-rate projections of budget rules |
| `conditions` | threshold, data-quality and forecast conditions per scope group |
| `transitions` | `Transition`, its recording in `alert_events` and its delivery |
| `engine` | `Engine`, the pending -> firing -> resolved state machine |
| `backtest` | replaying rules over stored history |

Scope keys and their text live in `costwatch.protocol`: the apps spell them too.

This package re-exports the models and the loader only. They need pydantic and PyYAML, not
DuckDB, so `costwatch rules check` runs on an app's install; import the engine's names from
their modules (`costwatch.daemon.rules.engine`, `.forecast`, `.backtest`).
"""

from __future__ import annotations

from costwatch.daemon.rules.loading import RuleError, check_rules, load_rules
from costwatch.daemon.rules.models import (
    RULE_KINDS,
    BudgetRule,
    Channel,
    DataQualityRule,
    ForecastRule,
    RateLimitRule,
    RuleSet,
    ThresholdRule,
    parse_duration,
)

__all__ = [
    "RULE_KINDS",
    "BudgetRule",
    "Channel",
    "DataQualityRule",
    "ForecastRule",
    "RateLimitRule",
    "RuleError",
    "RuleSet",
    "ThresholdRule",
    "check_rules",
    "load_rules",
    "parse_duration",
]
