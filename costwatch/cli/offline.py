"""``--db PATH``: work on a DuckDB file without a daemon, or through the daemon that holds it.

A running daemon locks its file; a command given that file goes through the daemon at
the URL when (and only when) that daemon serves exactly PATH. Output that did not come
from a daemon says so (`note`).
"""

from __future__ import annotations

import sys
from pathlib import Path

from costwatch.cli.client import Client, client_for
from costwatch.cli.errors import CLIError
from costwatch.cli.settings import load_settings

TYPE_CHECKING = False  # not `typing`'s: the light path does not import typing (see costwatch.sources)
if TYPE_CHECKING:
    import argparse
    from typing import Any

    from costwatch.settings import DaemonSettings

__all__ = ["Locked", "file_registry", "holder", "note", "offline_settings", "open_read_only"]


class Locked(Exception):
    """The file is held by a running daemon."""


def offline_settings(args: argparse.Namespace) -> DaemonSettings | None:
    """``--db PATH``: the settings for working on the file itself (None without ``--db``)."""
    return load_settings(args) if getattr(args, "db", None) else None


def holder(args: argparse.Namespace, settings: DaemonSettings) -> Client:
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


def open_read_only(settings: DaemonSettings) -> Any:
    """A read-only DuckDB connection to the file; `Locked` when a daemon holds it."""
    import duckdb

    from costwatch.daemon.database import open_database

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
            raise Locked() from None
        raise CLIError(f"cannot open {path}: {str(exc).splitlines()[0]}") from None


def file_registry(args: argparse.Namespace, settings: DaemonSettings) -> tuple[Any, Any] | Client:
    """A kill-switch registry on the file (with its connection), or the daemon that holds it."""
    import duckdb

    from costwatch.daemon.database import open_database
    from costwatch.daemon.killswitch import KillSwitchRegistry

    if not settings.db_path.exists():
        raise CLIError(f"no database at {settings.db_path}")
    try:
        con = open_database(settings.db_path, timezone=settings.timezone)
    except duckdb.IOException as exc:
        if "lock" in str(exc).lower():
            return holder(args, settings)
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


def note(settings: DaemonSettings) -> None:
    print(f"costwatch: offline: read {settings.db_path} directly (no daemon consulted)", file=sys.stderr)
