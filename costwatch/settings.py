"""The daemon's settings, declared once and validated once (pydantic-settings).

Daemon settings (`DaemonSettings`) come from CLI flags, ``COSTWATCH_*`` env vars and an optional
TOML/YAML config file, in that order of precedence (`costwatch.sources.SOURCE_ORDER`, the one rule
for every client too). An app's settings (`ClientSettings`, re-exported here) are in
`costwatch.client_settings` (msgspec: an app's import does not load pydantic). The environment,
config-file and token-file lookups are in `costwatch.sources` (no pydantic), so the CLI can find the
daemon without importing pydantic.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from costwatch.client_settings import ClientSettings

# The lookups themselves live in `costwatch.sources` (no pydantic), shared with the CLI's fast path.
from costwatch.sources import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    SOURCE_ORDER,
    TOKEN_FILE_NAME,
    SettingError,
    check_url,
    config_file_path,
    default_state_dir,
    ensure_token,
    load_config_file,
    read_token,
)

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "TOKEN_FILE_NAME",
    "ClientSettings",
    "DaemonSettings",
    "PriceOverride",
    "config_file_path",
    "default_state_dir",
    "ensure_token",
    "load_config_file",
    "read_token",
]


def _client_url(value: str) -> str:
    try:
        return check_url(value)
    except SettingError as exc:
        raise ValueError(exc.msg) from None


class _FromEnvThenFile(BaseSettings):
    """Init arguments (CLI flags) > ``COSTWATCH_*`` > the config file: `SOURCE_ORDER`, as every client reads."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        by_name = {"init": init_settings, "env": env_settings, "config": _ConfigFileSource(settings_cls)}
        return tuple(by_name[name] for name in SOURCE_ORDER)


_BYTE_SIZE = re.compile(r"\d+(\.\d+)?\s*([KMGT]i?)?B", re.IGNORECASE)


class PriceOverride(BaseModel):
    """USD per million tokens for a model genai-prices does not know (or to override it)."""

    model: str
    provider: str | None = None
    input_per_mtok: float = Field(ge=0)
    output_per_mtok: float = Field(ge=0)
    cached_input_per_mtok: float | None = Field(default=None, ge=0)
    cache_write_per_mtok: float | None = Field(default=None, ge=0)


class DaemonSettings(_FromEnvThenFile):
    """The daemon's configuration; an invalid value stops startup naming the field."""

    model_config = SettingsConfigDict(env_prefix="COSTWATCH_", extra="forbid", env_nested_delimiter="__")

    state_dir: Path = Field(default_factory=default_state_dir)
    db: Path | None = None  # default: <state_dir>/costwatch.duckdb
    host: str = DEFAULT_HOST  # what the daemon binds; clients find it through ``url``
    port: int = Field(default=DEFAULT_PORT, ge=0, le=65535)
    # Where clients look for this daemon (apps and the CLI read it; one config file serves all).
    # The daemon only compares it with what it binds and warns when they cannot be the same.
    url: str | None = None
    # Names (or IPs) besides loopback and the bind address that clients may put in the Host header:
    # the DNS-rebinding check (costwatch/daemon/hosts.py) refuses every other one with a 421. Needed
    # when the daemon binds 0.0.0.0 and is scraped or reached by name/IP. Config file: a list;
    # COSTWATCH_ALLOWED_HOSTS: comma-separated (or a JSON list). "*" turns the check off.
    allowed_hosts: Annotated[list[str], NoDecode] = []
    rules: Path | None = None  # default: ./alerts when present
    token: str | None = None
    prices: list[PriceOverride] = []
    evaluation_interval_s: float = Field(default=15.0, gt=0)
    sql_timeout_s: float = Field(default=10.0, gt=0)
    sql_max_rows: int = Field(default=100_000, ge=1)
    duckdb_memory_limit: str = "1GB"
    # DuckDB folds its WAL into the file past this size; the writer also checkpoints when ingest
    # pauses. Larger: faster ingest, more fresh rows held in memory (docs/benchmarks.md §2, §5).
    duckdb_wal_autocheckpoint: str = "256MB"
    duckdb_threads: int = Field(default=2, ge=1)
    max_body_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    max_batch_events: int = Field(default=50_000, ge=1)
    timezone: str = "UTC"
    log_level: str = Field(default="INFO", pattern="^(DEBUG|INFO|WARNING|ERROR)$")
    # Fleet mode (docs/fleet.md): a PostgreSQL conninfo or URL. None: nothing fleet-related runs
    # or is imported. COSTWATCH_FLEET_DSN / config `fleet_dsn` / `costwatch daemon --fleet-dsn`.
    fleet_dsn: str | None = Field(default=None, repr=False)
    # Fleet SQL runs on this DSN when set (a role without write rights, docs/fleet.md); else on
    # fleet_dsn, in a READ ONLY transaction either way.
    fleet_sql_dsn: str | None = Field(default=None, repr=False)
    node: str = Field(
        default_factory=lambda: __import__("socket").gethostname(), min_length=1, max_length=256
    )
    fleet_batch_events: int = Field(default=5_000, ge=1, le=100_000)
    fleet_interval_s: float = Field(default=0.5, gt=0, le=60)  # replication pause when caught up
    fleet_poll_s: float = Field(default=2.0, gt=0, le=300)  # kill-switch poll (LISTEN/NOTIFY is first)
    fleet_connect_timeout_s: float = Field(default=3.0, gt=0, le=60)
    # A fleet budget slice not renewed for this long (a dead daemon) returns to the fleet.
    fleet_slice_ttl_s: float = Field(default=30.0, ge=1, le=3600)

    @field_validator("duckdb_memory_limit", "duckdb_wal_autocheckpoint")
    @classmethod
    def _byte_size(cls, value: str) -> str:
        if not _BYTE_SIZE.fullmatch(value.strip()):
            raise ValueError("a size such as '512MB', '1GB' or '64MiB'")
        return value.strip()

    @field_validator("url")
    @classmethod
    def _daemon_url(cls, value: str | None) -> str | None:
        return None if value is None else _client_url(value)

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _host_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                import json

                return json.loads(text)
            return [part for part in (p.strip() for p in text.split(",")) if part]
        return value

    @field_validator("allowed_hosts")
    @classmethod
    def _host_names(cls, value: list[str]) -> list[str]:
        from costwatch.daemon.hosts import normalize_host

        return [h.strip() if h.strip() == "*" else normalize_host(h) for h in value]

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo

        ZoneInfo(value)
        return value

    @property
    def db_path(self) -> Path:
        """Absolute: `costwatch status` shows it to an operator whose working directory is not the daemon's."""
        return (self.db or self.state_dir / "costwatch.duckdb").expanduser().absolute()


class _ConfigFileSource(PydanticBaseSettingsSource):
    """``COSTWATCH_CONFIG`` (or ``<state_dir>/config.toml|yaml``), TOML or YAML by suffix."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = config_file_path()
        return load_config_file(path) if path else {}
