"""Rule files: every error names file, line and field; the shipped example is valid."""

from __future__ import annotations

from pathlib import Path

import pytest

from costwatch.daemon.rules import BudgetRule, RuleError, ThresholdRule, check_rules, load_rules
from tests.rules.conftest import write_rules

EXAMPLE = Path(__file__).parents[2] / "alerts" / "example.yml"


def test_example_file_is_valid_and_switched_off() -> None:
    assert check_rules(EXAMPLE.parent) == []
    assert load_rules(EXAMPLE.parent).rules == []  # enabled: false


def test_example_file_enabled_loads_every_rule(tmp_path: Path) -> None:
    text = EXAMPLE.read_text().replace("enabled: false", "enabled: true")
    (tmp_path / "example.yml").write_text(text)
    env = {v: "x" for v in ("SLACK_TOKEN_A", "SLACK_TOKEN_B", "SLACK_TOKEN_C", "SMTP_USER", "SMTP_PASSWORD")}
    ruleset = load_rules(tmp_path, environ=env)
    assert len(ruleset.rules) == 9
    ladder = ruleset.get("monthly-spend-ladder")
    assert isinstance(ladder, BudgetRule)
    assert [t.level(ladder.limit) for t in ladder.thresholds] == [10, 50, 100, 500]
    errors = ruleset.get("gpt4o-errors")
    assert isinstance(errors, ThresholdRule) and errors.value == pytest.approx(0.05)
    assert ruleset.channels["ops-slack"].url == "slack://x/x/x/#llm-costs"


def test_example_enabled_without_secrets_names_the_variable(tmp_path: Path) -> None:
    (tmp_path / "example.yml").write_text(EXAMPLE.read_text().replace("enabled: false", "enabled: true"))
    errors = check_rules(tmp_path)
    assert any("channels.ops-slack.url: environment variable SLACK_TOKEN_A is not set" in e for e in errors)


def _errors(tmp_path: Path, text: str, name: str = "a.yml") -> list[str]:
    write_rules(tmp_path, name, text)
    with pytest.raises(RuleError) as info:
        load_rules(tmp_path, environ={})
    assert check_rules(tmp_path) == info.value.errors
    return info.value.errors


def test_wrong_type(tmp_path: Path) -> None:
    errors = _errors(
        tmp_path,
        """
        rules:
          - name: b
            kind: budget
            limit: lots
            window: day
        """,
    )
    assert errors == [
        f"{tmp_path / 'a.yml'}:4: rules[0].limit: "
        "Input should be a valid number, unable to parse string as a number"
    ]


def test_unknown_key_at_rule_and_nested_level(tmp_path: Path) -> None:
    errors = _errors(
        tmp_path,
        """
        rules:
          - name: b
            kind: budget
            limit: 10
            window: day
            scope:
              app: x
              region: eu
            colour: red
        """,
    )
    path = tmp_path / "a.yml"
    assert f"{path}:8: rules[0].scope.region: unknown key" in errors
    assert f"{path}:9: rules[0].colour: unknown key" in errors
    assert len(errors) == 2


def test_missing_limit_points_at_the_rule(tmp_path: Path) -> None:
    errors = _errors(
        tmp_path,
        """
        channels:
          c: {url: "json://localhost"}
        rules:
          - name: first
            kind: budget
            limit: 10
            window: day
          - name: second
            kind: budget
            window: month
        """,
    )
    assert errors == [f"{tmp_path / 'a.yml'}:8: rules[1].limit: Field required"]


def test_bad_window_and_bad_duration(tmp_path: Path) -> None:
    errors = _errors(
        tmp_path,
        """
        rules:
          - name: b
            kind: budget
            limit: 10
            window: fortnight
          - name: t
            kind: threshold
            metric: error_rate
            value: 5%
            for: soon
        """,
    )
    path = tmp_path / "a.yml"
    assert errors[0].startswith(f"{path}:5: rules[0].window: 'fortnight' is neither a calendar window")
    assert errors[1].startswith(f"{path}:10: rules[1].for: 'soon' is not a duration")


