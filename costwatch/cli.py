"""`costwatch` command line: a thin layer over the daemon's HTTP API.

While the daemon runs it holds DuckDB's file lock, so every command goes
through its API; when it is not running, commands open the file themselves
with the same code (read-only and sandboxed for `sql`). Errors are one line
on stderr with exit status 1 (2 for usage errors), never a traceback.

Start-up is on the kill switch's critical path (an operator's `costwatch kill`
until the processes refuse calls), so this module imports only the standard
library at the top: the daemon's address comes from `costwatch.sources` (no
pydantic), requests go out on one `http.client` connection, and pydantic,
duckdb and the daemon's modules are imported only by the paths that need them
(the daemon itself, or the fallback that opens the file when no daemon answers).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import sys
import time
from pathlib import Path

TYPE_CHECKING = False  # not `typing`'s: the light path does not import typing (see costwatch.sources)
if TYPE_CHECKING:
    import http.client
    from typing import Any, NoReturn

    from costwatch.sources import DaemonEndpoint

__all__ = ["main", "parse_duration", "parse_since"]


class CLIError(Exception):
    """A one-line error for the user; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


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


# -- settings and the daemon client -----------------------------------------------------
def load_settings(args: argparse.Namespace, **extra: Any) -> Any:
    """DaemonSettings from flags > env > config file; an invalid value is one line naming the field."""
    from pydantic import ValidationError

    from costwatch.settings import DaemonSettings

    if getattr(args, "config", None):
        os.environ["COSTWATCH_CONFIG"] = str(args.config)
    extra.setdefault("host", getattr(args, "host", None))
    extra.setdefault("port", getattr(args, "port", None))
    overrides = {k: v for k, v in extra.items() if v is not None}
    if getattr(args, "db", None):
        overrides["db"] = args.db
    try:
        return DaemonSettings(**overrides)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "settings"
        raise CLIError(f"invalid setting {field}: {err['msg']} (got {err.get('input')!r})", 2) from None
    except (OSError, ValueError) as exc:
        raise CLIError(f"cannot read the config file: {exc}", 2) from None


class _DaemonDown(CLIError):
    """Nothing accepted a connection at the daemon's address; commands that can open the file do so."""


def client_for(args: argparse.Namespace) -> Client:
    """The daemon's address and token from flags > env > config file > token file, without pydantic."""
    from costwatch.sources import SettingError, daemon_endpoint

    if getattr(args, "config", None):
        os.environ["COSTWATCH_CONFIG"] = str(args.config)
    try:
        endpoint = daemon_endpoint(getattr(args, "host", None), getattr(args, "port", None))
    except SettingError as exc:
        raise CLIError(f"invalid setting {exc.field}: {exc.msg} (got {exc.value!r})", 2) from None
    except (OSError, ValueError) as exc:
        raise CLIError(f"cannot read the config file: {exc}", 2) from None
    return Client(endpoint)


class Client:
    """The daemon's HTTP API as seen from the CLI: one kept-alive ``http.client`` connection.

    There is no separate health probe: a request whose connection is refused
    raises `_DaemonDown`, which the commands with a file fallback catch.
    """

    connect_timeout_s = 1.0

    def __init__(self, endpoint: DaemonEndpoint) -> None:
        self.endpoint = endpoint
        self.url = endpoint.url
        self.token = endpoint.token
        self._conn: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: Any = None, timeout: float = 120) -> Any:
        import http.client
        import json

        payload = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json"}
        if payload is not None:
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        for attempt in (0, 1):
            reused = self._conn is not None
            conn = self._connection(timeout)
            try:
                conn.request(method, path, body=payload, headers=headers)
                response = conn.getresponse()
                status, raw = response.status, response.read()
                break
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                # A kept-alive connection the daemon closed meanwhile is retried once.
                stale = isinstance(
                    exc, ConnectionResetError | BrokenPipeError | http.client.RemoteDisconnected
                )
                if attempt or not reused or not stale:
                    raise CLIError(f"cannot reach the daemon at {self.url}: {exc}") from None
        try:
            data = json.loads(raw)
        except ValueError:
            data = {"error": raw.decode("utf-8", "replace").strip()[:200]}
        if status >= 400:
            message = data.get("error") if isinstance(data, dict) else None
            raise CLIError(message or f"the daemon answered HTTP {status}")
        return data

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        import http.client

        conn = self._conn
        if conn is None or conn.sock is None:
            conn = http.client.HTTPConnection(
                self.endpoint.host, self.endpoint.port, timeout=self.connect_timeout_s
            )
            try:
                conn.connect()
            except OSError as exc:
                conn.close()
                raise _DaemonDown(f"cannot reach the daemon at {self.url}: {exc}") from None
            self._conn = conn
        conn.sock.settimeout(timeout)  # type: ignore[union-attr]
        return conn

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


