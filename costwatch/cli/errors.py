"""What a command tells the user when it fails: a `CLIError`, or the extra to install."""

from __future__ import annotations

__all__ = ["DAEMON_PACKAGES", "FLEET_PACKAGES", "CLIError", "missing_extra"]


class CLIError(Exception):
    """A one-line error for the user; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


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


def missing_extra(command: str, exc: ModuleNotFoundError) -> str | None:
    """The line that names the extra to install, or None when the missing module is not one of ours."""
    package = (exc.name or "").split(".")[0]
    if package not in DAEMON_PACKAGES | FLEET_PACKAGES:
        return None
    extra = "fleet" if package in FLEET_PACKAGES else "daemon"
    return (
        f"costwatch: `costwatch {command}` needs the {extra}'s packages here ({exc.name} is missing):"
        f" pip install 'costwatch[{extra}]'"
    )
