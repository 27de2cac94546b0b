"""`costwatch` command line: a thin layer over the daemon's HTTP API.

Every command finds the daemon where apps do: ``--url`` > ``COSTWATCH_URL`` >
the config file's ``url`` > ``http://127.0.0.1:7707``. A command never falls
back to a file on its own: when no daemon answers at that URL it says so and
exits 1 (a kill switch it could not engage is never reported as engaged).
Offline work on a file is asked for with ``--db PATH`` and says so in its
output; when a running daemon holds PATH, the command goes through that daemon
if it is the one at the URL. Errors are one line on stderr with exit status 1
(2 for usage errors), never a traceback.

Start-up is on the kill switch's critical path (an operator's `costwatch kill`
until the processes refuse calls), so this module imports only the standard
library at the top: the daemon's address comes from `costwatch.sources` (no
pydantic), requests go out on one `costwatch.connection` connection, and pydantic,
duckdb and the daemon's modules are imported only by the paths that need them
(the daemon itself, or ``--db PATH`` working on the file offline).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import sys
import time
from pathlib import Path

from costwatch.money import fmt_usd

TYPE_CHECKING = False  # not `typing`'s: the light path does not import typing (see costwatch.sources)
if TYPE_CHECKING:
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


def client_for(args: argparse.Namespace) -> Client:
    """The daemon at ``--url`` > ``COSTWATCH_URL`` > the config file's ``url`` > the default, as apps find it."""
    from costwatch.sources import SettingError, daemon_endpoint

    if getattr(args, "config", None):
        os.environ["COSTWATCH_CONFIG"] = str(args.config)
    try:
        endpoint = daemon_endpoint(getattr(args, "url", None))
    except SettingError as exc:
        raise CLIError(f"invalid setting {exc.field}: {exc.msg} (got {exc.value!r})", 2) from None
    except (OSError, ValueError) as exc:
        raise CLIError(f"cannot read the config file: {exc}", 2) from None
    timeout = getattr(args, "timeout", None)
    if timeout is not None and timeout <= 0:
        raise CLIError("--timeout must be a positive number of seconds", 2)
    return Client(endpoint, timeout)


class Client:
    """The daemon's HTTP API as seen from the CLI, over one `DaemonConnection`.

    Every failure is a `CLIError` that names the URL: nothing answering, an answer that
    never came (a hung daemon), or one that is not a costwatch daemon's. There is no file
    fallback here: offline use is ``--db PATH`` only.
    """

    connect_timeout_s = 1.0

    def __init__(self, endpoint: DaemonEndpoint, timeout: float | None = None) -> None:
        from costwatch.connection import DaemonConnection

        self.timeout = timeout  # --timeout: replaces each request's own default
        self.endpoint = endpoint
        self.url = endpoint.url
        self.token = endpoint.token
        self._conn = DaemonConnection(endpoint.url, self.connect_timeout_s)

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        timeout: float = 120,
        expect: tuple[str, ...] = (),
        not_done: str = "",
    ) -> Any:
        """The JSON object the daemon answered; ``expect`` names keys a real answer has.

        ``not_done`` ends the message when the request surely did not take effect (nothing
        answered); a request that was sent but never answered says the outcome is unknown.
        """
        import http.client
        import json

        from costwatch.connection import NotConnected

        timeout = self.timeout or timeout
        payload = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json"}
        if payload is not None:
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        unknown = "; it is not known whether it took effect" if not_done else ""
        try:
            status, raw = self._conn.request(method, path, payload, headers, timeout)
        except NotConnected as exc:
            raise CLIError(f"no daemon answered at {self.url} ({exc}){not_done}") from None
        except TimeoutError:
            raise CLIError(
                f"the daemon at {self.url} accepted the connection but did not answer"
                f" within {timeout:g} s{unknown}"
            ) from None
        except (OSError, http.client.HTTPException) as exc:
            raise CLIError(f"the daemon at {self.url} failed to answer: {exc!r}{unknown}") from None
        try:
            data = json.loads(raw)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            snippet = raw[:80].decode("utf-8", "replace").strip()
            raise CLIError(
                f"{self.url} did not answer like a costwatch daemon (HTTP {status}: {snippet!r}){not_done}"
            )
        if status >= 400:
            message = data.get("error") if isinstance(data.get("error"), str) else None
            if status in (400, 422) and message:
                raise CLIError(message)
            raise CLIError(f"the daemon at {self.url} answered HTTP {status}: {message or data}{not_done}")
        if any(key not in data for key in expect):
            raise CLIError(f"{self.url} did not answer like a costwatch daemon (no {expect}){not_done}")
        return data

    def close(self) -> None:
        self._conn.close()