def _open_file_without_daemon(settings: Any, client: Client) -> Any:
    """The DB file, read-only, for commands that found no daemon answering."""
    try:
        return _open_read_only(settings)
    except _Locked:
        raise CLIError(
            f"{settings.db_path} is locked but the daemon does not answer at {client.url}"
        ) from None


def _open_read_only(settings: Any) -> Any:
    import duckdb

    from costwatch.daemon.store import open_database

    path = settings.db_path
    if not path.exists():
        raise CLIError(f"no database at {path} (start `costwatch daemon` first, or pass --db)")
    try:
        return open_database(
            path,
            read_only=True,
            memory_limit=settings.duckdb_memory_limit,
            threads=settings.duckdb_threads,
            timezone=settings.timezone,
        )
    except duckdb.IOException as exc:
        if "lock" in str(exc).lower():
            raise _Locked() from None
        raise CLIError(f"cannot open {path}: {str(exc).splitlines()[0]}") from None


class _Locked(Exception):
    """The file is held by a running daemon."""


# -- commands ---------------------------------------------------------------------------
def default_services(settings: Any) -> list[Any]:
    """Background services the daemon runs beside HTTP: the rules engine.

    Each item is an object with ``start()``/``shutdown()`` or a factory
    ``f(daemon) -> service`` (it gets ``daemon.store``, ``daemon.killswitches``,
    ``daemon.settings``); see `costwatch.daemon.server`.
    """
    from costwatch.daemon.scheduler import RuleMetricsCollector, RuleService

    def rules(daemon: Any) -> Any:
        service = RuleService.from_settings(
            daemon.settings, daemon.store.con.cursor, daemon.killswitches, daemon.store.call
        )
        daemon.metrics.registry.register(RuleMetricsCollector(service))
        service.install_sighup()  # `kill -HUP` reloads the rules (we are on the main thread here)
        return service

    from costwatch.daemon.leases import LeaseService

    return [rules, LeaseService.for_daemon]


def default_routes() -> Any:
    """Extra routes placed before the API's: hard-limit leases, the spend page at ``/``."""
    from costwatch.daemon.leases import lease_routes
    from costwatch.daemon.web import web_routes

    return lambda daemon: [*lease_routes(daemon), *web_routes(daemon)]


def _banner(daemon: Any, port: int) -> str:
    from costwatch.daemon.web import page_url

    return "spend page: " + page_url(daemon.settings.host, port, daemon.token)


def cmd_daemon(args: argparse.Namespace) -> int:
    import duckdb

    from costwatch.daemon.server import serve

    settings = load_settings(args, rules=args.rules)
    rules_dir = _rules_dir(settings.rules)
    if rules_dir is not None:
        from costwatch.daemon.rules import check_rules

        errors = check_rules(rules_dir)
        if errors:
            raise CLIError("invalid rules, not starting:\n  " + "\n  ".join(errors), 2)
    try:
        serve(settings, default_services(settings), default_routes(), banner=_banner)
    except duckdb.IOException as exc:
        if "lock" in str(exc).lower():
            raise CLIError(
                f"{settings.db_path} is locked by another process (is a daemon already running?)"
            ) from None
        raise CLIError(f"cannot open {settings.db_path}: {str(exc).splitlines()[0]}") from None
    except OSError as exc:
        raise CLIError(f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}") from None
    return 0


def cmd_sql(args: argparse.Namespace) -> int:
    if not args.db:  # the daemon holds the file while it runs: ask it first
        client = client_for(args)
        try:
            data = client.request("POST", "/v1/sql", {"sql": args.query})
        except _DaemonDown:
            pass
        else:
            _print_daemon_rows(data, args.format)
            return 0
    from costwatch.daemon.sql import QueryError, run_query

    settings = load_settings(args)
    try:
        con = _open_read_only(settings)
    except _Locked:  # --db names the file the running daemon holds
        data = client_for(args).request("POST", "/v1/sql", {"sql": args.query})
        _print_daemon_rows(data, args.format)
        return 0
    try:
        result = run_query(con, args.query, timeout_s=settings.sql_timeout_s, max_rows=settings.sql_max_rows)
    except QueryError as exc:
        raise CLIError(str(exc)) from None
    finally:
        con.close()
    _print_rows(result.columns, result.rows, args.format, result.truncated, from_daemon=False)
    return 0