def test_unknown_kind_and_metric(tmp_path: Path) -> None:
    errors = _errors(
        tmp_path,
        """
        rules:
          - name: a
            kind: budgett
          - name: b
            kind: threshold
            metric: vibes
            value: 1
        """,
    )
    path = tmp_path / "a.yml"
    assert (
        errors[0]
        == f"{path}:2: rules[0]: kind must be one of budget, threshold, forecast, data_quality, rate_limit"
    )
    assert errors[1].startswith(f"{path}:6: rules[1].metric: Input should be 'error_rate'")


def test_duplicate_name_across_files(tmp_path: Path) -> None:
    write_rules(
        tmp_path,
        "a.yml",
        """
        rules:
          - name: spend
            kind: budget
            limit: 10
            window: day
        """,
    )
    errors = _errors(
        tmp_path,
        """
        rules:
          - name: other
            kind: data_quality
          - name: spend
            kind: budget
            limit: 20
            window: month
        """,
        name="b.yml",
    )
    assert errors == [
        f"{tmp_path / 'b.yml'}:4: rules[1].name: duplicate rule name 'spend' "
        f"(first defined at {tmp_path / 'a.yml'}:2)"
    ]


def test_references_checked_across_files(tmp_path: Path) -> None:
    write_rules(tmp_path, "channels.yml", 'channels:\n  ops: {url: "json://localhost/${HOOK_PATH:-x}"}\n')
    write_rules(
        tmp_path,
        "rules.yml",
        """
        rules:
          - name: rolling
            kind: budget
            limit: 10
            window: 24h
            notify: [ops]
          - name: f
            kind: forecast
            budget: rolling
            forecast: {exhausts_before_window_end: true}
            notify: [ops, pager]
          - name: g
            kind: forecast
            budget: nope
            forecast: {exhausts_within: 2d}
        """,
    )
    errors = check_rules(tmp_path)
    path = tmp_path / "rules.yml"
    assert f"{path}:11: rules[1].notify[1]: unknown channel 'pager'" in errors
    assert any(
        e.startswith(f"{path}:10: rules[1].forecast.exhausts_before_window_end: budget 'rolling'")
        for e in errors
    )
    assert f"{path}:14: rules[2].budget: no budget rule 'nope'" in errors
    assert len(errors) == 3


def test_yaml_syntax_error_has_a_line(tmp_path: Path) -> None:
    errors = _errors(tmp_path, "rules:\n  - name: a\n    kind: [budget\n")
    assert errors[0].startswith(f"{tmp_path / 'a.yml'}:")
    assert "YAML syntax" in errors[0]


def test_env_substitution_and_prometheus_files_skipped(tmp_path: Path) -> None:
    write_rules(tmp_path, "prom.yml", "groups:\n  - name: x\n    rules: []\n")
    write_rules(
        tmp_path,
        "a.yml",
        """
        channels:
          hook: {url: "json://${HOOK_HOST}/alerts?token=${HOOK_TOKEN:-none}"}
        rules:
          - name: q
            kind: data_quality
            notify: [hook]
        """,
    )
    ruleset = load_rules(tmp_path, environ={"HOOK_HOST": "127.0.0.1:9"})
    assert ruleset.channels["hook"].url == "json://127.0.0.1:9/alerts?token=none"
    assert [r.name for r in ruleset.rules] == ["q"]


def test_rules_check_needs_no_daemon_package() -> None:
    """`costwatch.daemon.rules` exports the models and the loader only: no DuckDB, so `costwatch rules
    check` runs where only `costwatch` (the app's install) is present."""
    import subprocess
    import sys

    from costwatch.cli.errors import DAEMON_PACKAGES

    code = f"""
import sys
class _Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {sorted(DAEMON_PACKAGES)!r}:
            raise ModuleNotFoundError(name, name=name)
sys.meta_path.insert(0, _Blocked())
from costwatch.daemon.rules import check_rules
print(check_rules(sys.argv[1]))
"""
    result = subprocess.run(
        [sys.executable, "-c", code, str(EXAMPLE.parent)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stderr
