"""costwatch: cost and reliability monitoring for LLM API calls.

``import costwatch.autoinstrument`` is all an app needs; the names below are the
whole public API.

The instrumentation is imported on first use (module ``__getattr__``), not
here: every ``costwatch`` command imports this package, and `costwatch kill`
must not pay ~150 ms for instrumentation it never runs (docs/benchmarks.md, §4).
"""

from __future__ import annotations

import importlib

from costwatch._version import __version__

# The exceptions are tiny and must be the very classes the instrumentation raises: import them now.
from costwatch.errors import BudgetExhausted, CallBlocked, KillSwitchEngaged, RateLimited

TYPE_CHECKING = False  # not `typing`'s: every command imports this package
if TYPE_CHECKING:
    from typing import Any

    from costwatch.context import attribute
    from costwatch.instrumentation import flush, instrument, uninstrument

__all__ = [
    "BudgetExhausted",
    "CallBlocked",
    "KillSwitchEngaged",
    "RateLimited",
    "__version__",
    "attribute",
    "flush",
    "instrument",
    "uninstrument",
]

# Public name -> the module that defines it, imported when the name is first read.
_LAZY = {
    "attribute": "costwatch.context",
    "flush": "costwatch.instrumentation",
    "instrument": "costwatch.instrumentation",
    "uninstrument": "costwatch.instrumentation",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'costwatch' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later reads are plain attribute loads
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
