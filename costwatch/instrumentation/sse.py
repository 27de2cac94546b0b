"""Server-sent-event parsing, done in the background from recorded chunks.

Only the fields costwatch needs are extracted (``event`` and ``data``); the
timestamp of the chunk that completed an event rides along for TTFT.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import NamedTuple


class SSEvent(NamedTuple):
    event: str | None
    data: str
    t: float  # perf_counter of the chunk that completed the event


def iter_events(chunks: Iterable[tuple[bytes, float]]) -> Iterator[SSEvent]:
    """Yield complete events; a trailing unterminated event is yielded at the end."""
    pending = b""
    last_t = 0.0
    for chunk, t in chunks:
        last_t = t
        if not pending and len(chunk) > 2 and chunk.find(b"\n\n") == len(chunk) - 2 and b"\r" not in chunk:
            ev = _parse_block(chunk[:-2], t)  # the usual chunk: exactly one complete LF event
            if ev is not None:
                yield ev
            continue
        pending += chunk
        if b"\n\n" not in pending and b"\r\n\r\n" not in pending:
            continue
        pending = pending.replace(b"\r\n", b"\n")
        *complete, pending = pending.split(b"\n\n")
        for block in complete:
            ev = _parse_block(block, t)
            if ev is not None:
                yield ev
    if pending.strip():
        ev = _parse_block(pending.replace(b"\r\n", b"\n"), last_t)
        if ev is not None:
            yield ev


def _parse_block(block: bytes, t: float) -> SSEvent | None:
    if block.startswith(b"data: ") and b"\n" not in block:  # the usual block: one data line
        return SSEvent(None, block[6:].decode("utf-8", "replace"), t)
    event: str | None = None
    data: list[str] = []
    for raw in block.split(b"\n"):
        line = raw.decode("utf-8", "replace")
        if not line or line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if field == "event":
            event = value
        elif field == "data":
            data.append(value)
    if event is None and not data:
        return None
    return SSEvent(event, "\n".join(data), t)


class UsageChunkFilter:
    """Drop the usage-only chunk that costwatch's injected ``include_usage`` adds.

    Runs on the app's path for injected chat streams only: splits the byte
    stream at event boundaries, drops the ``choices: []`` + usage event and the
    ``"usage":null`` members the option adds to every other chunk, so the app
    sees the events it would have seen without the injection.
    """

    __slots__ = ("_pending", "_sep")

    MAX_PENDING = 1 << 20  # an event this large without a separator: stop holding bytes back

    def __init__(self) -> None:
        self._pending = b""
        self._sep = b"\n\n"

    def feed(self, chunk: bytes) -> bytes:
        sep = self._sep
        if not self._pending and chunk.find(sep) == len(chunk) - len(sep) and sep == b"\n\n":
            return self._one(chunk)  # the usual case: exactly one complete event per chunk
        pending = self._pending + chunk
        if b"\r\n" in chunk and sep == b"\n\n":
            sep = self._sep = b"\r\n\r\n"  # a CRLF server: its events end with a blank CRLF line
        cut = pending.rfind(sep)
        if cut < 0:
            if len(pending) > self.MAX_PENDING:
                self._pending = b""
                return pending
            self._pending = pending
            return b""
        self._pending = pending[cut + len(sep) :]
        out = []
        for block in pending[:cut].split(sep):
            if b'"choices":[]' in block and b'"usage":{' in block:
                continue
            out.append(block.replace(b',"usage":null', b"").replace(b'"usage":null,', b""))
            out.append(sep)
        return b"".join(out)

    @staticmethod
    def _one(event: bytes) -> bytes:
        if b'"choices":[]' in event and b'"usage":{' in event:
            return b""
        if b'"usage":null' not in event:
            return event
        return event.replace(b',"usage":null', b"").replace(b'"usage":null,', b"")

    def tail(self) -> bytes:
        rest, self._pending = self._pending, b""
        return rest
