"""The daemon's HTTP API as the commands see it: `client_for` finds the daemon, `Client` asks it."""

from __future__ import annotations

import os

from costwatch.cli.errors import CLIError

TYPE_CHECKING = False  # not `typing`'s: the light path does not import typing (see costwatch.sources)
if TYPE_CHECKING:
    import argparse
    from typing import Any

    from costwatch.sources import DaemonEndpoint

__all__ = ["Client", "client_for"]


def client_for(args: argparse.Namespace) -> Client:
    """The daemon at ``--url`` > ``COSTWATCH_URL`` > the config file's ``url`` > the default, as apps find it."""
    from costwatch.sources import SettingError, daemon_endpoint

    if getattr(args, "config", None):
        os.environ["COSTWATCH_CONFIG"] = str(args.config)
    try:
        endpoint = daemon_endpoint(getattr(args, "url", None))
    except SettingError as exc:
        raise CLIError(f"invalid setting {exc.field}: {exc.msg} (got {exc.value!r})", 2) from None
    except (OSError, ValueError) as exc:
        raise CLIError(f"cannot read the config file: {exc}", 2) from None
    timeout = getattr(args, "timeout", None)
    if timeout is not None and timeout <= 0:
        raise CLIError("--timeout must be a positive number of seconds", 2)
    return Client(endpoint, timeout)


class Client:
    """The daemon's HTTP API as seen from the CLI, over one `DaemonConnection`.

    Every failure is a `CLIError` that names the URL: nothing answering, an answer that
    never came (a hung daemon), or one that is not a costwatch daemon's. There is no file
    fallback here: offline use is ``--db PATH`` only.
    """

    connect_timeout_s = 1.0

    def __init__(self, endpoint: DaemonEndpoint, timeout: float | None = None) -> None:
        from costwatch.connection import DaemonConnection

        self.timeout = timeout  # --timeout: replaces each request's own default
        self.url = endpoint.url
        self.token = endpoint.token
        self._conn = DaemonConnection(endpoint.url, self.connect_timeout_s)

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        timeout: float = 120,
        expect: tuple[str, ...] = (),
        not_done: str = "",
    ) -> Any:
        """The JSON object the daemon answered; ``expect`` names keys a real answer has.

        ``not_done`` ends the message when the request surely did not take effect (nothing
        answered); a request that was sent but never answered says the outcome is unknown.
        """
        import json

        from costwatch.connection import NotConnected

        timeout = self.timeout or timeout
        payload = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json"}
        if payload is not None:
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        unknown = "; it is not known whether it took effect" if not_done else ""
        try:
            status, raw = self._conn.request(method, path, payload, headers, timeout)
        except NotConnected as exc:
            raise CLIError(f"no daemon answered at {self.url} ({exc}){not_done}") from None
        except TimeoutError:
            raise CLIError(
                f"the daemon at {self.url} accepted the connection but did not answer"
                f" within {timeout:g} s{unknown}"
            ) from None
        except OSError as exc:  # costwatch.connection raises OSError for every transport failure
            raise CLIError(f"the daemon at {self.url} failed to answer: {exc!r}{unknown}") from None
        try:
            data = json.loads(raw)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            snippet = raw[:80].decode("utf-8", "replace").strip()
            raise CLIError(
                f"{self.url} did not answer like a costwatch daemon (HTTP {status}: {snippet!r}){not_done}"
            )
        if status >= 400:
            message = data.get("error") if isinstance(data.get("error"), str) else None
            if status in (400, 422) and message:
                raise CLIError(message)
            raise CLIError(f"the daemon at {self.url} answered HTTP {status}: {message or data}{not_done}")
        if any(key not in data for key in expect):
            raise CLIError(f"{self.url} did not answer like a costwatch daemon (no {expect}){not_done}")
        return data
