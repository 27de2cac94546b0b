"""Per-call attribution that the app sets around its LLM calls."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import NamedTuple


class Attribution(NamedTuple):
    user: str | None
    tags: dict[str, str]


_current: ContextVar[Attribution | None] = ContextVar("costwatch_attribution", default=None)


def current_attribution() -> Attribution | None:
    return _current.get()


@contextlib.contextmanager
def attribute(user: str | None = None, tags: dict[str, str] | None = None) -> Iterator[Attribution]:
    """Attribute every LLM call made inside the block to ``user`` and ``tags``.

    Nested blocks inherit the outer user and merge tags; works across threads
    started inside (via contextvars copy) and asyncio tasks.
    """
    outer = _current.get()
    merged_tags = {**(outer.tags if outer else {}), **{str(k): str(v) for k, v in (tags or {}).items()}}
    value = Attribution(user if user is not None else (outer.user if outer else None), merged_tags)
    token = _current.set(value)
    try:
        yield value
    finally:
        _current.reset(token)
