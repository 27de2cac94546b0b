"""Every refusal costwatch makes derives from `CallBlocked`.

The instrumentation raises a per-SDK subclass that also derives from
``openai.OpenAIError`` / ``anthropic.AnthropicError`` (see
``costwatch.instrumentation.killswitch.blocked_error``) so the SDKs re-raise it
without retrying or wrapping it; users catch the classes below.
"""

from __future__ import annotations


class CallBlocked(Exception):
    """An LLM call refused by costwatch before any byte left the process."""

    def __init__(self, message: str, *, scope: dict[str, str] | None = None, reason: str = "") -> None:
        super().__init__(message)
        self.scope = dict(scope or {})
        self.reason = reason


class KillSwitchEngaged(CallBlocked):
    """The kill switch covering this call is engaged; lift it with `costwatch resume`."""


class BudgetExhausted(CallBlocked):
    """A hard budget has no room left for this call."""


class RateLimited(CallBlocked):
    """A costwatch RPM/TPM rate-limit rule refused this call."""
