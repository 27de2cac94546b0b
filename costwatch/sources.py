"""Where settings come from, without pydantic: the environment, the config file, the state directory.

`costwatch.settings` builds its pydantic models on these functions; the CLI's
daemon-client path (`costwatch kill`, `resume`, `status`, `sql`) uses
`daemon_endpoint` alone, because importing pydantic-settings costs ~100 ms of
an operator's `costwatch kill` (docs/benchmarks.md, section 4). The rule for
every field is the one the settings classes apply: CLI flag > ``COSTWATCH_<FIELD>``
(any case) > the config file > the default.
"""

from __future__ import annotations

import os
import secrets
from collections import namedtuple
from pathlib import Path

# Neither typing nor dataclasses on `costwatch kill`'s path: without them its imports took
# 27.0 ms instead of 31.5 ms (median of 9, `python -X importtime -c "import costwatch.cli"`).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "DEFAULT_URL",
    "ENV_PREFIX",
    "TOKEN_FILE_NAME",
    "DaemonEndpoint",
    "SettingError",
    "check_url",
    "config_file_path",
    "daemon_endpoint",
    "default_state_dir",
    "ensure_token",
    "env_value",
    "load_config_file",
    "read_token",
]

ENV_PREFIX = "COSTWATCH_"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7707
DEFAULT_URL = f"http://{DEFAULT_HOST}:{DEFAULT_PORT}"
TOKEN_FILE_NAME = "token"


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
    import platformdirs  # ~7 ms: only when no state dir is configured

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
    name = (ENV_PREFIX + field).lower()
    found = None
    for key, value in os.environ.items():
        if key.lower() == name:
            found = value
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
    path = config_file_path()
    config = load_config_file(path) if path else {}

    def pick(field: str, flag: Any, default: Any) -> Any:
        if flag is not None:
            return flag
        value = env_value(field)
        if value is not None:
            return value
        return config.get(field, default)

    state_dir = pick("state_dir", None, None)
    token = pick("token", None, None)
    return DaemonEndpoint(
        check_url(pick("url", url, DEFAULT_URL)),
        token or read_token(Path(state_dir) if state_dir else default_state_dir()),
    )