def _offline(args: argparse.Namespace) -> Any:
    """``--db PATH``: the settings for working on the file itself (None without ``--db``)."""
    return load_settings(args) if getattr(args, "db", None) else None


def _holder(args: argparse.Namespace, settings: Any) -> Client:
    """``--db PATH`` is locked: go through the daemon at the URL only if it serves exactly PATH."""
    client = client_for(args)
    path = settings.db_path
    try:
        served = client.request("GET", "/v1/status", timeout=10, expect=("db_path",))["db_path"]
    except CLIError as exc:
        raise CLIError(f"{path} is locked by another process, and {exc}") from None
    if Path(served).resolve() != Path(path).resolve():
        raise CLIError(f"{path} is locked by another process; the daemon at {client.url} serves {served}")
    print(f"costwatch: {path} is served by the daemon at {client.url}: going through it", file=sys.stderr)
    return client


def _open_read_only(settings: Any) -> Any:
    import duckdb

    from costwatch.daemon.store import open_database

    path = settings.db_path
    if not path.exists():
        raise CLIError(f"no database at {path}")
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


def _offline_note(settings: Any) -> None:
    print(f"costwatch: offline: read {settings.db_path} directly (no daemon consulted)", file=sys.stderr)


# -- commands ---------------------------------------------------------------------------
def cmd_daemon(args: argparse.Namespace) -> int:
    import duckdb

    from costwatch.daemon.server import serve

    settings = load_settings(args, rules=args.rules, fleet_dsn=args.fleet_dsn)
    rules_dir = _rules_dir(settings.rules)
    if rules_dir is not None:
        from costwatch.daemon.rules import check_rules

        errors = check_rules(rules_dir)
        if errors:
            raise CLIError("invalid rules, not starting:\n  " + "\n  ".join(errors), 2)
        if not settings.fleet_dsn:
            from costwatch.daemon.rules import load_rules

            fleet = [r.name for r in load_rules(rules_dir).hard_budgets if r.fleet]
            if fleet:
                print(
                    f"costwatch: warning: fleet budget(s) {', '.join(fleet)} need fleet mode (fleet_dsn /"
                    " COSTWATCH_FLEET_DSN): without it they grant nothing and refuse every call they cover",
                    file=sys.stderr,
                )
    try:
        serve(settings)
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
    if args.fleet:  # the fleet ledger, through the local daemon (it holds the Postgres connection)
        if args.db:
            raise CLIError("--fleet queries the fleet ledger through the daemon: it does not take --db", 2)
        client = client_for(args)
        data = client.request("POST", "/v1/sql?fleet=1", {"sql": args.query}, expect=("columns", "rows"))
        _print_daemon_rows(data, args.format)
        return 0
    settings = _offline(args)
    if settings is None:  # the daemon holds the file while it runs: ask it
        _print_daemon_rows(_daemon_sql(client_for(args), args.query), args.format)
        return 0
    from costwatch.daemon.sql import QueryError, run_query

    try:
        con = _open_read_only(settings)
    except _Locked:  # --db names the file a running daemon holds
        _print_daemon_rows(_daemon_sql(_holder(args, settings), args.query), args.format)
        return 0
    _offline_note(settings)
    try:
        result = run_query(con, args.query, timeout_s=settings.sql_timeout_s, max_rows=settings.sql_max_rows)
    except QueryError as exc:
        raise CLIError(str(exc)) from None
    finally:
        con.close()
    _print_rows(result.columns, result.rows, args.format, result.truncated, from_daemon=False)
    return 0


def _daemon_sql(client: Client, query: str) -> dict[str, Any]:
    return client.request("POST", "/v1/sql", {"sql": query}, expect=("columns", "rows"))


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
        _print_table(columns, [["NULL" if v is None else str(v) for v in row] for row in rows])
        if truncated:
            print(f"(truncated to {len(rows)} rows)", file=sys.stderr)
    if truncated and fmt != "table":
        print(f"costwatch: result truncated to {len(rows)} rows", file=sys.stderr)


