"""The daemon assembled and served: one process, uvicorn serving the Starlette app.

`build_daemon` is the one place that assembles a daemon: it opens the core
(`DaemonCore`: store + writer thread, kill-switch registry, metrics, pricer), builds
each collaborator on it (the rules engine, the lease authority, fleet mode, the spend
page's routes) and hands them to `Daemon` by name; the parts reach each other through
those names (``daemon.rules``, ``daemon.leases``, ``daemon.fleet``), never by searching.
Collaborators start after the store opens and stop before it closes, so a SIGTERM/SIGINT
drains in-flight requests, stops them, flushes the writer, checkpoints and closes the file.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import signal
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import uvicorn

from costwatch import statefile
from costwatch.daemon.app import build_app
from costwatch.daemon.core import DaemonCore
from costwatch.daemon.hosts import is_loopback
from costwatch.daemon.mirror import StateMirror
from costwatch.daemon.web import page_url, web_routes
from costwatch.settings import DaemonSettings

if TYPE_CHECKING:
    from starlette.routing import BaseRoute

    from costwatch.daemon.fleet import FleetService
    from costwatch.daemon.leases import LeaseService
    from costwatch.daemon.scheduler import RuleService

__all__ = [
    "BackgroundService",
    "Daemon",
    "DaemonCore",
    "RunningDaemon",
    "build_daemon",
    "is_loopback",
    "serve",
    "start_in_thread",
]

log = logging.getLogger("costwatch.daemon")


class BackgroundService(Protocol):
    """Something that runs beside the HTTP server for the daemon's lifetime (e.g. the rules engine)."""

    def start(self) -> Any: ...

    def shutdown(self) -> None: ...


class Daemon:
    """A daemon: its core, its collaborators by name and the HTTP app over them; `close()` is idempotent.

    ``services`` are further background services, started after the named ones;
    ``routes`` come before the API's (so they may own ``/``).
    """

    def __init__(
        self,
        core: DaemonCore,
        *,
        rules: RuleService | None = None,
        leases: LeaseService | None = None,
        fleet: FleetService | None = None,
        services: Sequence[BackgroundService] = (),
        routes: Sequence[BaseRoute] = (),
    ) -> None:
        self.core = core
        # The core's parts that most callers (tests, the banner, the mirror) read from the daemon.
        self.settings, self.token, self.store = core.settings, core.token, core.store
        self.metrics, self.killswitches = core.metrics, core.killswitches
        self.rules = rules
        self.leases = leases
        self.fleet = fleet
        self.mirror: StateMirror | None = None  # set by `listening_on` once the port is known
        # Started in this order, stopped in reverse: fleet mode stops before the lease authority.
        self._services: list[BackgroundService] = [
            *(s for s in (rules, leases, fleet) if s is not None),
            *services,
        ]
        self._started: list[BackgroundService] = []
        try:
            self.app = build_app(core, rules=rules, fleet=fleet, lifespan=self._lifespan, extra_routes=routes)
        except BaseException:
            core.close()
            raise

    def listening_on(self, port: int) -> None:
        """The bound port names the state file apps read (`costwatch.statefile`)."""
        leases = self.leases
        self.mirror = StateMirror(
            statefile.path_for(self.settings.state_dir, port),
            self.killswitches,
            self.settings.db_path,
            (lambda: len(leases.limits())) if leases is not None else None,
        )

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Any) -> AsyncIterator[None]:
        self.start_services()
        try:
            yield
        finally:
            self.close()

    def start_services(self) -> None:
        if self.mirror is not None:
            self.mirror.start()
            self._started.append(self.mirror)
        for service in self._services:
            service.start()
            self._started.append(service)

    def close(self) -> None:
        """Stop services (reverse order), then flush the writer and close the database."""
        while self._started:
            service = self._started.pop()
            try:
                service.shutdown()
            except Exception:
                log.exception("shutting down %r failed", service)
        self.core.close()


def build_daemon(
    settings: DaemonSettings,
    *,
    rules: bool = True,
    leases: bool = True,
    fleet: bool = True,
    spend_page: bool = True,
) -> Daemon:
    """The daemon `costwatch daemon` runs, each collaborator built here and handed over by name.

    - ``rules``: the rules engine (`RuleService`): alert rules on a schedule, reloads on SIGHUP
      and ``POST /v1/rules/reload``, budget forecasts;
    - ``leases``: the lease authority for hard budgets and rate limits (``POST /v1/leases``),
      on the rules engine's rules;
    - ``fleet``: fleet mode (`FleetService`), only with ``fleet_dsn`` (psycopg is imported only
      then); it grants the lease authority's fleet budgets;
    - ``spend_page``: ``/``, ``/spend-page/…`` and ``GET /v1/budgets`` (the engine's forecasts).

    A switch turned off leaves its collaborator out (tests run only the parts they exercise).
    """
    core = DaemonCore(settings)
    try:
        rule_service = _rules_engine(core) if rules else None
        lease_service = None
        routes: list[BaseRoute] = []
        if leases:
            from costwatch.daemon.leases import LeaseService

            lease_service = LeaseService.from_settings(settings, core.store, core.pricer, rule_service)
            routes += lease_service.routes(core.token)
        fleet_service = None
        if fleet and settings.fleet_dsn:
            from costwatch.daemon.fleet import FleetService  # psycopg: imported only with a DSN

            fleet_service = FleetService(settings, core.store, core.killswitches, core.metrics.registry)
            if lease_service is not None:
                lease_service.fleet_limit = fleet_service.budgets.node_limit
        if spend_page:
            routes += web_routes(core.token, rule_service.forecasts if rule_service is not None else None)
        return Daemon(core, rules=rule_service, leases=lease_service, fleet=fleet_service, routes=routes)
    except BaseException:
        core.close()
        raise


