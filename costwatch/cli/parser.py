"""The argparse tree, and the parsers of flag values (durations, dates, scopes).

Each command names its function as ``"module:function"`` of this package, imported by
`command_function` only once it is the one to run: `costwatch kill` loads `switch` and
none of the other commands' modules.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import re
import time
from pathlib import Path

from costwatch.cli.errors import CLIError

TYPE_CHECKING = False  # not `typing`'s: the light path does not import typing (see costwatch.sources)
if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["build_parser", "command_function", "parse_duration", "parse_scope", "parse_since"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """'90s', '15m', '12h', '30d', '2w' or plain seconds -> seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text)
    if not match or float(match.group(1)) <= 0:
        raise CLIError(f"invalid duration {text!r}: use e.g. 90s, 15m, 12h, 30d", 2)
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


def parse_since(text: str | None) -> float | None:
    """A duration back from now ('30d') or a date/time ('2026-01-01') -> Unix seconds."""
    if not text:
        return None
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        return time.time() - parse_duration(text)
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return when.timestamp()


def parse_scope(items: list[str] | None) -> dict[str, str]:
    scope: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise CLIError(f"invalid scope {item!r}: use KEY=VALUE, e.g. app=chatbot", 2)
        scope[key.strip()] = value.strip()
    return scope


def command_function(args: argparse.Namespace) -> Callable[[argparse.Namespace], int]:
    """The function of the parsed command, from its module (imported now)."""
    module, _, name = args.run.partition(":")
    return getattr(importlib.import_module(f"costwatch.cli.{module}"), name)


def _common(p: argparse.ArgumentParser, offline: bool = True) -> None:
    """Every command that talks to a daemon: where it is, or a file to work on offline instead."""
    p.add_argument(
        "--url",
        help="the daemon's URL (default: COSTWATCH_URL, the config file's url, http://127.0.0.1:7707)",
    )
    if offline:
        p.add_argument(
            "--db", type=Path, help="work on this DuckDB file offline instead of asking the daemon"
        )
    p.add_argument("--config", type=Path, help="config file (TOML or YAML)")
    p.add_argument(
        "--timeout", type=float, metavar="SECONDS", help="how long to wait for the daemon's answer"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="costwatch", description="LLM API cost monitoring sidecar.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("daemon", help="run the per-host daemon")
    p.add_argument("--db", type=Path, help="DuckDB file (default: <state dir>/costwatch.duckdb)")
    p.add_argument("--config", type=Path, help="config file (TOML or YAML)")
    p.add_argument("--host", help="address to listen on (default 127.0.0.1; COSTWATCH_HOST)")
    p.add_argument("--port", help="port to listen on (default 7707; COSTWATCH_PORT)")
    p.add_argument("--rules", type=Path, help="directory of rule files")
    p.add_argument(
        "--fleet-dsn", help="PostgreSQL DSN of the fleet ledger (COSTWATCH_FLEET_DSN; docs/fleet.md)"
    )
    p.set_defaults(run="daemon_cmd:cmd_daemon")

    p = sub.add_parser("sql", help="run one read-only SQL query")
    _common(p)
    p.add_argument("query")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    p.add_argument("--fleet", action="store_true", help="query the fleet ledger (PostgreSQL SQL, read-only)")
    p.set_defaults(run="query:cmd_sql")

    p = sub.add_parser("kill", help="engage a kill switch")
    _common(p)
    p.add_argument("--scope", action="append", metavar="KEY=VALUE", help="app, provider, model or user")
    p.add_argument("--reason", required=True)
    p.add_argument("--for", dest="for_", metavar="DURATION", help="lift automatically after e.g. 30m")
    p.add_argument("--fleet", action="store_true", help="engage it on every daemon of the fleet")
    p.set_defaults(run="switch:cmd_kill")

    p = sub.add_parser("resume", help="lift a kill switch (the global one without --scope)")
    _common(p)
    p.add_argument("--scope", action="append", metavar="KEY=VALUE")
    p.add_argument("--all", action="store_true", help="lift every engaged kill switch")
    p.add_argument("--fleet", action="store_true", help="lift a fleet kill switch (on every daemon)")
    p.set_defaults(run="switch:cmd_resume")

    p = sub.add_parser("status", help="daemon state, spend and engaged kill switches")
    _common(p)
    p.set_defaults(run="status:cmd_status")

    p = sub.add_parser("reprice", help="recompute stored costs with current prices")
    _common(p)
    p.add_argument("--since", help="e.g. 30d or 2026-01-01 (default: everything)")
    p.set_defaults(run="reprice:cmd_reprice")

    p = sub.add_parser("export", help="write daily Parquet files of usage_events")
    _common(p)
    p.add_argument("--parquet", required=True, metavar="DIR")
    p.add_argument("--since", help="e.g. 30d or 2026-01-01 (default: everything)")
    p.set_defaults(run="query:cmd_export")

    rules = sub.add_parser("rules", help="check, reload or backtest alert rules").add_subparsers(
        dest="rules_command", required=True
    )
    p = rules.add_parser("check", help="validate rule files: each error with file, line and field")
    p.add_argument("dir", nargs="?", type=Path, help="rules directory (default ./alerts)")
    p.set_defaults(run="rules:cmd_rules_check")
    p = rules.add_parser("reload", help="make the running daemon reload its rules (old rules kept on error)")
    _common(p, offline=False)
    p.set_defaults(run="rules:cmd_rules_reload")
    p = rules.add_parser("backtest", help="replay rules over stored history: when each would have fired")
    _common(p)
    p.add_argument("dir", nargs="?", type=Path, help="rules directory (default ./alerts)")
    p.add_argument("--since", default="30d", help="e.g. 30d or 2026-01-01 (default 30d)")
    p.add_argument("--step", default="15m", help="evaluation step, e.g. 5m (default 15m)")
    p.set_defaults(run="rules:cmd_rules_backtest")
    return parser
