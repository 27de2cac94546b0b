"""Startup and shutdown wiring: one process, uvicorn serving the Starlette app.

`Daemon` builds the parts (pricer, metrics, store + writer thread, kill-switch
registry, app). Extra routes (the spend page) come from ``routes``, a factory
``f(daemon) -> list[Route]`` placed before the API's. Background services (the
rules scheduler, later others) plug in through ``services``: objects with
``start()`` and ``shutdown()``, or factories ``f(daemon) -> service`` when they
need the store or the kill-switch registry. They start after the store opens and stop before it closes, so a
SIGTERM/SIGINT drains in-flight requests, stops services, flushes the writer,
checkpoints and closes the file.

The rules engine, for example, plugs in as
``lambda d: RuleService.from_settings(d.settings, d.store.con.cursor,
d.killswitches, d.store.call)``: reads on their own cursors, writes through the store's writer thread (never
call `Store.call` or the kill-switch registry *from* the writer thread).
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
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import uvicorn
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from costwatch import statefile
from costwatch.daemon.app import build_app
from costwatch.daemon.hosts import is_loopback
from costwatch.daemon.killswitch import KillSwitchRegistry, StateWatch
from costwatch.daemon.metrics import DaemonMetrics
from costwatch.daemon.mirror import StateMirror
from costwatch.daemon.store import Store
from costwatch.pricing import Pricer
from costwatch.settings import DaemonSettings, ensure_token

if TYPE_CHECKING:
    from starlette.routing import BaseRoute

__all__ = ["BackgroundService", "Daemon", "RunningDaemon", "is_loopback", "serve", "start_in_thread"]

log = logging.getLogger("costwatch.daemon")


@runtime_checkable
class BackgroundService(Protocol):
    """Something that runs beside the HTTP server for the daemon's lifetime (e.g. the rule scheduler)."""

    def start(self) -> None: ...

    def shutdown(self) -> None: ...


ServiceSpec = BackgroundService | Callable[["Daemon"], BackgroundService]
RoutesFactory = Callable[["Daemon"], "list[BaseRoute]"]


class Daemon:
    """The daemon's parts, built once; `close()` is idempotent."""

    def __init__(
        self,
        settings: DaemonSettings,
        services: Iterable[ServiceSpec] = (),
        routes: RoutesFactory | None = None,
    ) -> None:
        self.settings = settings
        self.started_at = time.time()
        self.mirror: StateMirror | None = None  # set by `listening_on` once the port is known
        self.fleet: Any = None  # the FleetService when fleet_dsn is set (costwatch.daemon.fleet)
        self.token = settings.token or ensure_token(settings.state_dir)
        self.pricer = Pricer(settings.prices)
        self.metrics = DaemonMetrics(killswitch_state=lambda: self.killswitches.state())
        self.store = Store(
            settings.db_path,
            self.pricer,
            memory_limit=settings.duckdb_memory_limit,
            threads=settings.duckdb_threads,
            timezone=settings.timezone,
            wal_autocheckpoint=settings.duckdb_wal_autocheckpoint,
            on_commit=self.metrics.observe_commit,
        )
        try:
            self.metrics.registry.register(_StoreHealth(self.store))
            rows = self.store.read(KillSwitchRegistry.load)
            self.killswitches = KillSwitchRegistry(self.store.call, rows)
            self.killswitch_watch = StateWatch(self.killswitches)
            self.services: list[BackgroundService] = [
                s if isinstance(s, BackgroundService) else s(self) for s in services
            ]
            self._started: list[BackgroundService] = []
            extra = routes(self) if routes else ()
            self.app = build_app(self, lifespan=self._lifespan, extra_routes=extra)
        except BaseException:
            self.store.close()
            raise

    def listening_on(self, port: int) -> None:
        """The bound port names the state file apps read (`costwatch.statefile`)."""
        from costwatch.daemon.leases import LeaseService

        leases = next((s for s in self.services if isinstance(s, LeaseService)), None)
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
        for service in self.services:
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
        self.store.close()


class _StoreHealth(Collector):
    """`costwatch_store_healthy` at scrape time: 0 while /healthz reports the store degraded."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "costwatch_store_healthy",
            "1 while the store is healthy, 0 while /healthz reports it degraded (disk full, unwritable, failed commit).",
        )
        family.add_metric([], 0.0 if self._store.health() else 1.0)
        yield family


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY on accepted connections only when
    # the listening socket says TCP; with proto 0, Nagle + delayed ACK added ~40 ms per reply.
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
        self._daemon.killswitch_watch.close()
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

    With the default gen-0 threshold (700) a 10k-event batch triggered ~30 collections,
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


def serve(
    settings: DaemonSettings,
    services: Iterable[ServiceSpec] = (),
    routes: RoutesFactory | None = None,
    banner: Callable[[Daemon, int], str] | None = None,
) -> None:
    """Run in the foreground until SIGTERM/SIGINT (uvicorn installs the handlers)."""
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
        daemon = Daemon(settings, services, routes)
    except BaseException:
        sock.close()
        raise
    port = sock.getsockname()[1]
    daemon.listening_on(port)
    _warn_if_clients_look_elsewhere(settings, port)
    tune_gc()
    try:
        print(
            f"costwatch daemon on http://{settings.host}:{sock.getsockname()[1]}"
            f" (db {settings.db_path}, token in {settings.state_dir})",
            file=sys.stderr,
        )
        if banner is not None:
            print(banner(daemon, sock.getsockname()[1]), file=sys.stderr, flush=True)
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


def start_in_thread(
    settings: DaemonSettings, services: Iterable[ServiceSpec] = (), routes: RoutesFactory | None = None
) -> RunningDaemon:
    """Serve on ``settings.host:settings.port`` (0 = any free port) from a background thread."""
    sock = _bind(settings.host, settings.port)
    try:
        daemon = Daemon(settings, services, routes)
    except BaseException:
        sock.close()
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