def _print_table(columns: list[str], cells: list[list[str]]) -> None:
    """A rich table with the daemon's packages installed; aligned plain text with an app's install alone."""
    try:
        from rich.console import Console
        from rich.table import Table
    except ModuleNotFoundError:
        widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
        for line in (columns, ["-" * w for w in widths], *cells):
            print("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip())
        return
    table = Table(*columns, show_lines=False)
    for row in cells:
        table.add_row(*row)
    Console().print(table)


def _file_registry(args: argparse.Namespace, settings: Any) -> tuple[Any, Any] | Client:
    """``--db PATH``: a kill-switch registry on the file, or the daemon that holds it."""
    import duckdb

    from costwatch.daemon.killswitch import KillSwitchRegistry
    from costwatch.daemon.store import open_database

    if not settings.db_path.exists():
        raise CLIError(f"no database at {settings.db_path}")
    try:
        con = open_database(settings.db_path, timezone=settings.timezone)
    except duckdb.IOException as exc:
        if "lock" in str(exc).lower():
            return _holder(args, settings)
        raise CLIError(f"cannot open {settings.db_path}: {str(exc).splitlines()[0]}") from None

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


_NOT_ENGAGED = "; the kill switch was NOT engaged"
_NOT_LIFTED = "; nothing was lifted"
_TOLD_NOBODY = "no daemon was told: apps learn it only once a daemon serves this file"
_WRITE_TIMEOUT_S = 15.0


def _switch_target(args: argparse.Namespace, fleet_does: str) -> tuple[Any, Any] | Client:
    """The daemon at the URL (always for --fleet), or with --db the file's registry (or its daemon)."""
    if args.fleet:
        if args.db:
            raise CLIError(f"--fleet goes through the daemon (it {fleet_does}): no --db", 2)
        return client_for(args)
    settings = _offline(args)
    return client_for(args) if settings is None else _file_registry(args, settings)


def cmd_kill(args: argparse.Namespace) -> int:
    scope = parse_scope(args.scope)
    for_s = parse_duration(args.for_) if args.for_ else None
    where = ", ".join(f"{k}={v}" for k, v in sorted(scope.items())) or "global"
    until = f" for {args.for_}" if for_s else ""
    target = _switch_target(args, "writes the switch into Postgres")
    if isinstance(target, Client):
        body = {"action": "engage", "scope": scope, "reason": args.reason, "for_s": for_s, "source": "cli"}
        target.request(
            "POST",
            "/v1/killswitch?fleet=1" if args.fleet else "/v1/killswitch",
            body,
            timeout=_WRITE_TIMEOUT_S,
            expect=("killswitch",),
            not_done=_NOT_ENGAGED,
        )
        done = (
            f"FLEET kill switch engaged through {target.url}"
            if args.fleet
            else f"kill switch engaged at {target.url}"
        )
        print(f"{done}: scope {where}{until} ({args.reason})")
        return 0
    from costwatch.daemon.killswitch import ScopeError

    con, registry = target
    try:
        registry.engage(scope, args.reason, "cli", time.time() + for_s if for_s else None)
    except ScopeError as exc:
        raise CLIError(str(exc), 2) from None
    finally:
        con.close()
    print(f"kill switch engaged in {args.db}: scope {where}{until} ({args.reason}); offline: {_TOLD_NOBODY}")
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    scope = parse_scope(args.scope)
    if args.all and scope:
        raise CLIError("use either --scope or --all", 2)
    where = (
        "all scopes"
        if args.all
        else "scope " + (", ".join(f"{k}={v}" for k, v in sorted(scope.items())) or "global")
    )
    target = _switch_target(args, "lifts the switch in Postgres")
    if isinstance(target, Client):
        body = {"action": "lift", "scope": scope, "all": bool(args.all), "by": "cli"}
        reply = target.request(
            "POST",
            "/v1/killswitch?fleet=1" if args.fleet else "/v1/killswitch",
            body,
            timeout=_WRITE_TIMEOUT_S,
            expect=("lifted",),
            not_done=_NOT_LIFTED,
        )
        lifted = reply["lifted"]
        kind, at = ("FLEET kill switch(es)", "through") if args.fleet else ("kill switch(es)", "at")
        print(f"lifted {lifted} {kind} on {where} {at} {target.url}")
        return 0 if lifted else 1
    from costwatch.daemon.killswitch import ScopeError

    con, registry = target
    try:
        lifted = registry.lift(None if args.all else scope, "cli")
    except ScopeError as exc:
        raise CLIError(str(exc), 2) from None
    finally:
        con.close()
    print(f"lifted {lifted} kill switch(es) on {where} in {args.db}; offline: {_TOLD_NOBODY}")
    return 0 if lifted else 1


def cmd_status(args: argparse.Namespace) -> int:
    settings = _offline(args)
    forecasts: list[dict[str, Any]] = []
    if settings is not None:
        try:
            con = _open_read_only(settings)
        except _Locked:
            client = _holder(args, settings)
        else:
            client = None
            from costwatch.daemon import store as store_mod
            from costwatch.daemon.killswitch import KillSwitchRegistry

            print(f"daemon: not consulted (offline read of {settings.db_path})")
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
        client = client_for(args)
    if client is not None:
        data = client.request("GET", "/v1/status", timeout=10, expect=("db_path", "killswitch", "events"))
        print(f"daemon: running at {client.url} (up {data['uptime_s']:.0f} s)")
        print(f"database: {data['db_path']}")
        if data.get("health"):
            print("health: degraded: " + "; ".join(data["health"]))
        engaged = data["killswitch"]["engaged"]
        if data.get("fleet"):
            print(_fleet_line(data["fleet"]))
        forecasts = client.request("GET", "/v1/budgets", timeout=10).get("budgets", [])
    print(f"events stored: {data['events']}")
    print(
        f"spend today: {fmt_usd(data['spend_today_usd'])}   "
        f"month to date: {fmt_usd(data['spend_month_usd'])} ({data['timezone']})"
    )
    print(f"unpriced events: {data['unpriced']}   without usage: {data['usage_missing']}")
    if "usage_estimated" in data:  # an older daemon does not report it
        print(
            f"estimated usage: {data['usage_estimated']} events"
            f" ({fmt_usd(data['spend_month_estimated_usd'])} of this month's spend)"
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
    since = parse_since(args.since)
    settings = _offline(args)
    if settings is None:
        result = client_for(args).request(
            "POST", "/v1/admin/reprice", {"since": since}, timeout=600, expect=("repriced", "priced")
        )
    else:
        import duckdb

        from costwatch.daemon.store import reprice_file
        from costwatch.pricing import Pricer

        if not settings.db_path.exists():
            raise CLIError(f"no database at {settings.db_path}")
        try:
            result = reprice_file(
                settings.db_path, Pricer(settings.prices), since, timezone=settings.timezone
            )
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower():
                raise CLIError(f"cannot open {settings.db_path}: {str(exc).splitlines()[0]}") from None
            result = _holder(args, settings).request(
                "POST", "/v1/admin/reprice", {"since": since}, timeout=600, expect=("repriced", "priced")
            )
        else:
            _offline_note(settings)
    print(f"repriced {result['repriced']} events ({result['priced']} priced)")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    since = parse_since(args.since)
    directory = Path(args.parquet).resolve()
    settings = _offline(args)
    body = {"dir": str(directory), "since": since}
    if settings is None:
        result = client_for(args).request(
            "POST", "/v1/admin/export", body, timeout=600, expect=("rows", "files")
        )
    else:
        from costwatch.daemon.store import export_parquet

        try:
            con = _open_read_only(settings)
        except _Locked:
            client = _holder(args, settings)
            result = client.request("POST", "/v1/admin/export", body, timeout=600, expect=("rows", "files"))
        else:
            _offline_note(settings)
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


def _fleet_line(fleet: dict[str, Any]) -> str:
    """`costwatch status`: this daemon's place in the fleet and its replication lag."""
    rep = fleet["replication"]
    state = "connected" if rep["connected"] else f"NOT connected ({rep.get('last_error') or 'not yet'})"
    listen = "listening" if fleet["killswitch"]["listening"] else "polling"
    return (
        f"fleet: node {fleet['node']}, ledger {state}; replication lag {rep['lag_events']} events"
        f" ({rep['lag_seconds']:.1f} s); kill switch {listen}"
    )


def _forecast_lines(forecasts: list[dict[str, Any]]) -> list[str]:
    """One line per budget (and group): spent vs limit and the burn-rate projection."""
    lines = []
    for item in forecasts:
        usd = item.get("unit", "usd") == "usd"
        for group in item.get("groups", []):
            where = f" [{group['scope']}]" if group.get("scope") else ""
            spent, limit = (
                (fmt_usd(group["spent"]), fmt_usd(item["limit"]))
                if usd
                else (f"{group['spent']:,.4f}", f"{item['limit']:,.2f}")
            )
            lines.append(
                f"budget {item['rule']}{where}: {spent} of {limit}"
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
    import datetime as _dt

    from costwatch.daemon.evaluate import backtest
    from costwatch.daemon.rules import RuleError, load_rules

    directory = _rules_dir(args.dir)
    if directory is None:
        raise CLIError("no rules directory: give one (costwatch rules backtest DIR) or create ./alerts", 2)
    since = parse_since(args.since)
    step_s = parse_duration(args.step)
    body = {"dir": str(directory.resolve()), "since": since, "step_s": step_s}
    settings = _offline(args)
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
        con = _open_read_only(settings)
    except _Locked:
        client = _holder(args, settings)
        print(client.request("POST", "/v1/rules/backtest", body, timeout=600, expect=("report",))["report"])
        return 0
    _offline_note(settings)
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

    def common(p: argparse.ArgumentParser, offline: bool = True) -> None:
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

    p = sub.add_parser("daemon", help="run the per-host daemon")
    p.add_argument("--db", type=Path, help="DuckDB file (default: <state dir>/costwatch.duckdb)")
    p.add_argument("--config", type=Path, help="config file (TOML or YAML)")
    p.add_argument("--host", help="address to listen on (default 127.0.0.1; COSTWATCH_HOST)")
    p.add_argument("--port", help="port to listen on (default 7707; COSTWATCH_PORT)")
    p.add_argument("--rules", type=Path, help="directory of rule files")
    p.add_argument(
        "--fleet-dsn", help="PostgreSQL DSN of the fleet ledger (COSTWATCH_FLEET_DSN; docs/fleet.md)"
    )
    p.set_defaults(func=cmd_daemon)

    p = sub.add_parser("sql", help="run one read-only SQL query")
    common(p)
    p.add_argument("query")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    p.add_argument("--fleet", action="store_true", help="query the fleet ledger (PostgreSQL SQL, read-only)")
    p.set_defaults(func=cmd_sql)

    p = sub.add_parser("kill", help="engage a kill switch")
    common(p)
    p.add_argument("--scope", action="append", metavar="KEY=VALUE", help="app, provider, model or user")
    p.add_argument("--reason", required=True)
    p.add_argument("--for", dest="for_", metavar="DURATION", help="lift automatically after e.g. 30m")
    p.add_argument("--fleet", action="store_true", help="engage it on every daemon of the fleet")
    p.set_defaults(func=cmd_kill)

    p = sub.add_parser("resume", help="lift a kill switch (the global one without --scope)")
    common(p)
    p.add_argument("--scope", action="append", metavar="KEY=VALUE")
    p.add_argument("--all", action="store_true", help="lift every engaged kill switch")
    p.add_argument("--fleet", action="store_true", help="lift a fleet kill switch (on every daemon)")
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
    common(p, offline=False)
    p.set_defaults(func=cmd_rules_reload)
    p = rules.add_parser("backtest", help="replay rules over stored history: when each would have fired")
    common(p)
    p.add_argument("dir", nargs="?", type=Path, help="rules directory (default ./alerts)")
    p.add_argument("--since", default="30d", help="e.g. 30d or 2026-01-01 (default 30d)")
    p.add_argument("--step", default="15m", help="evaluation step, e.g. 5m (default 15m)")
    p.set_defaults(func=cmd_rules_backtest)
    return parser


# Installed by `pip install 'costwatch[daemon]'`, not by an app's plain `pip install costwatch`.
FLEET_PACKAGES = frozenset({"psycopg", "psycopg_pool"})  # `costwatch[fleet]`: a daemon with a fleet DSN
DAEMON_PACKAGES = frozenset(
    {
        "duckdb",
        "pyarrow",
        "genai_prices",
        "prometheus_client",
        "starlette",
        "uvicorn",
        "apscheduler",
        "apprise",
    }
)


def main(argv: list[str] | None = None) -> NoReturn:
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
    except CLIError as exc:
        print(f"costwatch: {exc}", file=sys.stderr)
        code = exc.code
    except ModuleNotFoundError as exc:
        package = (exc.name or "").split(".")[0]
        if package not in DAEMON_PACKAGES | FLEET_PACKAGES:
            raise
        extra = "fleet" if package in FLEET_PACKAGES else "daemon"
        print(
            f"costwatch: `costwatch {args.command}` needs the {extra}'s packages here ({exc.name} is missing):"
            f" pip install 'costwatch[{extra}]'",
            file=sys.stderr,
        )
        code = 1
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
