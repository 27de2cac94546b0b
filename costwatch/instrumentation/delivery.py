"""Getting batches of events to the daemon: the `Delivery` half of `Emitter` (emitter thread).

``POST /v1/events`` on a kept-alive `costwatch.connection` (stdlib ``http.client``:
``httpx``/``httpx2`` are patched by our own instrumentation in this process), with the
daemon's token (reread once on a 401), drops since the last report in the
``x-costwatch-dropped`` header, a batch the daemon finds too large (413) sent in halves,
and events it cannot take now spooled to disk and replayed, one file per tick, once it
answers again. A daemon that is down costs backoff, not CPU or latency.
"""

from __future__ import annotations

import contextlib
import random
import time

import msgspec

from costwatch.events import UsageEvent, encode, encode_many
from costwatch.protocol import IngestReply, KillSwitchState

__all__ = ["Backoff", "Delivery"]

_reply_decoder = msgspec.json.Decoder(IngestReply)
# Statuses that mean "try again later" rather than "these events are bad".
_RETRY_STATUSES = frozenset({401, 404, 408, 425, 429})


class Backoff:
    """Exponential backoff with jitter, capped: the daemon being down must not cost CPU or latency."""

    def __init__(self, base: float = 0.1, cap: float = 5.0) -> None:
        self.base = base
        self.cap = cap
        self.failures = 0
        self.until = 0.0

    def fail(self) -> None:
        self.failures += 1
        delay = min(self.cap, self.base * 2 ** min(self.failures - 1, 16))
        self.until = time.monotonic() + delay * (0.5 + random.random() / 2)

    def ok(self) -> None:
        self.failures = 0
        self.until = 0.0

    @property
    def waiting(self) -> bool:
        return self.failures > 0 and time.monotonic() < self.until


