"""`costwatch kill` and `costwatch resume`: the kill switch, on the daemon or (``--db``) on the file.

On the kill switch's critical path: against a daemon these import nothing beyond the
standard library, `costwatch.sources` and `costwatch.connection`.
"""

from __future__ import annotations

import time

from costwatch.cli.client import Client, client_for
from costwatch.cli.errors import CLIError
from costwatch.cli.offline import file_registry, offline_settings
from costwatch.cli.parser import parse_duration, parse_scope

TYPE_CHECKING = False  # not `typing`'s: the light path does not import typing (see costwatch.sources)
if TYPE_CHECKING:
    import argparse
    from typing import Any

__all__ = ["cmd_kill", "cmd_resume"]

_NOT_ENGAGED = "; the kill switch was NOT engaged"
_NOT_LIFTED = "; nothing was lifted"
_TOLD_NOBODY = "no daemon was told: apps learn it only once a daemon serves this file"
_WRITE_TIMEOUT_S = 15.0


def _target(args: argparse.Namespace, fleet_does: str) -> tuple[Any, Any] | Client:
    """The daemon at the URL (always for --fleet), or with --db the file's registry (or its daemon)."""
    if args.fleet:
        if args.db:
            raise CLIError(f"--fleet goes through the daemon (it {fleet_does}): no --db", 2)
        return client_for(args)
    settings = offline_settings(args)
    return client_for(args) if settings is None else file_registry(args, settings)


def cmd_kill(args: argparse.Namespace) -> int:
    scope = parse_scope(args.scope)
    for_s = parse_duration(args.for_) if args.for_ else None
    where = ", ".join(f"{k}={v}" for k, v in sorted(scope.items())) or "global"
    until = f" for {args.for_}" if for_s else ""
    target = _target(args, "writes the switch into Postgres")
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
    target = _target(args, "lifts the switch in Postgres")
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
