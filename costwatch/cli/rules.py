"""`costwatch rules check|reload|backtest`, and the check `costwatch daemon` runs before it starts.

The one module of the CLI that imports the rules engine (`costwatch.daemon.rules`,
`costwatch.daemon.rules.backtest`), each time inside the function that needs it.
"""

from __future__ import annotations

import sys
from pathlib import Path

from costwatch.cli.client import client_for
from costwatch.cli.errors import CLIError
from costwatch.cli.offline import Locked, holder, note, offline_settings, open_read_only
from costwatch.cli.parser import parse_duration, parse_since

TYPE_CHECKING = False  # not `typing`'s: the light path does not import typing (see costwatch.sources)
if TYPE_CHECKING:
    import argparse

__all__ = ["check_before_start", "cmd_rules_backtest", "cmd_rules_check", "cmd_rules_reload"]


def _rules_dir(configured: Path | None) -> Path | None:
    """The configured rules directory, else ./alerts when present (as the daemon does)."""
    if configured is not None:
        return configured
    return Path("alerts") if Path("alerts").is_dir() else None


def check_before_start(configured: Path | None, fleet_mode: bool) -> None:
    """`costwatch daemon` refuses invalid rules, and warns of fleet budgets without fleet mode."""
    rules_dir = _rules_dir(configured)
    if rules_dir is None:
        return
    from costwatch.daemon.rules import check_rules, load_rules

    errors = check_rules(rules_dir)
    if errors:
        raise CLIError("invalid rules, not starting:\n  " + "\n  ".join(errors), 2)
    if not fleet_mode:
        fleet = [r.name for r in load_rules(rules_dir).hard_budgets if r.fleet]
        if fleet:
            print(
                f"costwatch: warning: fleet budget(s) {', '.join(fleet)} need fleet mode (fleet_dsn /"
                " COSTWATCH_FLEET_DSN): without it they grant nothing and refuse every call they cover",
                file=sys.stderr,
            )


def cmd_rules_check(args: argparse.Namespace) -> int:
    from costwatch.daemon.rules import RuleError, check_rules, load_rules

    directory = _rules_dir(args.dir)
    if directory is None:
        raise CLIError("no rules directory: give one (costwatch rules check DIR) or create ./alerts", 2)
    errors = check_rules(directory)
    for line in errors:
        print(line, file=sys.stderr)
    if errors:
        return 1
    try:
        count = len(load_rules(directory).rules)
    except RuleError:  # pragma: no cover - check_rules said it was fine
        return 1
    print(f"{directory}: {count} rule(s) OK")
    return 0


def cmd_rules_reload(args: argparse.Namespace) -> int:
    client = client_for(args)
    result = client.request(
        "POST", "/v1/rules/reload", timeout=60, expect=("errors", "rules"), not_done="; rules NOT reloaded"
    )
    if result["errors"]:
        for line in result["errors"]:
            print(line, file=sys.stderr)
        print("rules NOT reloaded; the daemon keeps running the previous rules", file=sys.stderr)
        return 1
    print(f"reloaded {result['rules']} rule(s) at {client.url}")
    return 0


def cmd_rules_backtest(args: argparse.Namespace) -> int:
    import datetime as dt

    from costwatch.daemon.rules import RuleError, load_rules
    from costwatch.daemon.rules.backtest import backtest

    directory = _rules_dir(args.dir)
    if directory is None:
        raise CLIError("no rules directory: give one (costwatch rules backtest DIR) or create ./alerts", 2)
    since = parse_since(args.since)
    step_s = parse_duration(args.step)
    body = {"dir": str(directory.resolve()), "since": since, "step_s": step_s}
    settings = offline_settings(args)
    if settings is None:
        print(
            client_for(args).request("POST", "/v1/rules/backtest", body, timeout=600, expect=("report",))[
                "report"
            ]
        )
        return 0
    try:
        ruleset = load_rules(directory)
    except RuleError as exc:
        raise CLIError("invalid rules:\n  " + "\n  ".join(exc.errors), 2) from None
    try:
        con = open_read_only(settings)
    except Locked:
        client = holder(args, settings)
        print(client.request("POST", "/v1/rules/backtest", body, timeout=600, expect=("report",))["report"])
        return 0
    note(settings)
    try:
        utc = dt.timezone.utc
        report = backtest(
            ruleset,
            con.cursor,
            dt.datetime.fromtimestamp(since or 0, utc),
            dt.datetime.now(utc),
            dt.timedelta(seconds=step_s),
            settings.timezone,
        )
    finally:
        con.close()
    print(report.format())
    return 0