class Delivery:
    """Posting, spooling and replaying for `Emitter` (a mixin: it reads the emitter's state directly)."""

    connect_timeout_s = 0.5
    read_timeout_s = 5.0
    # How often to look for orphaned spool files of dead processes while all is well.
    replay_scan_s = 10.0

    def _deliver(self, events: list[UsageEvent], spool_only: bool = False) -> bool:
        if spool_only or self._backoff.waiting:
            return self._to_spool(events)
        if self._post(events):
            return True
        self._backoff.fail()
        return self._to_spool(events)

    def _to_spool(self, events: list[UsageEvent]) -> bool:
        try:
            try:
                self._spool.append(events)
            except (TypeError, ValueError, msgspec.EncodeError):
                self._spool.append(self._encodable(events))
            return True
        except OSError as exc:
            self._counts["dropped_spool_error"] += len(events)
            self._log_once(
                "spool", exc, "costwatch could not spool events to %s: %s", self._spool.directory, exc
            )
            return False

    def _encodable(self, events: list[UsageEvent]) -> list[UsageEvent]:
        """Drop events msgspec cannot encode (a bad value smuggled into a field), counted."""
        good = []
        for event in events:
            try:
                encode(event)
            except Exception as exc:
                self._counts["conversion_errors"] += 1
                self._log_once("encode", exc, "costwatch could not encode a usage event: %r", exc)
            else:
                good.append(event)
        return good

    def _post(self, events: list[UsageEvent], replay: bool = False) -> bool:
        """POST one batch; True when the daemon has dealt with it (stored or rejected for good)."""
        try:
            body = encode_many(events)
        except (TypeError, ValueError, msgspec.EncodeError):
            events[:] = self._encodable(events)  # in place: a failed post spools only the good ones
            if not events:
                return True
            body = encode_many(events)
        drops, dropped_header = self._drop_header()
        self._inflight = events
        try:
            status, data = self._authorized("POST", "/v1/events", body, dropped_header)
        except OSError as exc:  # every transport failure (costwatch.connection)
            self._counts["post_failures"] += 1
            self._log_once("post", exc, "costwatch daemon unreachable at %s: %r", self.settings.url, exc)
            return False
        finally:
            self._inflight = None
        reply = None
        with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
            reply = _reply_decoder.decode(data)
        if 200 <= status < 300 and reply is not None:
            self._contact(reply.killswitch, drops)
            self._count_stored(events, reply, replay)
            return True
        if status == 413 and len(events) > 1:
            half = len(events) // 2
            first = self._post(events[:half], replay)
            return self._post(events[half:], replay) and first
        if 400 <= status < 500 and status not in _RETRY_STATUSES:
            if reply is not None:
                self._contact(reply.killswitch, drops)
                self._count_stored(events, reply, replay)
            if reply is None or not reply.rejected:
                self._counts["rejected"] += len(events)
                self._log_once(
                    "rejected", TypeError, "costwatch daemon refused a batch (%d): %.300r", status, data
                )
            return True
        self._counts["post_failures"] += 1
        self._log_once(f"status{status}", TypeError, "costwatch daemon answered %d: %.300r", status, data)
        return False

    def _count_stored(self, events: list[UsageEvent], reply: IngestReply, replay: bool) -> None:
        rejected = min(len(reply.rejected), len(events))
        if rejected:
            self._counts["rejected"] += rejected
            self._log_once(
                "rejected", ValueError, "costwatch daemon rejected events: %.500r", reply.rejected[:3]
            )
        self._counts["replayed" if replay else "sent"] += len(events) - rejected

    def _contact(self, state: KillSwitchState, drops: dict[str, int] | None = None) -> None:
        """A successful ingest: adopt a newer state (the long poll may have one already), reset backoff."""
        self.killswitch.update(state, newer_only=True)
        if self._backoff.failures:
            self._next_scan = 0.0  # recovered: replay the spool now
        self._backoff.ok()
        if drops is not None:
            self._reported = drops

    def _drop_header(self) -> tuple[dict[str, int], str | None]:
        now = {
            "queue_full": self._dropped_full,
            "spool_full": self._spool.dropped,
            "spool_damaged": self._spool.damaged,
            "spool_error": self._counts["dropped_spool_error"],
            "conversion_error": self._counts["conversion_errors"],
        }
        deltas = [(k, v - self._reported.get(k, 0)) for k, v in now.items()]
        header = ",".join(f"{k}={d}" for k, d in deltas if d > 0)
        return now, header or None

    def _authorized(
        self, method: str, path: str, body: bytes | None, dropped: str | None, watch: bool = False
    ) -> tuple[int, bytes]:
        """One request; on 401 reread the token (the daemon may have created it since) and retry once."""
        if not self._token_loaded:
            self._token = self.settings.resolved_token()
            self._token_loaded = True
        status, data = self._request(method, path, body, self._headers(body, dropped), watch)
        if status == 401:
            fresh = self.settings.resolved_token()
            if fresh != self._token:
                self._token = fresh
                status, data = self._request(method, path, body, self._headers(body, dropped), watch)
        return status, data

    def _headers(self, body: bytes | None, dropped: str | None) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        if dropped:
            headers["x-costwatch-dropped"] = dropped
        return headers

    def _request(
        self, method: str, path: str, body: bytes | None, headers: dict[str, str], watch: bool = False
    ) -> tuple[int, bytes]:
        """A request on a kept-alive connection (the long poll has its own)."""
        if watch:
            return self._watch_conn.request(method, path, body, headers, self._watch_wait_s + 5.0)
        return self._conn.request(method, path, body, headers, self.read_timeout_s)

    def _maybe_replay(self) -> None:
        """Replay one spool file per tick (ours or a dead process's) while the daemon answers.

        After a failure, the first replay once the backoff has run out is the probe that
        finds the daemon back (the long poll, when it gets an answer first, says so too).
        """
        if self._backoff.waiting:
            return
        now = time.monotonic()
        if not self._spool.pending_own and now < self._next_scan:
            return
        self._next_scan = now + self.replay_scan_s  # also when claiming fails (read-only disk)
        self._spool.seal()
        claim = self._spool.claim_next()
        if claim is None:
            return
        for start in range(0, len(claim.events), self._batch):
            if not self._post(claim.events[start : start + self._batch], replay=True):
                self._spool.release(claim)
                self._backoff.fail()
                return
        self._spool.done(claim)
        self._next_scan = 0.0  # there may be more: next tick at once (it sends live events first)
        self._wake.set()
