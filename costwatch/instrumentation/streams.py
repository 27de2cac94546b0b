"""Byte-stream proxies that watch a streamed response without changing it.

``response.stream`` is replaced by a subclass of the library's own
``SyncByteStream`` / ``AsyncByteStream`` (``iter_raw`` checks that type). Each
chunk is passed through unchanged (or, for chat streams where costwatch
injected ``include_usage``, through `UsageChunkFilter`) and recorded by
reference with a timestamp. Every way a stream ends reaches the record's single
``finish()`` latch: exhaustion, an error, ``close()``/``aclose()``, or
``weakref.finalize`` when the app drops the stream unread.
"""

from __future__ import annotations

import weakref
from collections.abc import AsyncIterator, Iterator
from types import ModuleType
from typing import Any

from costwatch.instrumentation.record import CallRecord, guard

_classes: dict[str, tuple[type, type]] = {}


def _filtered(record: CallRecord, chunk: bytes) -> bytes:
    try:
        return record.filter.feed(chunk)
    except Exception:
        guard.report("usage_filter")
        pending, record.filter = record.filter.tail(), None
        return pending + chunk


def stream_classes(lib: ModuleType) -> tuple[type, type]:
    """(sync proxy, async proxy) subclassing ``lib``'s byte-stream bases; built once per lib."""
    cached = _classes.get(lib.__name__)
    if cached is not None:
        return cached

    class SyncStreamProxy(lib.SyncByteStream):  # type: ignore[name-defined,misc]
        def __init__(self, inner: Any, record: CallRecord) -> None:
            self._inner = inner
            self._record = record
            finalizer = weakref.finalize(self, record.finish, "dropped")
            finalizer.atexit = False

        def __iter__(self) -> Iterator[bytes]:
            record = self._record
            try:
                for chunk in self._inner:
                    record.add_chunk(chunk)
                    if record.filter is not None:
                        chunk = _filtered(record, chunk)
                        if not chunk:
                            continue
                    yield chunk
                if record.filter is not None:
                    rest = record.filter.tail()
                    if rest:
                        yield rest
            except GeneratorExit:
                record.finish("closed")
                raise
            except BaseException as exc:
                record.finish("error", type(exc))
                raise
            record.finish("complete")

        def close(self) -> None:
            try:
                self._inner.close()
            finally:
                self._record.finish("closed")

    class AsyncStreamProxy(lib.AsyncByteStream):  # type: ignore[name-defined,misc]
        def __init__(self, inner: Any, record: CallRecord) -> None:
            self._inner = inner
            self._record = record
            finalizer = weakref.finalize(self, record.finish, "dropped")
            finalizer.atexit = False

        async def __aiter__(self) -> AsyncIterator[bytes]:
            record = self._record
            try:
                async for chunk in self._inner:
                    record.add_chunk(chunk)
                    if record.filter is not None:
                        chunk = _filtered(record, chunk)
                        if not chunk:
                            continue
                    yield chunk
                if record.filter is not None:
                    rest = record.filter.tail()
                    if rest:
                        yield rest
            except GeneratorExit:
                record.finish("closed")
                raise
            except BaseException as exc:
                record.finish("error", type(exc))
                raise
            record.finish("complete")

        async def aclose(self) -> None:
            try:
                await self._inner.aclose()
            finally:
                self._record.finish("closed")

    _classes[lib.__name__] = (SyncStreamProxy, AsyncStreamProxy)
    return SyncStreamProxy, AsyncStreamProxy
