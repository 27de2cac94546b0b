"""Instrumentation of the httpx2 / httpx clients under the OpenAI and Anthropic SDKs.

``instrument()`` is idempotent and thread-safe (the one install lock lives
here); ``uninstrument()`` restores the exact original ``send`` functions and
closes the emitter. ``COSTWATCH_DISABLED=1`` (``settings.disabled``) means no
patching at all.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from costwatch.client_settings import ClientSettings
from costwatch.instrumentation import patch
from costwatch.instrumentation.record import guard
from costwatch.sources import SettingError

__all__ = ["flush", "instrument", "uninstrument"]

_lock = threading.Lock()
_emitter: Any = None
_log = logging.getLogger("costwatch")


def _one_line(exc: Exception) -> str:
    if isinstance(exc, SettingError):
        return f"{exc.field}: {exc.msg} (got {exc.value!r})"
    return str(exc).splitlines()[0] if str(exc) else repr(exc)


def instrument(settings: ClientSettings | None = None, *, emitter: Any = None) -> None:
    """Start recording every OpenAI/Anthropic call of this process.

    ``emitter`` replaces the default `Emitter` (tests, embedding); it needs
    ``killswitch``, ``start()``, ``submit()``, ``flush()`` and ``close()``.
    """
    global _emitter
    with _lock:
        if patch.is_installed():
            return
        if settings is None:
            try:
                settings = ClientSettings()
            except Exception as exc:  # a bad COSTWATCH_* value must not stop the app: say so, run bare
                _log.error("costwatch is OFF for this process: invalid settings: %s", _one_line(exc))
                return
        if settings.disabled:
            return
        try:
            if emitter is None:
                from costwatch.instrumentation.emitter import Emitter

                emitter = Emitter(settings)
            emitter.start()
        except Exception:  # costwatch failing to start must not stop the app: run uninstrumented
            guard.report("instrument")
            return
        _emitter = emitter
        patch.install(patch.State(emitter, settings.app, settings.inject_stream_usage))


def uninstrument(timeout: float = 2.0) -> None:
    """Remove the patches (exact original functions back) and close the emitter."""
    global _emitter
    with _lock:
        patch.uninstall()
        emitter, _emitter = _emitter, None
    if emitter is not None:
        try:
            emitter.close(timeout)
        except Exception:
            guard.report("uninstrument")


def _emitter_for_tests() -> Any:
    """The running emitter (tests and diagnostics only)."""
    return _emitter


def flush(timeout: float = 2.0) -> bool:
    """Wait until recorded events are handed off; True when everything was."""
    emitter = _emitter
    if emitter is None:
        return True
    try:
        return bool(emitter.flush(timeout))
    except Exception:
        guard.report("flush")
        return False
