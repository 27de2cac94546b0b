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
until the processes refuse calls), so every module of this package imports only
the standard library at the top, and `main` imports only the module of the command
it runs: the daemon's address comes from `costwatch.sources` (no pydantic),
requests go out on one `costwatch.connection` connection, and pydantic, duckdb and
the daemon's modules are imported only by the paths that need them (the daemon
itself, or ``--db PATH`` working on the file offline).

One module per command group: `parser` (the argparse tree), `client` (the daemon's
API), `offline` (``--db PATH``), `output` (rows and tables), `daemon_cmd`, `switch`
(kill/resume), `status`, `query` (sql/export), `reprice`, `rules`.
"""

from __future__ import annotations

import sys

from costwatch.cli.errors import CLIError, missing_extra
from costwatch.cli.parser import build_parser, command_function

TYPE_CHECKING = False  # not `typing`'s: the light path does not import typing (see costwatch.sources)
if TYPE_CHECKING:
    from typing import NoReturn

__all__ = ["main"]


def main(argv: list[str] | None = None) -> NoReturn:
    args = build_parser().parse_args(argv)
    try:
        code = command_function(args)(args)
    except CLIError as exc:
        print(f"costwatch: {exc}", file=sys.stderr)
        code = exc.code
    except ModuleNotFoundError as exc:
        message = missing_extra(args.command, exc)
        if message is None:
            raise
        print(message, file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)
