"""The bearer-token check every protected daemon route uses (constant-time compare)."""

from __future__ import annotations

import hmac

from starlette.requests import Request

CHALLENGE = {"WWW-Authenticate": "Bearer"}


def bearer_token(request: Request) -> str | None:
    """The token of an ``Authorization: Bearer …`` header, or None."""
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return None
    return given.strip()


def authorized(request: Request, expected: bytes) -> bool:
    given = bearer_token(request)
    return given is not None and hmac.compare_digest(given.encode(), expected)
