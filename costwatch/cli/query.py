"""`costwatch sql` and `costwatch export`: reading usage, through the daemon or (``--db``) from the file."""

from __future__ import annotations

from pathlib import Path

from costwatch.cli.client import Client, client_for
from costwatch.cli.errors import CLIError
from costwatch.cli.offline import Locked, holder, note, offline_settings, open_read_only
from costwatch.cli.output import print_daemon_rows, print_rows
from costwatch.cli.parser import parse_since

TYPE_CHECKING = False  # not `typing`'s: the light path does not import typing (see costwatch.sources)
if TYPE_CHECKING:
    import argparse
    from typing import Any

__all__ = ["cmd_export", "cmd_sql"]


def cmd_sql(args: argparse.Namespace) -> int:
    if args.fleet:  # the fleet ledger, through the local daemon (it holds the Postgres connection)
        if args.db:
            raise CLIError("--fleet queries the fleet ledger through the daemon: it does not take --db", 2)
        client = client_for(args)
        data = client.request("POST", "/v1/sql?fleet=1", {"sql": args.query}, expect=("columns", "rows"))
        print_daemon_rows(data, args.format)
        return 0
    settings = offline_settings(args)
    if settings is None:  # the daemon holds the file while it runs: ask it
        print_daemon_rows(_daemon_sql(client_for(args), args.query), args.format)
        return 0
    from costwatch.daemon.sql import QueryError, run_query

    try:
        con = open_read_only(settings)
    except Locked:  # --db names the file a running daemon holds
        print_daemon_rows(_daemon_sql(holder(args, settings), args.query), args.format)
        return 0
    note(settings)
    try:
        result = run_query(con, args.query, timeout_s=settings.sql_timeout_s, max_rows=settings.sql_max_rows)
    except QueryError as exc:
        raise CLIError(str(exc)) from None
    finally:
        con.close()
    print_rows(result.columns, result.rows, args.format, result.truncated, from_daemon=False)
    return 0


def _daemon_sql(client: Client, query: str) -> dict[str, Any]:
    return client.request("POST", "/v1/sql", {"sql": query}, expect=("columns", "rows"))


def cmd_export(args: argparse.Namespace) -> int:
    since = parse_since(args.since)
    directory = Path(args.parquet).resolve()
    settings = offline_settings(args)
    body = {"dir": str(directory), "since": since}
    if settings is None:
        result = client_for(args).request(
            "POST", "/v1/admin/export", body, timeout=600, expect=("rows", "files")
        )
    else:
        from costwatch.daemon.queries import export_parquet

        try:
            con = open_read_only(settings)
        except Locked:
            client = holder(args, settings)
            result = client.request("POST", "/v1/admin/export", body, timeout=600, expect=("rows", "files"))
        else:
            note(settings)
            try:
                result = export_parquet(con, directory, since)
            except OSError as exc:
                raise CLIError(f"cannot write {directory}: {exc.strerror or exc}") from None
            finally:
                con.close()
    print(f"exported {result['rows']} events into {len(result['files'])} file(s) under {directory}")
    return 0
