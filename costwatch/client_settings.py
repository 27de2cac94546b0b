"""What an instrumented app reads (`ClientSettings`), validated by msgspec: no pydantic in an app's import.

``import costwatch.autoinstrument`` builds one `ClientSettings`; pydantic-settings made that import
cost ~70 ms of CPU (docs/benchmarks.md, section 5a), so the app's settings are a `msgspec.Struct`
(msgspec is imported by the instrumentation anyway) filled by `costwatch.sources.layered`, the one
precedence rule of every client and of the daemon (`SOURCE_ORDER`): keyword arguments >
``COSTWATCH_<FIELD>`` (any case) > the config file > the default. An invalid value raises
`SettingError` naming the field, which `costwatch.instrumentation.instrument` logs in one line
before leaving the app uninstrumented. The daemon's settings stay in `costwatch.settings`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from costwatch.sources import DEFAULT_URL, SettingError, check_url, default_state_dir, layered, read_token

__all__ = ["ClientSettings"]


class _Fields(msgspec.Struct, kw_only=True):
    """Every field but ``state_dir`` (a path, defaulted from the environment), with its constraints."""

    url: str = DEFAULT_URL
    app: Annotated[str, Meta(min_length=1, max_length=256)] = "default"
    token: str | None = None
    fail_closed: bool = False
    disabled: bool = False
    # Add stream_options.include_usage to chat streams that did not ask for it
    # (and hide the extra chunk from the app). "openai" = only api.openai.com. A stream that
    # still ends without usage is stored with estimated usage (usage_source "estimated").
    inject_stream_usage: Annotated[str, Meta(pattern="^(openai|all|off)$")] = "openai"
    queue_max_events: Annotated[int, Meta(ge=100)] = 100_000
    batch_max_events: Annotated[int, Meta(ge=1)] = 2_000
    # Each POST costs the app's process ~0.3 ms of CPU; the kill switch no longer rides on them.
    flush_interval_s: Annotated[float, Meta(gt=0, le=10)] = 0.5
    # Plain polling, only against a daemon that answers the long poll at once (an older one).
    killswitch_poll_s: Annotated[float, Meta(gt=0, le=60)] = 0.25
    # With fail_closed, calls are refused once the daemon has not answered for this long.
    fail_closed_after_s: Annotated[float, Meta(ge=0)] = 5.0
    spool_max_bytes: Annotated[int, Meta(ge=1024)] = 256 * 1024 * 1024
    exit_flush_timeout_s: Annotated[float, Meta(ge=0)] = 2.0


_FIELDS = (*_Fields.__struct_fields__, "state_dir")
_BOOLS = ("fail_closed", "disabled")
# pydantic's lax booleans, which the environment and config files were written against.
_BOOL_TEXT = {
    **dict.fromkeys(("1", "on", "t", "true", "y", "yes"), True),
    **dict.fromkeys(("0", "off", "f", "false", "n", "no"), False),
}


class ClientSettings:
    """An app's settings: ``ClientSettings()`` reads ``COSTWATCH_*`` and the config file (``url``, ``token``, …).

    Keyword arguments come first (tests, embedding). The daemon's address is ``url`` alone, as for every
    CLI command (`costwatch.sources.daemon_endpoint`). Raises `SettingError` (a ``ValueError``) for an
    invalid value, ``OSError``/``ValueError`` for an unreadable config file.
    """

    __slots__ = _FIELDS
    url: str
    app: str
    token: str | None
    fail_closed: bool
    disabled: bool
    inject_stream_usage: str
    queue_max_events: int
    batch_max_events: int
    flush_interval_s: float
    killswitch_poll_s: float
    fail_closed_after_s: float
    spool_max_bytes: int
    exit_flush_timeout_s: float
    state_dir: Path

    def __init__(self, **init: Any) -> None:
        unknown = init.keys() - set(_FIELDS)
        if unknown:
            raise TypeError(f"ClientSettings() got unexpected settings: {', '.join(sorted(unknown))}")
        raw = layered(_FIELDS, init)
        state_dir = raw.pop("state_dir", None)
        for name in _BOOLS:
            value = raw.get(name)
            if isinstance(value, str):
                raw[name] = _BOOL_TEXT.get(value.strip().lower(), value)
        try:
            fields = msgspec.convert(raw, _Fields, strict=False)
        except msgspec.ValidationError as exc:
            raise _setting_error(exc, raw) from None
        for name in _Fields.__struct_fields__:
            setattr(self, name, getattr(fields, name))
        self.url = check_url(self.url)
        if state_dir is None:
            self.state_dir = default_state_dir()
        elif isinstance(state_dir, (str, Path)) and str(state_dir):
            self.state_dir = Path(state_dir)
        else:
            raise SettingError("state_dir", "Input is not a valid path", state_dir)

    @property
    def spool_dir(self) -> Path:
        return self.state_dir / "spool"

    def resolved_token(self) -> str | None:
        return self.token or read_token(self.state_dir)

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{name}={'***' if name == 'token' and self.token else repr(getattr(self, name))}"
            for name in _FIELDS
        )
        return f"ClientSettings({shown})"


def _setting_error(exc: msgspec.ValidationError, raw: dict[str, Any]) -> SettingError:
    """msgspec's "Expected `int` >= 100 - at `$.queue_max_events`" as a `SettingError` for that field."""
    text, sep, where = str(exc).rpartition(" - at `$.")
    if not sep:
        return SettingError("settings", str(exc), None)
    field = where.rstrip("`").split(".")[0].split("[")[0]
    return SettingError(field, text, raw.get(field))
