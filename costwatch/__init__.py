"""costwatch: cost and reliability monitoring for LLM API calls.

``import costwatch.autoinstrument`` is all an app needs; the names below are the
whole public API.
"""

from costwatch.context import attribute
from costwatch.errors import BudgetExhausted, CallBlocked, KillSwitchEngaged, RateLimited
from costwatch.instrumentation import flush, instrument, uninstrument

__version__ = "0.1.0"

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
