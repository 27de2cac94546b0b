"""Instrumentation of the httpx2 / httpx clients under the OpenAI and Anthropic SDKs."""

from __future__ import annotations

# Filled by the instrumentation work: instrument(), uninstrument(), flush().


def instrument(settings: object | None = None) -> None:  # pragma: no cover - placeholder
    raise NotImplementedError


def uninstrument() -> None:  # pragma: no cover - placeholder
    raise NotImplementedError


def flush(timeout: float = 2.0) -> bool:  # pragma: no cover - placeholder
    raise NotImplementedError
