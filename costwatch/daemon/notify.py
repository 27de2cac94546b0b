"""Alert delivery through Apprise: one Apprise object per channel, sent in parallel off the rule thread.

One Apprise object serializes its targets (FINDINGS: 5 emails took 5.5 s), so
every channel gets its own object and its own pool slot: a channel that is down
only costs its own retries. Retries are Apprise's own (`default_service_retry`
/ `default_service_wait` on the asset). URLs carry secrets: logs name the
channel and at most Apprise's privacy-masked URL.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait

import apprise

from costwatch.daemon.rules import Channel

log = logging.getLogger("costwatch.notify")

__all__ = ["Notifier"]

_TYPES = {
    "info": apprise.NotifyType.INFO,
    "success": apprise.NotifyType.SUCCESS,
    "warning": apprise.NotifyType.WARNING,
    "failure": apprise.NotifyType.FAILURE,
}


class Notifier:
    """Submit-and-return delivery to named channels; counts what was sent and what failed."""

    def __init__(
        self,
        channels: Mapping[str, Channel] | None = None,
        max_workers: int = 8,
        retries: int = 2,
        retry_wait_s: float = 1.0,
        timeout_s: float = 10.0,
    ) -> None:
        self.retries = retries
        self.retry_wait_s = retry_wait_s
        self.timeout_s = timeout_s
        self.sent: Counter[str] = Counter()  # channel -> deliveries that succeeded
        self.failed: Counter[str] = Counter()  # channel -> deliveries that failed after retries
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="costwatch-notify")
        self._pending: set[Future[bool]] = set()
        self._lock = threading.Lock()
        self._channels: dict[str, tuple[apprise.Apprise, threading.Lock, str]] = {}
        self.set_channels(channels or {})

    def set_channels(self, channels: Mapping[str, Channel]) -> list[str]:
        """Build one Apprise object per channel; returns the names Apprise could not parse."""
        built: dict[str, tuple[apprise.Apprise, threading.Lock, str]] = {}
        bad = []
        for name, channel in channels.items():
            asset = apprise.AppriseAsset(
                default_service_retry=self.retries, default_service_wait=self.retry_wait_s, async_mode=False
            )
            obj = apprise.Apprise(asset=asset)
            plugin = apprise.Apprise.instantiate(channel.url, asset=asset, suppress_exceptions=True)
            if plugin is None:
                bad.append(name)
                log.error("channel %r: Apprise does not understand its URL; alerts to it are dropped", name)
                continue
            if "rto=" not in channel.url:  # the URL's own ?rto=/?cto= win
                plugin.socket_read_timeout = self.timeout_s
            if "cto=" not in channel.url:
                plugin.socket_connect_timeout = min(self.timeout_s, 4.0)
            obj.add(plugin)
            built[name] = (obj, threading.Lock(), plugin.url(privacy=True))
        with self._lock:
            self._channels = built
        return bad

    @property
    def channel_names(self) -> list[str]:
        return sorted(self._channels)

    def send(
        self, channels: Sequence[str], title: str, body: str, notify_type: str = "warning"
    ) -> list[Future[bool]]:
        """Queue one message per channel and return at once (futures are for tests and shutdown)."""
        futures = []
        with self._lock:
            targets = [(name, self._channels.get(name)) for name in channels]
        for name, entry in targets:
            if entry is None:
                self.failed[name] += 1
                log.error("alert %r not sent: unknown or invalid channel %r", title, name)
                continue
            future = self._pool.submit(self._deliver, name, entry, title, body, _TYPES[notify_type])
            self._pending.add(future)
            future.add_done_callback(self._pending.discard)
            futures.append(future)
        return futures

    def _deliver(
        self, name: str, entry: tuple[apprise.Apprise, threading.Lock, str], title: str, body: str, kind: str
    ) -> bool:
        obj, lock, masked = entry
        try:
            with lock:  # one message at a time per channel: ordered, and Apprise objects stay private
                ok = bool(obj.notify(title=title, body=body, notify_type=kind))
        except Exception:
            log.exception("channel %r (%s): delivery raised", name, masked)
            ok = False
        if ok:
            self.sent[name] += 1
        else:
            self.failed[name] += 1
            log.error(
                "channel %r (%s): alert %r not delivered after %d retries", name, masked, title, self.retries
            )
        return ok

    def stats(self) -> dict[str, dict[str, int]]:
        return {"sent": dict(self.sent), "failed": dict(self.failed)}

    def close(self, timeout: float | None = 10.0) -> None:
        """Give queued messages up to `timeout` seconds, then stop: a stuck channel must not hold shutdown."""
        pending = list(self._pending)
        if pending and timeout:
            _, late = wait(pending, timeout=timeout)
            if late:
                log.warning("%d alert deliveries still running at shutdown", len(late))
        self._pool.shutdown(wait=False, cancel_futures=True)