def _print_daemon_rows(data: dict[str, Any], fmt: str) -> None:
    _print_rows(data["columns"], data["rows"], fmt, data.get("truncated", False), from_daemon=True)


def _print_rows(columns: list[str], rows: list[Any], fmt: str, truncated: bool, *, from_daemon: bool) -> None:
    """Rows from the daemon are JSON values already: printing them needs neither duckdb nor the sandbox."""
    if fmt == "csv":
        from costwatch.daemon.sql import to_csv

        sys.stdout.write(to_csv(columns, rows))
    elif fmt == "json":
        if from_daemon:
            from msgspec.json import encode  # the same bytes as the sandbox's encoder gives JSON values
        else:
            from costwatch.daemon.sql import encode  # dates, decimals, UUIDs straight from DuckDB
        sys.stdout.write(encode([dict(zip(columns, row, strict=True)) for row in rows]).decode() + "\n")
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(*columns, show_lines=False)
        for row in rows:
            table.add_row(*("NULL" if v is None else str(v) for v in row))
        Console().print(table)
        if truncated:
            print(f"(truncated to {len(rows)} rows)", file=sys.stderr)
    if truncated and fmt != "table":
        print(f"costwatch: result truncated to {len(rows)} rows", file=sys.stderr)


def _direct_registry(settings: Any) -> tuple[Any, Any]:
    """A kill-switch registry on the file itself (daemon down)."""
    import duckdb

    from costwatch.daemon.killswitch import KillSwitchRegistry
    from costwatch.daemon.store import open_database

    try:
        con = open_database(settings.db_path, timezone=settings.timezone)
    except duckdb.IOException as exc:
        first = str(exc).splitlines()[0]
        raise CLIError(f"the daemon is not answering and {settings.db_path} is locked ({first})") from None

    def write(fn: Any) -> Any:
        con.execute("BEGIN")
        try:
            result = fn(con)
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")
        return result

    return con, KillSwitchRegistry(write, KillSwitchRegistry.load(con))


def cmd_kill(args: argparse.Namespace) -> int:
    scope = parse_scope(args.scope)
    for_s = parse_duration(args.for_) if args.for_ else None
    client = client_for(args)
    where = ", ".join(f"{k}={v}" for k, v in sorted(scope.items())) or "global"
    body = {"action": "engage", "scope": scope, "reason": args.reason, "for_s": for_s, "source": "cli"}
    try:
        client.request("POST", "/v1/killswitch", body)
    except _DaemonDown:
        from costwatch.daemon.killswitch import ScopeError

        con, registry = _direct_registry(load_settings(args))
        try:
            registry.engage(scope, args.reason, "cli", time.time() + for_s if for_s else None)
        except ScopeError as exc:
            raise CLIError(str(exc), 2) from None
        finally:
            con.close()
    until = f" for {args.for_}" if for_s else ""
    print(f"kill switch engaged: scope {where}{until} ({args.reason})")
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    scope = parse_scope(args.scope)
    if args.all and scope:
        raise CLIError("use either --scope or --all", 2)
    client = client_for(args)
    body = {"action": "lift", "scope": scope, "all": bool(args.all), "by": "cli"}
    try:
        lifted = client.request("POST", "/v1/killswitch", body)["lifted"]
    except _DaemonDown:
        from costwatch.daemon.killswitch import ScopeError

        con, registry = _direct_registry(load_settings(args))
        try:
            lifted = registry.lift(None if args.all else scope, "cli")
        except ScopeError as exc:
            raise CLIError(str(exc), 2) from None
        finally:
            con.close()
    where = (
        "all scopes"
        if args.all
        else "scope " + (", ".join(f"{k}={v}" for k, v in sorted(scope.items())) or "global")
    )
    print(f"lifted {lifted} kill switch(es) on {where}")
    return 0 if lifted else 1


