"""The client's view of kill-switch state, and the exception a blocked call raises.

The view is read on the app's hot path (``active`` is a plain attribute, so the
common "nothing engaged" case costs one attribute load) and written by the
emitter's two threads (ingest replies, the kill-switch long poll), which replace
whole tuples instead of mutating them, so readers never need a lock.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from datetime import datetime, timezone

from costwatch.errors import CallBlocked, KillSwitchEngaged
from costwatch.protocol import KillSwitch, KillSwitchState, resume_command

__all__ = ["FAIL_CLOSED_ID", "KillSwitchView", "blocked_error", "sdk_error"]

# The id of the synthetic switch returned while failing closed.
FAIL_CLOSED_ID = "fail-closed"
FAIL_CLOSED_SOURCE = "fail_closed"


class KillSwitchView:
    """What this process currently believes about engaged kill switches."""

    active: bool
    needs_model: bool

    def __init__(self, *, fail_closed: bool = False, fail_closed_after_s: float = 5.0, url: str = "") -> None:
        self.active = False
        self.needs_model = False
        self.version = -1
        self._switches: tuple[KillSwitch, ...] = ()
        self._fail_closed = fail_closed
        self._fail_closed_after_s = fail_closed_after_s
        self._url = url
        # Monotonic time of the last successful exchange with the daemon; the
        # fail-closed clock starts when the view is created (emitter start).
        self._last_contact = time.monotonic()
        self._last_contact_wall = time.time()
        self._failing_closed = False
        self._synthetic: KillSwitch | None = None

    # -- written by the emitter thread -------------------------------------------------

    def update(self, state: KillSwitchState, newer_only: bool = False) -> None:
        """Adopt the daemon's state after a successful reply.

        ``newer_only`` (ingest replies): an older version is not adopted, since the long
        poll may have brought a newer state while the ingest request was in flight. The
        long poll's answer is always adopted (a restarted test daemon may count from 0).
        """
        if not newer_only or state.version >= self.version:
            self._switches = tuple(state.engaged)
            self.version = state.version
        self.mark_contact()

    def adopt(self, state: KillSwitchState) -> None:
        """A newer state from the daemon's state file: not an answer, so the fail-closed clock runs on."""
        if state.version > self.version:
            self._switches = tuple(state.engaged)
            self.version = state.version
            self.refresh()

    def mark_contact(self) -> None:
        """The daemon answered: reset the fail-closed clock."""
        self._last_contact = time.monotonic()
        self._last_contact_wall = time.time()
        self.refresh()

    def restart_clock(self) -> None:
        """Start counting the fail-closed delay from now (the emitter started)."""
        self.mark_contact()

    def refresh(self) -> None:
        """Recompute ``active``/``needs_model``: switches expire and fail-closed kicks in over time."""
        now = time.time()
        live = [s for s in self._switches if s.expires_at is None or s.expires_at > now]
        failing = self._fail_closed and self._unreachable_for() > self._fail_closed_after_s
        if failing and not self._failing_closed:
            self._synthetic = _fail_closed_switch(self._last_contact_wall, self._url)
        self._failing_closed = failing
        self.needs_model = any("model" in s.scope for s in live)
        self.active = bool(live) or failing

    # -- read on the app's call path ---------------------------------------------------

    def blocking(self, app: str, provider: str, model: str | None, user: str | None) -> KillSwitch | None:
        """The switch that refuses this call, or None; engaged switches win over fail-closed."""
        now = time.time()
        for switch in self._switches:
            if switch.expires_at is not None and switch.expires_at <= now:
                continue
            if switch.matches(app, provider, model, user):
                return switch
        if self._fail_closed and self._unreachable_for() > self._fail_closed_after_s:
            synthetic = self._synthetic
            if synthetic is None:
                synthetic = self._synthetic = _fail_closed_switch(self._last_contact_wall, self._url)
            return synthetic
        return None

    def _unreachable_for(self) -> float:
        return time.monotonic() - self._last_contact


def _fail_closed_switch(since_wall: float, url: str) -> KillSwitch:
    where = f" at {url}" if url else ""
    return KillSwitch(
        id=FAIL_CLOSED_ID,
        scope={},
        reason=f"the costwatch daemon{where} is unreachable",
        source=FAIL_CLOSED_SOURCE,
        engaged_at=since_wall,
    )


# -- the exception -----------------------------------------------------------------------

_class_cache: dict[tuple[type, tuple[type, ...]], type[CallBlocked]] = {}
_class_lock = threading.Lock()


def _reset_lock_after_fork() -> None:
    global _class_lock
    _class_lock = threading.Lock()  # another thread may have held it at fork time


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_lock_after_fork)


def _sdk_bases() -> tuple[type, ...]:
    """The SDK base errors of whichever SDKs the app already imported (never import them here)."""
    bases: list[type] = []
    for module_name, class_name in (("openai", "OpenAIError"), ("anthropic", "AnthropicError")):
        module = sys.modules.get(module_name)
        cls = getattr(module, class_name, None) if module is not None else None
        if isinstance(cls, type) and issubclass(cls, Exception):
            bases.append(cls)
    return tuple(bases)


def _blocked_class(base: type[CallBlocked] = KillSwitchEngaged) -> type[CallBlocked]:
    """One class per (costwatch error, set of loaded SDKs), so the SDK retry loops re-raise it untouched."""
    bases = _sdk_bases()
    key = (base, bases)
    cls = _class_cache.get(key)
    if cls is None:
        with _class_lock:
            cls = _class_cache.get(key)
            if cls is None:
                cls = base if not bases else _make_class(base, bases)
                _class_cache[key] = cls
    return cls


def _make_class(base: type[CallBlocked], bases: tuple[type, ...]) -> type[CallBlocked]:
    namespace = {
        "__module__": "costwatch.errors",
        "__qualname__": base.__qualname__,
        "__doc__": base.__doc__,
    }
    return type(base.__name__, (base, *bases), namespace)


def sdk_error(
    base: type[CallBlocked], message: str, *, scope: dict[str, str] | None = None, reason: str = ""
) -> CallBlocked:
    """An instance of ``base`` that also derives from the loaded SDKs' base errors (see FINDINGS)."""
    return _blocked_class(base)(message, scope=scope, reason=reason)


def _when(epoch: float) -> str:
    if not epoch:
        return "an unknown time"
    return datetime.fromtimestamp(epoch, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def describe_block(switch: KillSwitch) -> str:
    """The one-paragraph message a user sees: what, why, since when, how to lift it."""
    if switch.id == FAIL_CLOSED_ID and switch.source == FAIL_CLOSED_SOURCE:
        return (
            f"costwatch refused this call: {switch.reason} (no answer since {_when(switch.engaged_at)}) "
            "and COSTWATCH_FAIL_CLOSED=1 is set. Start the daemon (`costwatch daemon`) "
            "or unset COSTWATCH_FAIL_CLOSED to fail open."
        )
    reason = switch.reason or "no reason given"
    expires = f", until {_when(switch.expires_at)}" if switch.expires_at else ""
    return (
        f"costwatch kill switch engaged ({switch.describe()}): {reason}. "
        f"Engaged by {switch.source} since {_when(switch.engaged_at)}{expires}. "
        f"Lift it with `{resume_command(dict(switch.scope))}`."
    )


def blocked_error(switch: KillSwitch) -> CallBlocked:
    """The exception to raise inside the SDK's ``send`` before any I/O (see FINDINGS)."""
    error = sdk_error(
        KillSwitchEngaged, describe_block(switch), scope=dict(switch.scope), reason=switch.reason
    )
    error.switch = switch  # type: ignore[attr-defined]
    return error
