"""`costwatch reprice`: recompute stored costs with the current prices."""

from __future__ import annotations

from costwatch.cli.client import client_for
from costwatch.cli.errors import CLIError
from costwatch.cli.offline import holder, note, offline_settings
from costwatch.cli.parser import parse_since

TYPE_CHECKING = False  # not `typing`'s: the light path does not import typing (see costwatch.sources)
if TYPE_CHECKING:
    import argparse

__all__ = ["cmd_reprice"]


def cmd_reprice(args: argparse.Namespace) -> int:
    since = parse_since(args.since)
    settings = offline_settings(args)
    if settings is None:
        result = client_for(args).request(
            "POST", "/v1/admin/reprice", {"since": since}, timeout=600, expect=("repriced", "priced")
        )
    else:
        import duckdb

        from costwatch.daemon.queries import reprice_file
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
            result = holder(args, settings).request(
                "POST", "/v1/admin/reprice", {"since": since}, timeout=600, expect=("repriced", "priced")
            )
        else:
            note(settings)
    print(f"repriced {result['repriced']} events ({result['priced']} priced)")
    return 0
