"""The daemon's settings as a command sees them: flags > environment > config file (pydantic)."""

from __future__ import annotations

import os

from costwatch.cli.errors import CLIError

TYPE_CHECKING = False  # not `typing`'s: the light path does not import typing (see costwatch.sources)
if TYPE_CHECKING:
    import argparse
    from typing import Any

    from costwatch.settings import DaemonSettings

__all__ = ["load_settings"]


def load_settings(args: argparse.Namespace, **extra: Any) -> DaemonSettings:
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