def _rules_engine(core: DaemonCore) -> RuleService:
    """Reads on the store's cursors, writes (alert events, kill switches) through its writer thread."""
    from costwatch.daemon.scheduler import RuleMetricsCollector, RuleService

    service = RuleService.from_settings(
        core.settings, core.store.con.cursor, core.killswitches, core.store.call
    )
    core.metrics.registry.register(RuleMetricsCollector(service))
    return service


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY on accepted connections only when
    # the listening socket says TCP; with proto 0, Nagle + delayed ACK add ~40 ms to each reply.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


class _Server(uvicorn.Server):
    """uvicorn's server; its shutdown first answers the kill-switch long polls.

    uvicorn waits for requests in flight before it stops: each instrumented process's
    open ``GET /v1/killswitch?wait=…`` would otherwise hold the shutdown until its timeout.
    """

    def __init__(self, config: uvicorn.Config, daemon: Daemon) -> None:
        super().__init__(config)
        self._daemon = daemon

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._daemon.core.killswitch_watch.close()
        await super().shutdown(sockets)


def _server(daemon: Daemon) -> uvicorn.Server:
    config = uvicorn.Config(
        daemon.app,
        log_level=daemon.settings.log_level.lower(),
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=10,
    )
    return _Server(config, daemon)


def tune_gc() -> None:
    """Fewer cyclic-GC passes while ingesting: every batch allocates ~2 objects per event.

    With the default gen-0 threshold (700) a 10k-event batch triggers ~30 collections,
    each walking the young objects: ~2x the cost of building its Arrow table
    (docs/benchmarks.md, section 2). Events themselves are untracked (``gc=False``);
    ``freeze`` moves everything built at start-up out of later full collections.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def _warn_if_clients_look_elsewhere(settings: DaemonSettings, port: int) -> None:
    """Clients find the daemon at ``url`` (COSTWATCH_URL or the config file): say so when that is not here."""
    if settings.url is None:
        return
    from urllib.parse import urlsplit

    split = urlsplit(settings.url)
    url_port = split.port or (443 if split.scheme == "https" else 80)
    host = split.hostname or ""
    wildcard = settings.host in ("0.0.0.0", "::", "")
    same_host = wildcard or host == settings.host or (is_loopback(host) and is_loopback(settings.host))
    if url_port != port or not same_host:
        print(
            f"costwatch: warning: apps and commands look for the daemon at {settings.url} (url /"
            f" COSTWATCH_URL), but it listens on {settings.host}:{port}: they will not find it",
            file=sys.stderr,
        )


def _note_signal(signum: int, frame: Any) -> None:
    log.info("stopped by signal %d", signum)


def serve(settings: DaemonSettings) -> None:
    """`costwatch daemon`: run `build_daemon` in the foreground until SIGTERM/SIGINT (uvicorn installs the handlers)."""
    if not is_loopback(settings.host):
        print(
            f"costwatch: warning: listening on {settings.host}, not loopback; anyone who can reach it"
            " can read /metrics and the kill-switch state (writes and SQL still need the token)"
            + (
                "; clients that reach it by a name or a non-loopback IP need allowed_hosts"
                " (COSTWATCH_ALLOWED_HOSTS)"
                if settings.host in ("0.0.0.0", "::", "") and not settings.allowed_hosts
                else ""
            ),
            file=sys.stderr,
        )
    sock = _bind(settings.host, settings.port)
    try:
        daemon = build_daemon(settings)
    except BaseException:
        sock.close()
        raise
    if daemon.rules is not None:
        daemon.rules.install_sighup()  # `kill -HUP` reloads the rules (we are on the main thread here)
    port = sock.getsockname()[1]
    daemon.listening_on(port)
    _warn_if_clients_look_elsewhere(settings, port)
    tune_gc()
    try:
        print(
            f"costwatch daemon on http://{settings.host}:{port}"
            f" (db {settings.db_path}, token in {settings.state_dir})",
            file=sys.stderr,
        )
        print("spend page: " + page_url(settings.host, port, daemon.token), file=sys.stderr, flush=True)
        # uvicorn handles SIGTERM/SIGINT (graceful shutdown, lifespan closes the store),
        # then re-raises the signal to the handler it found; ours just lets us exit 0.
        previous = {sig: signal.signal(sig, _note_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            _server(daemon).run(sockets=[sock])
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    finally:
        daemon.close()
        sock.close()


@dataclass
class RunningDaemon:
    """A daemon served from a thread (tests, embedding); `stop()` shuts it down like SIGTERM."""

    daemon: Daemon
    server: uvicorn.Server
    thread: threading.Thread
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def token(self) -> str:
        return self.daemon.token

    def stop(self, timeout: float = 15) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        self.daemon.close()


def start_in_thread(daemon: Daemon) -> RunningDaemon:
    """Serve ``daemon`` on its ``settings.host:settings.port`` (0 = any free port) from a background thread.

    ``start_in_thread(build_daemon(settings))`` runs what `costwatch daemon` runs;
    ``start_in_thread(Daemon(DaemonCore(settings)))`` the HTTP API alone.
    """
    settings = daemon.settings
    try:
        sock = _bind(settings.host, settings.port)
    except BaseException:
        daemon.close()
        raise
    daemon.listening_on(sock.getsockname()[1])
    server = _server(daemon)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="costwatch-http", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            daemon.close()
            raise RuntimeError("the daemon did not start")
        time.sleep(0.01)
    return RunningDaemon(daemon, server, thread, sock.getsockname()[1])
