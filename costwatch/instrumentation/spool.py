"""Disk spool for batches the daemon could not take: bounded, crash-tolerant, replayed once.

Layout under ``spool_dir`` (one flat directory shared by every process on the host):

- ``<instance>.lock``: held with ``flock`` for the life of the writing process, so
  others can tell a live writer from a dead one (PIDs get reused and repeat across
  containers; a lock does not).
- ``<ns>-<instance>.ndjson``: a segment, one ``encode(event)`` per line, compressed as one
  zstd stream (each append is flushed as complete zstd blocks, so a crash loses at most
  the append it interrupted, and later appends reuse the earlier ones as context: ~80-100
  bytes an event instead of ~650). ``ns`` is the creation time, so sorting names replays
  the oldest first across processes. Segments left uncompressed by an older costwatch
  are still read.
- ``<segment>.claimed.<instance>``: a segment being replayed by ``instance``. Claiming
  is an atomic ``os.rename``, so two processes never replay the same file.

``instance`` is ``<pid>-<random>``: unique per process, and new after ``fork()``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from costwatch.events import UsageEvent, decode, encode

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: orphans are only taken over when their lock is gone
    fcntl = None  # type: ignore[assignment]

__all__ = ["Claim", "Spool", "segment_lines"]

log = logging.getLogger("costwatch.emitter")

SUFFIX = ".ndjson"
CLAIMED = ".claimed."
LOCK_SUFFIX = ".lock"
MAX_SEGMENT_BYTES = 4 * 1024 * 1024  # a claimed segment is read whole
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
ZSTD_LEVEL = 1  # measured on usage events: smaller *and* faster than level 3 (docs/architecture.md)
_READ_CHUNK = 64 * 1024  # decompressed in chunks: what precedes a damaged byte is kept


@dataclass
class _Segment:
    path: Path
    size: int
    events: int


@dataclass
class Claim:
    """A segment this process took over for replay: send ``events``, then ``done()`` or ``release()``."""

    path: Path
    original_name: str
    events: list[UsageEvent]
    damaged: int
    size: int
    owner: str = ""
    own: bool = field(default=False)


class Spool:
    """This process's spool segments plus takeover of orphaned ones; thread-safe."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.segment_bytes = max(1, min(MAX_SEGMENT_BYTES, max_bytes // 8))
        self.dropped = 0  # events evicted to respect max_bytes (oldest first)
        self.damaged = 0  # unreadable lines met while replaying
        self.written = 0
        self._lock = threading.Lock()
        self._new_instance()

    def _new_instance(self) -> None:
        self.instance = f"{os.getpid()}-{os.urandom(4).hex()}"  # secrets.token_hex(4), without its import
        self._lock_fd: int | None = None
        self._segments: list[_Segment] = []  # oldest first; the last one may be open
        self._current: _Segment | None = None
        self._fd: int | None = None
        self._zstd: Any = None  # the open segment's compressor

    def after_fork_in_child(self) -> None:
        """The child is a new writer: forget the parent's segments, keep the parent's lock held."""
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)  # closing our copy does not release the parent's flock
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)  # unbuffered: nothing of the parent's can be written from here
        self._lock = threading.Lock()
        self.dropped = self.damaged = self.written = 0
        self._new_instance()

    # -- writing ---------------------------------------------------------------------------

    @property
    def size(self) -> int:
        return sum(s.size for s in self._segments)

    @property
    def pending_own(self) -> int:
        """Segments of this process waiting for replay."""
        return len(self._segments)

    def append(self, batch: Iterable[UsageEvent], lines: list[bytes] | None = None) -> int:
        """Append events; returns how many were written. Evicts the oldest beyond ``max_bytes``."""
        if lines is None:
            lines = [encode(e) + b"\n" for e in batch]
        total = sum(map(len, lines))
        with self._lock:
            if total > self.max_bytes:  # keep the newest lines that fit, compressed (estimated)
                ratio = len(_zstd().ZstdCompressor(level=ZSTD_LEVEL).compress(b"".join(lines))) / total
                room = int(
                    self.max_bytes * 0.9 / ratio
                )  # 10 % margin: the stream compresses a bit differently
                keep = len(lines)
                while keep and total > room:
                    keep -= 1
                    total -= len(lines[len(lines) - keep - 1])
                self.dropped += len(lines) - keep
                lines = lines[len(lines) - keep :]
            if not lines:
                return 0
            self._ensure_lock()
            if self._current is not None and self._current.size + total > self.max_bytes:
                self._seal_locked()  # never let eviction of the open segment take the new lines with it
            segment = self._writable_segment()
            data = self._compress(b"".join(lines))
            try:
                _write_all(self._fd, data)  # type: ignore[arg-type]
            except OSError:
                self._seal_locked(finish=False)  # the next write starts a clean file, never a glued line
                raise
            segment.size += len(data)
            segment.events += len(lines)
            self.written += len(lines)
            if segment.size >= self.segment_bytes:
                self._seal_locked()
            self._evict_locked()
            return len(lines)

    def _writable_segment(self) -> _Segment:
        if self._current is None:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            name = f"{time.time_ns():020d}-{self.instance}{SUFFIX}"
            path = self.directory / name
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            self._zstd = _zstd().ZstdCompressor(level=ZSTD_LEVEL).compressobj()
            self._current = _Segment(path, 0, 0)
            self._segments.append(self._current)
        return self._current

    def _compress(self, data: bytes) -> bytes:
        """``data`` as complete blocks of the open segment's zstd stream."""
        zstd = _zstd()
        return self._zstd.compress(data) + self._zstd.flush(zstd.COMPRESSOBJ_FLUSH_BLOCK)

    def seal(self) -> None:
        """Close the open segment so it can be claimed for replay."""
        with self._lock:
            self._seal_locked()

    def _seal_locked(self, finish: bool = True) -> None:
        if self._fd is not None:
            if finish and self._zstd is not None and self._current is not None:
                with contextlib.suppress(OSError, _zstd().ZstdError):
                    end = self._zstd.flush()  # the frame's end: the reader can tell it is complete
                    _write_all(self._fd, end)
                    self._current.size += len(end)
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._fd = None
        self._zstd = None
        self._current = None

    def _evict_locked(self) -> None:
        while self._segments and sum(s.size for s in self._segments) > self.max_bytes:
            oldest = self._segments.pop(0)
            if oldest is self._current:
                self._seal_locked()
            with contextlib.suppress(OSError):
                oldest.path.unlink()
            self.dropped += oldest.events
            log.warning(
                "costwatch spool full (%d bytes): dropped %d oldest events", self.max_bytes, oldest.events
            )

    def _ensure_lock(self) -> None:
        """Publish ``<instance>.lock`` already locked (create, flock, rename), so no one sees it free."""
        if self._lock_fd is not None or fcntl is None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        final = self.directory / f"{self.instance}{LOCK_SUFFIX}"
        tmp = self.directory / f".{self.instance}{LOCK_SUFFIX}.tmp"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(tmp, final)
        except OSError:
            os.close(fd)
            raise
        self._lock_fd = fd

    # -- replay ----------------------------------------------------------------------------

    def claim_next(self) -> Claim | None:
        """Take the oldest replayable segment (ours, or one of a dead process) and read it."""
        try:
            names = sorted(os.listdir(self.directory))
        except OSError:  # no spool yet, or not a directory at all
            return None
        alive: dict[str, bool] = {}
        with self._lock:
            current = self._current.path.name if self._current is not None else None
        for name in names:
            if name.endswith(SUFFIX):
                if name == current:
                    continue
                owner = name[21 : -len(SUFFIX)]
                original = name
            elif CLAIMED in name:
                original, owner = name.split(CLAIMED, 1)
                if owner == self.instance:
                    continue  # our own replay in progress
            else:
                continue
            if owner != self.instance:
                if owner not in alive:
                    alive[owner] = self._is_alive(owner)
                if alive[owner]:
                    continue
            claimed = self.directory / f"{original}{CLAIMED}{self.instance}"
            with self._lock:
                self._ensure_lock()  # a claimer must look alive, or others would take its claim
            try:
                os.rename(self.directory / name, claimed)
            except OSError:
                continue  # someone else claimed it first
            writer = original[21 : -len(SUFFIX)]
            own = writer == self.instance
            if own:
                with self._lock:
                    self._segments = [s for s in self._segments if s.path.name != name]
            events, damaged, size = self._read(claimed)
            return Claim(claimed, original, events, damaged, size, writer, own)
        with self._lock:  # forget segments someone deleted behind our back
            self._segments = [s for s in self._segments if s is self._current or s.path.exists()]
        self._sweep_locks(names, alive)
        return None

    def _sweep_locks(self, names: list[str], alive: dict[str, bool]) -> None:
        """Remove lock files of dead writers that left no segments (a crash after the last replay)."""
        for name in names:
            if not name.endswith(LOCK_SUFFIX) or name.startswith("."):
                continue
            instance = name[: -len(LOCK_SUFFIX)]
            if instance == self.instance or any(instance in n for n in names if n != name):
                continue
            if not alive.get(instance, self._is_alive(instance)):
                with contextlib.suppress(OSError):
                    (self.directory / name).unlink()

    def done(self, claim: Claim) -> None:
        """The claimed events reached the daemon: delete the file."""
        with contextlib.suppress(OSError):
            claim.path.unlink()
        if not claim.own:
            self._forget_dead(claim.owner)

    def release(self, claim: Claim) -> None:
        """Replay failed: adopt the file as our own segment (same age), so it is retried and capped."""
        with self._lock:
            self._ensure_lock()
            target = self.directory / f"{claim.original_name[:20]}-{self.instance}{SUFFIX}"
            try:
                os.rename(claim.path, target)
            except OSError:
                return
            segment = _Segment(target, claim.size, len(claim.events))
            self._segments.append(segment)
            self._segments.sort(key=lambda s: s.path.name)
            self._evict_locked()

    def _read(self, path: Path) -> tuple[list[UsageEvent], int, int]:
        """Every decodable line; damaged ones (torn write, garbage, non-UTF-8) are counted, skipped."""
        try:
            raw = path.read_bytes()
        except OSError as exc:
            log.warning("costwatch could not read spool file %s: %s", path, exc)
            return [], 0, 0
        data, damaged = _decompress(raw) if raw.startswith(ZSTD_MAGIC) else (raw, 0)
        events: list[UsageEvent] = []
        for line in data.split(b"\n"):
            if not line.strip():
                continue
            try:
                events.append(decode(line))
            except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError, ValueError):
                damaged += 1
        if damaged:
            log.warning("costwatch spool file %s: skipped %d damaged lines", path.name, damaged)
            with self._lock:
                self.damaged += damaged
        return events, damaged, len(raw)

    def _is_alive(self, instance: str) -> bool:
        """A writer is alive while it holds its lock; without the lock file it is gone."""
        path = self.directory / f"{instance}{LOCK_SUFFIX}"
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            return False
        except OSError:
            return True
        try:
            if fcntl is None:  # pragma: no cover - no way to tell: assume alive
                return True
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return True
            fcntl.flock(fd, fcntl.LOCK_UN)
            return False
        finally:
            os.close(fd)

    def _forget_dead(self, instance: str) -> None:
        """Remove a dead writer's lock file once none of its segments remain."""
        try:
            names = os.listdir(self.directory)
        except OSError:
            return
        if any(instance in n and not n.endswith(LOCK_SUFFIX) for n in names):
            return
        with contextlib.suppress(OSError):
            (self.directory / f"{instance}{LOCK_SUFFIX}").unlink()

    def close(self) -> None:
        """Seal the open segment; drop our lock file when nothing of ours is left."""
        with self._lock:
            self._seal_locked()
            if self._lock_fd is not None and not self._segments:
                with contextlib.suppress(OSError):
                    (self.directory / f"{self.instance}{LOCK_SUFFIX}").unlink()
                with contextlib.suppress(OSError):
                    os.close(self._lock_fd)
                self._lock_fd = None


def _zstd() -> Any:
    """The ``zstandard`` module, imported when the spool is first used (not at the app's import)."""
    import zstandard

    return zstandard


def _decompress(raw: bytes) -> tuple[bytes, int]:
    """A segment's text: every zstd frame in it, up to the first damaged byte (then 1 damaged)."""
    zstd = _zstd()
    out: list[bytes] = []
    pos = 0
    while pos < len(raw):
        if raw[pos : pos + 4] != ZSTD_MAGIC:
            return b"".join(out), 1
        obj = zstd.ZstdDecompressor().decompressobj()
        try:
            while pos < len(raw) and not obj.eof:
                chunk = raw[pos : pos + _READ_CHUNK]
                out.append(obj.decompress(chunk))
                pos += len(chunk) - (len(obj.unused_data) if obj.eof else 0)
        except zstd.ZstdError:
            return b"".join(out), 1
    return b"".join(out), 0


def segment_lines(path: Path) -> list[bytes]:
    """The non-empty lines of a segment file, compressed or not (for tools and tests)."""
    raw = Path(path).read_bytes()
    data = _decompress(raw)[0] if raw.startswith(ZSTD_MAGIC) else raw
    return [line for line in data.split(b"\n") if line]


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
