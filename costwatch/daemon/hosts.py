"""The Host check: the daemon answers only requests addressed to a name it knows (DNS rebinding).

A page on ``evil.example`` whose DNS record flips to 127.0.0.1 after the page loads is, for the
browser, same-origin with the daemon: without this check it could read ``/metrics``, the
kill-switch state or the spend page. The browser still sends ``Host: evil.example``, which it
cannot forge, so the daemon refuses every request whose Host is not

- a loopback name: ``localhost``, any 127.0.0.0/8 address, ``[::1]``;
- the address it is bound to, when that is not a wildcard (``0.0.0.0``, ``::``);
- a name in the ``allowed_hosts`` setting (``COSTWATCH_ALLOWED_HOSTS``), or anything when it holds ``*``;

with any port or none. A request with no Host header at all (HTTP/1.0; HTTP/1.1 requires one and
uvicorn refuses it without) passes: every browser sends Host, so its absence is no rebinding.

A pure ASGI middleware, not Starlette's ``TrustedHostMiddleware``: a request pays one scan of
its header list and a set lookup of the raw value (accepted values are cached); no Request
object, no header decoding.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

__all__ = ["HostCheck", "allowed_host_names", "host_name", "is_loopback", "normalize_host"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

WILDCARD_BINDS = frozenset({"0.0.0.0", "::", ""})
SETTING_HINT = "allowed_hosts (COSTWATCH_ALLOWED_HOSTS or the config file)"
_CACHE_MAX = 1024


def normalize_host(name: str) -> str:
    """A host name or IP literal as the check compares it: lower case, IPs canonical, no brackets.

    Raises ValueError for something that is not a bare name (a port, a scheme, a path, spaces).
    """
    value = name.strip().lower()
    if value.startswith("[") and value.endswith("]"):
        value = value[1:-1]
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    if not value or any(c in value for c in ":/@[] \t") or value.startswith("."):
        raise ValueError(f"{name!r} is not a host name or IP address (no scheme, port or path)")
    return value


def host_name(header: str) -> str | None:
    """The name part of a Host header value (``[::1]:7707`` → ``::1``), normalized; None if malformed."""
    value = header.strip()
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        name, rest = value[1:end], value[end + 1 :]
        if rest and not (rest.startswith(":") and rest[1:].isdigit()):
            return None
        try:
            return str(ipaddress.IPv6Address(name))
        except ValueError:
            return None
    if value.count(":") > 1:  # a bare IPv6 literal (malformed without brackets, but unambiguous)
        try:
            return str(ipaddress.IPv6Address(value))
        except ValueError:
            return None
    name, sep, port = value.rpartition(":")
    if not sep:
        name = value
    elif not port.isdigit() or ":" in name:
        return None
    try:
        return normalize_host(name)
    except ValueError:
        return None


def is_loopback(name: str) -> bool:
    """``localhost`` or a loopback IP (127.0.0.0/8, ::1): the names that always reach this host."""
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def allowed_host_names(bind_host: str, allowed_hosts: Iterable[str]) -> frozenset[str]:
    """The configured names (loopback is always allowed besides): the bind address and ``allowed_hosts``."""
    names = {normalize_host(h) if h.strip() != "*" else "*" for h in allowed_hosts}
    if bind_host.strip() not in WILDCARD_BINDS:
        names.add(normalize_host(bind_host))
    return frozenset(names)


class HostCheck:
    """Refuse (421, one JSON line) any HTTP or WebSocket request addressed to an unknown Host."""

    def __init__(self, app: ASGIApp, bind_host: str = "127.0.0.1", allowed_hosts: Iterable[str] = ()) -> None:
        self.app = app
        self.names = allowed_host_names(bind_host, allowed_hosts)
        self.any_host = "*" in self.names
        self._accepted: set[bytes] = set()

    def allows(self, raw: bytes) -> bool:
        if raw in self._accepted:
            return True
        name = host_name(raw.decode("latin-1"))
        ok = name is not None and (is_loopback(name) or name in self.names)
        if ok and len(self._accepted) < _CACHE_MAX:
            self._accepted.add(raw)
        return ok

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or self.any_host:
            await self.app(scope, receive, send)
            return
        host: bytes | None = None
        for key, value in scope["headers"]:
            if key == b"host":
                if host is not None:  # two Host headers: ambiguous, refuse
                    host = b"(several Host headers)"
                    break
                host = value
        if host is None or self.allows(host):
            await self.app(scope, receive, send)
            return
        await self._refuse(host, scope, send)

    async def _refuse(self, host: bytes, scope: Scope, send: Send) -> None:
        shown = host.decode("latin-1")[:200]
        message = (
            f"Host {shown!r} is not allowed: the daemon answers only loopback names, its bind address"
            f" and allowed_hosts; add the name to {SETTING_HINT} to reach it by that name"
        )
        if scope["type"] == "websocket":  # no route uses one today; close before accepting
            await send({"type": "websocket.close", "code": 1008, "reason": message[:120]})
            return
        body = json.dumps({"error": message}, separators=(",", ":")).encode()  # as the app's errors
        await send(
            {
                "type": "http.response.start",
                "status": 421,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
