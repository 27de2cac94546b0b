"""`hard: true` budgets and `rate_limit` rules: loader validation, and where they end up."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from costwatch.daemon.rules import BudgetRule, RateLimitRule, RuleError, check_rules, load_rules


def _write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "limits.yml").write_text(textwrap.dedent(text).lstrip())
    return tmp_path


def test_hard_budget_and_rate_limits_load(tmp_path: Path) -> None:
    ruleset = load_rules(
        _write(
            tmp_path,
            """
            rules:
              - name: daily-cap
                kind: budget
                limit: 25
                window: day
                hard: true
                lease_ttl: 5s
                default_max_tokens: 1024
              - name: soft
                kind: budget
                limit: 10
                window: day
              - name: chat-rpm
                kind: rate_limit
                scope: {app: chat}
                per: user
                requests: 20
                tokens: 40000
                on_exceed: wait
                max_wait: 3s
            """,
        )
    )
    assert [r.name for r in ruleset.hard_budgets] == ["daily-cap"]
    cap = ruleset.get("daily-cap")
    assert (
        isinstance(cap, BudgetRule) and cap.hard and cap.lease_ttl == "5s" and cap.default_max_tokens == 1024
    )
    # Rate limits are the lease authority's, not the alert engine's: kept apart from `rules`.
    assert [r.name for r in ruleset.rules] == ["daily-cap", "soft"]
    (rpm,) = ruleset.rate_limits
    assert isinstance(rpm, RateLimitRule)
    assert (rpm.requests, rpm.tokens, rpm.window, rpm.per, rpm.on_exceed) == (
        20,
        40000,
        "1m",
        ["user"],
        "wait",
    )


def test_dry_run_hard_budget_is_not_enforced(tmp_path: Path) -> None:
    text = """
    rules:
      - {name: b, kind: budget, limit: 1, window: day, hard: true, mode: dry_run}
    """
    assert load_rules(_write(tmp_path, text)).hard_budgets == []


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ("{name: r, kind: rate_limit}", "rules[0]: set requests and/or tokens (per window)"),
        ("{name: r, kind: rate_limit, requests: 0}", "rules[0].requests: Input should be greater than 0"),
        (
            "{name: r, kind: rate_limit, requests: 5, window: soon}",
            "rules[0].window: 'soon' is not a duration",
        ),
        ("{name: r, kind: rate_limit, requests: 5, on_exceed: queue}", "rules[0].on_exceed: Input should be"),
        ("{name: r, kind: rate_limit, requests: 5, rpm: 3}", "rules[0].rpm: unknown key"),
        (
            "{name: b, kind: budget, limit: 1, window: day, hard: yes please}",
            "rules[0].hard: Input should be",
        ),
        ("{name: b, kind: budget, limit: 1, window: day, lease_ttl: 0.1s}", "between 0.2s and 1h"),
        ("{name: b, kind: budget, limit: 1, window: day, default_max_tokens: 0}", "default_max_tokens"),
    ],
)
def test_invalid_rules_name_file_line_and_field(tmp_path: Path, rule: str, message: str) -> None:
    _write(tmp_path, f"rules:\n  - {rule}\n")
    with pytest.raises(RuleError) as info:
        load_rules(tmp_path)
    assert len(info.value.errors) == 1
    error = info.value.errors[0]
    assert error.startswith(f"{tmp_path / 'limits.yml'}:2: "), error
    assert message in error


def test_rate_limit_names_share_the_namespace(tmp_path: Path) -> None:
    text = """
    rules:
      - {name: x, kind: budget, limit: 1, window: day}
      - {name: x, kind: rate_limit, requests: 1}
    """
    errors = check_rules(_write(tmp_path, text))
    assert len(errors) == 1 and "duplicate rule name 'x'" in errors[0]


def test_rate_limits_do_not_notify(tmp_path: Path) -> None:
    text = """
    channels: {c: {url: "json://127.0.0.1:9"}}
    rules:
      - {name: r, kind: rate_limit, requests: 1, notify: [c]}
    """
    errors = check_rules(_write(tmp_path, text))
    assert len(errors) == 1 and "rate limits do not notify" in errors[0]