def cmd_status(args: argparse.Namespace) -> int:
    client = client_for(args)
    try:
        data = client.request("GET", "/v1/status")
    except _DaemonDown:
        from costwatch.daemon import store as store_mod
        from costwatch.daemon.killswitch import KillSwitchRegistry

        settings = load_settings(args)
        forecasts = []
        print(f"daemon: not running (nothing answered at {client.url})")
        con = _open_file_without_daemon(settings, client)
        try:
            data = store_mod.summary(con, settings.timezone)
            engaged = [
                {"scope": r[1], "reason": r[2], "source": r[3], "engaged_at": r[4], "expires_at": r[5]}
                for r in KillSwitchRegistry.load(con)
                if r[5] is None or r[5] > time.time()
            ]
        finally:
            con.close()
    else:
        print(f"daemon: running at {client.url} (up {data['uptime_s']:.0f} s)")
        if data.get("health"):
            print("health: degraded: " + "; ".join(data["health"]))
        engaged = data["killswitch"]["engaged"]
        forecasts = client.request("GET", "/v1/budgets").get("budgets", [])
    print(f"events stored: {data['events']}")
    print(
        f"spend today: ${data['spend_today_usd']:.4f}   "
        f"month to date: ${data['spend_month_usd']:.4f} ({data['timezone']})"
    )
    print(f"unpriced events: {data['unpriced']}   without usage: {data['usage_missing']}")
    if "usage_estimated" in data:  # an older daemon does not report it
        print(
            f"estimated usage: {data['usage_estimated']} events"
            f" (${data['spend_month_estimated_usd']:.4f} of this month's spend)"
        )
    for line in _forecast_lines(forecasts):
        print(line)
    if not engaged:
        print("kill switches: none engaged")
    for ks in engaged:
        where = ", ".join(f"{k}={v}" for k, v in sorted(ks["scope"].items())) or "global"
        since = dt.datetime.fromtimestamp(ks["engaged_at"], tz=dt.timezone.utc).isoformat(timespec="seconds")
        until = ""
        if ks.get("expires_at"):
            until = ", until " + dt.datetime.fromtimestamp(ks["expires_at"], tz=dt.timezone.utc).isoformat(
                timespec="seconds"
            )
        print(f"kill switch ENGAGED: scope {where} since {since}{until} by {ks['source']}: {ks['reason']}")
    return 0


def cmd_reprice(args: argparse.Namespace) -> int:
    from costwatch.daemon.store import reprice_file
    from costwatch.pricing import Pricer

    settings = load_settings(args)
    since = parse_since(args.since)
    client = client_for(args)
    try:
        result = client.request("POST", "/v1/admin/reprice", {"since": since}, timeout=600)
    except _DaemonDown:
        result = reprice_file(settings.db_path, Pricer(settings.prices), since, timezone=settings.timezone)
    print(f"repriced {result['repriced']} events ({result['priced']} priced)")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from costwatch.daemon.store import export_parquet

    settings = load_settings(args)
    since = parse_since(args.since)
    directory = Path(args.parquet).resolve()
    client = client_for(args)
    try:
        result = client.request(
            "POST", "/v1/admin/export", {"dir": str(directory), "since": since}, timeout=600
        )
    except _DaemonDown:
        con = _open_file_without_daemon(settings, client)
        try:
            result = export_parquet(con, directory, since)
        except OSError as exc:
            raise CLIError(f"cannot write {directory}: {exc.strerror or exc}") from None
        finally:
            con.close()
    print(f"exported {result['rows']} events into {len(result['files'])} file(s) under {directory}")
    return 0


def _rules_dir(configured: Path | None) -> Path | None:
    """The configured rules directory, else ./alerts when present (as the daemon does)."""
    if configured is not None:
        return configured
    return Path("alerts") if Path("alerts").is_dir() else None


def _forecast_lines(forecasts: list[dict[str, Any]]) -> list[str]:
    """One line per budget (and group): spent vs limit and the burn-rate projection."""
    lines = []
    for item in forecasts:
        unit = "$" if item.get("unit", "usd") == "usd" else ""
        for group in item.get("groups", []):
            where = f" [{group['scope']}]" if group.get("scope") else ""
            lines.append(
                f"budget {item['rule']}{where}: {unit}{group['spent']:,.4f} of {unit}{item['limit']:,.2f}"
                f" ({100 * group['used_ratio']:.0f}%); {group['summary']}"
            )
    return lines


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
    load_settings(args)  # an invalid setting is reported as for every other command
    result = client_for(args).request("POST", "/v1/rules/reload")
    if result["errors"]:
        for line in result["errors"]:
            print(line, file=sys.stderr)
        print("rules NOT reloaded; the daemon keeps running the previous rules", file=sys.stderr)
        return 1
    print(f"reloaded {result['rules']} rule(s)")
    return 0


