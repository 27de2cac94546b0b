"""Where settings come from, without pydantic: the environment, the config file, the state directory.

`costwatch.client_settings` (an app's settings, msgspec) and `costwatch.settings` (the daemon's,
pydantic-settings) are built on these functions; the CLI's daemon-client path (`costwatch kill`,
`resume`, `status`, `sql`) uses `daemon_endpoint` alone, because importing pydantic-settings costs
~100 ms of an operator's `costwatch kill` (docs/benchmarks.md, section 4). The rule for every field
is `SOURCE_ORDER`: CLI flag (init argument) > ``COSTWATCH_<FIELD>`` (any case) > the config file >
the default.
"""

from __future__ import annotations

import os
import sys
from collections import namedtuple
from pathlib import Path

# Neither typing nor dataclasses on `costwatch kill`'s path: their imports are a seventh of
# the CLI's start-up, which is on the kill switch's critical path.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "DEFAULT_URL",
    "ENV_PREFIX",
    "SOURCE_ORDER",
    "TOKEN_FILE_NAME",
    "DaemonEndpoint",
    "SettingError",
    "check_url",
    "config_file_path",
    "daemon_endpoint",
    "default_state_dir",
    "ensure_token",
    "env_value",
    "layered",
    "load_config_file",
    "read_token",
]

ENV_PREFIX = "COSTWATCH_"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7707
DEFAULT_URL = f"http://{DEFAULT_HOST}:{DEFAULT_PORT}"
TOKEN_FILE_NAME = "token"

# Where a setting's value comes from, first source first, for every client and for the daemon: init
# arguments (CLI flags, keyword arguments) > ``COSTWATCH_<FIELD>`` (any case) > the config file >
# the field's default. `layered` applies it; `DaemonSettings` orders pydantic-settings' sources by it.
SOURCE_ORDER = ("init", "env", "config")


class SettingError(ValueError):
    """An invalid value for one setting; ``field`` names it as `DaemonSettings` would."""

    def __init__(self, field: str, message: str, value: Any) -> None:
        super().__init__(f"{message} (got {value!r})")
        self.field = field
        self.msg = message
        self.value = value


def default_state_dir() -> Path:
    """Where the daemon keeps its DuckDB file and token, and apps their spool."""
    override = os.environ.get("COSTWATCH_STATE_DIR")
    if override:
        return Path(override)
    if sys.platform.startswith("linux"):
        # platformdirs' rule for Linux (tests/test_client_settings.py checks it against platformdirs),
        # without its import on an app's start.
        base = os.environ.get("XDG_DATA_HOME", "")
        return Path(base if base.strip() else os.path.expanduser("~/.local/share"), "costwatch")
    import platformdirs  # ~2-7 ms: macOS, Windows

    return Path(platformdirs.user_data_dir("costwatch"))


def read_token(state_dir: Path) -> str | None:
    try:
        return (state_dir / TOKEN_FILE_NAME).read_text().strip() or None
    except OSError:
        return None


def ensure_token(state_dir: Path) -> str:
    """Create the bearer token on first start, readable by its owner only (0600)."""
    existing = read_token(state_dir)
    if existing:
        return existing
    import secrets  # the daemon's first start only (hashlib, hmac: ~3 ms of an app's import)

    state_dir.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    path = state_dir / TOKEN_FILE_NAME
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


def config_file_path() -> Path | None:
    """``COSTWATCH_CONFIG``, else ``<state dir>/config.toml|yaml|yml`` when present."""
    explicit = os.environ.get("COSTWATCH_CONFIG")
    if explicit:
        return Path(explicit)
    for name in ("config.toml", "config.yaml", "config.yml"):
        candidate = default_state_dir() / name
        if candidate.exists():
            return candidate
    return None


def load_config_file(path: Path) -> dict[str, Any]:
    text = path.read_text()
    if path.suffix == ".toml":
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            import tomli as tomllib  # type: ignore[no-redef]
        return tomllib.loads(text)
    import yaml

    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the config file must be a mapping of settings")
    return data


def env_value(field: str) -> str | None:
    """``COSTWATCH_<FIELD>`` matched case-insensitively, as pydantic-settings reads it."""
    return _environment().get(field.lower())


def _environment() -> dict[str, str]:
    """``COSTWATCH_*`` variables by lower-case field name (of two spellings, the later one, as pydantic-settings)."""
    start = len(ENV_PREFIX)
    prefix = ENV_PREFIX.lower()
    return {key.lower()[start:]: value for key, value in os.environ.items() if key.lower().startswith(prefix)}


def layered(fields: Iterable[str], init: dict[str, Any] | None = None) -> dict[str, Any]:
    """Each field's raw value from the first source in `SOURCE_ORDER` that has one.

    Fields no source sets are left out (their default applies). ``init`` holds the init arguments
    (a value of None counts: it was given). Reads the config file (``COSTWATCH_CONFIG`` or the state
    dir's) once; raises `OSError`/`ValueError` when it cannot be read or parsed.
    """
    path = config_file_path()
    sources = {"init": init or {}, "env": _environment(), "config": load_config_file(path) if path else {}}
    ordered = [sources[name] for name in SOURCE_ORDER]
    found: dict[str, Any] = {}
    for field in fields:
        for source in ordered:
            if field in source:
                found[field] = source[field]
                break
    return found


def check_url(value: Any) -> str:
    """A daemon URL as clients use it: ``http(s)://host[:port][/prefix]``, without a trailing slash."""
    from urllib.parse import urlsplit  # http.client imports it anyway

    text = str(value).strip() if value is not None else ""
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise SettingError("url", "Input should be a URL such as http://127.0.0.1:7707", value) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingError("url", "Input should be a URL such as http://127.0.0.1:7707", value)
    if port == 0 or parts.query or parts.fragment:
        raise SettingError("url", "Input should be a URL such as http://127.0.0.1:7707", value)
    return text.rstrip("/")


class DaemonEndpoint(namedtuple("DaemonEndpoint", ("url", "token"))):
    """Where a client finds the daemon (url: str) and the token it sends (str | None)."""

    __slots__ = ()


def daemon_endpoint(url: str | None = None) -> DaemonEndpoint:
    """The daemon's URL and token for a client (the CLI, an app), without pydantic.

    One address for every client: ``--url`` > ``COSTWATCH_URL`` > the config file's
    ``url`` > ``http://127.0.0.1:7707``. ``COSTWATCH_HOST``/``COSTWATCH_PORT`` are what
    the daemon binds and are never read here. The token: ``COSTWATCH_TOKEN`` > the config
    file's ``token`` > the token file in the state directory. `ClientSettings` resolves the
    same way (tests/daemon/test_cli_startup.py holds the two to the same answers); other
    settings are not read, so an unrelated mistake in the config file does not stop
    `costwatch kill`. Raises `SettingError` (a bad URL) and `OSError`/`ValueError` (an
    unreadable config file).
    """
    found = layered(("url", "token", "state_dir"), {"url": url} if url is not None else None)
    state_dir = found.get("state_dir")
    return DaemonEndpoint(
        check_url(found.get("url", DEFAULT_URL)),
        found.get("token") or read_token(Path(state_dir) if state_dir else default_state_dir()),
    )
