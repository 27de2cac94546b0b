"""`costwatch daemon`: check the rules, then serve (`costwatch.daemon.server` assembles the daemon)."""

from __future__ import annotations

from costwatch.cli.errors import CLIError
from costwatch.cli.rules import check_before_start
from costwatch.cli.settings import load_settings

TYPE_CHECKING = False  # not `typing`'s: the light path does not import typing (see costwatch.sources)
if TYPE_CHECKING:
    import argparse

__all__ = ["cmd_daemon"]


def cmd_daemon(args: argparse.Namespace) -> int:
    import duckdb

    from costwatch.daemon.server import serve

    settings = load_settings(args, rules=args.rules, fleet_dsn=args.fleet_dsn)
    check_before_start(settings.rules, fleet_mode=bool(settings.fleet_dsn))
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