def cmd_rules_backtest(args: argparse.Namespace) -> int:
    import datetime as _dt

    from costwatch.daemon.evaluate import backtest
    from costwatch.daemon.rules import RuleError, load_rules

    settings = load_settings(args)
    directory = _rules_dir(args.dir)
    if directory is None:
        raise CLIError("no rules directory: give one (costwatch rules backtest DIR) or create ./alerts", 2)
    since = parse_since(args.since)
    step_s = parse_duration(args.step)
    client = client_for(args)
    body = {"dir": str(directory.resolve()), "since": since, "step_s": step_s}
    try:
        print(client.request("POST", "/v1/rules/backtest", body, timeout=600)["report"])
        return 0
    except _DaemonDown:
        pass
    try:
        ruleset = load_rules(directory)
    except RuleError as exc:
        raise CLIError("invalid rules:\n  " + "\n  ".join(exc.errors), 2) from None
    con = _open_file_without_daemon(settings, client)
    try:
        utc = _dt.timezone.utc
        report = backtest(
            ruleset,
            con.cursor,
            _dt.datetime.fromtimestamp(since or 0, utc),
            _dt.datetime.now(utc),
            _dt.timedelta(seconds=step_s),
            settings.timezone,
        )
    finally:
        con.close()
    print(report.format())
    return 0


# -- argument parsing -------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="costwatch", description="LLM API cost monitoring sidecar.")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--db", type=Path, help="DuckDB file (default: <state dir>/costwatch.duckdb)")
        p.add_argument("--config", type=Path, help="config file (TOML or YAML)")
        p.add_argument("--host", help="daemon address (default 127.0.0.1)")
        p.add_argument("--port", help="daemon port (default 7707)")

    p = sub.add_parser("daemon", help="run the per-host daemon")
    common(p)
    p.add_argument("--rules", type=Path, help="directory of rule files")
    p.set_defaults(func=cmd_daemon)

    p = sub.add_parser("sql", help="run one read-only SQL query")
    common(p)
    p.add_argument("query")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    p.set_defaults(func=cmd_sql)

    p = sub.add_parser("kill", help="engage a kill switch")
    common(p)
    p.add_argument("--scope", action="append", metavar="KEY=VALUE", help="app, provider, model or user")
    p.add_argument("--reason", required=True)
    p.add_argument("--for", dest="for_", metavar="DURATION", help="lift automatically after e.g. 30m")
    p.set_defaults(func=cmd_kill)

    p = sub.add_parser("resume", help="lift a kill switch (the global one without --scope)")
    common(p)
    p.add_argument("--scope", action="append", metavar="KEY=VALUE")
    p.add_argument("--all", action="store_true", help="lift every engaged kill switch")
    p.set_defaults(func=cmd_resume)

    p = sub.add_parser("status", help="daemon state, spend and engaged kill switches")
    common(p)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("reprice", help="recompute stored costs with current prices")
    common(p)
    p.add_argument("--since", help="e.g. 30d or 2026-01-01 (default: everything)")
    p.set_defaults(func=cmd_reprice)

    p = sub.add_parser("export", help="write daily Parquet files of usage_events")
    common(p)
    p.add_argument("--parquet", required=True, metavar="DIR")
    p.add_argument("--since", help="e.g. 30d or 2026-01-01 (default: everything)")
    p.set_defaults(func=cmd_export)

    rules = sub.add_parser("rules", help="check, reload or backtest alert rules").add_subparsers(
        dest="rules_command", required=True
    )
    p = rules.add_parser("check", help="validate rule files: each error with file, line and field")
    p.add_argument("dir", nargs="?", type=Path, help="rules directory (default ./alerts)")
    p.set_defaults(func=cmd_rules_check)
    p = rules.add_parser("reload", help="make the running daemon reload its rules (old rules kept on error)")
    common(p)
    p.set_defaults(func=cmd_rules_reload)
    p = rules.add_parser("backtest", help="replay rules over stored history: when each would have fired")
    common(p)
    p.add_argument("dir", nargs="?", type=Path, help="rules directory (default ./alerts)")
    p.add_argument("--since", default="30d", help="e.g. 30d or 2026-01-01 (default 30d)")
    p.add_argument("--step", default="15m", help="evaluation step, e.g. 5m (default 15m)")
    p.set_defaults(func=cmd_rules_backtest)
    return parser


def main(argv: list[str] | None = None) -> NoReturn:
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
    except CLIError as exc:
        print(f"costwatch: {exc}", file=sys.stderr)
        code = exc.code
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
