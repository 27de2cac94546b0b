"""The daemon's HTTP API (Starlette): ingest, kill switch, SQL, status, admin, metrics, health.

Handlers stay thin: decoding and auth here; storage, pricing and the kill
switch live in their own modules. Anything that blocks (a commit, a query, a
kill-switch write) runs off the event loop. Errors are one line in
``{"error": ...}``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import msgspec
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from costwatch import events as ev
from costwatch.daemon import queries
from costwatch.daemon.auth import CHALLENGE, authorized, bearer_token
from costwatch.daemon.hosts import HostCheck
from costwatch.daemon.killswitch import ScopeError
from costwatch.daemon.metrics import CONTENT_TYPE
from costwatch.daemon.sql import QueryError, encode, run_query, to_csv
from costwatch.protocol import SCOPE_KEYS, IngestReply

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager

    from costwatch.daemon.core import DaemonCore
    from costwatch.daemon.fleet import FleetService
    from costwatch.daemon.scheduler import RuleService

__all__ = ["build_app", "decode_batch"]

log = logging.getLogger("costwatch.daemon.app")

_list_decoder = msgspec.json.Decoder(list[ev.UsageEvent])
_raw_list_decoder = msgspec.json.Decoder(list[msgspec.Raw])
_any_decoder = msgspec.json.Decoder()


class HTTPError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def _engage_fields(data: dict[str, Any]) -> tuple[str, float | None, str]:
    """(reason, for_s, source) of an engage request, host or fleet; a bad value is a 400."""
    reason = data.get("reason")
    if not isinstance(reason, str) or not reason.strip():
        raise HTTPError(400, "engage needs a non-empty reason")
    for_s = data.get("for_s")
    if for_s is not None and (not isinstance(for_s, int | float) or for_s <= 0):
        raise HTTPError(400, "for_s must be a positive number of seconds")
    return reason, for_s, str(data.get("source") or "http")


def json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(encode(obj), status_code=status, media_type="application/json", headers=headers)


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return json_response({"error": message}, status, headers)


MAX_LONG_POLL_S = 60.0


def _long_poll(request: Request) -> tuple[int | None, float]:
    """``?version=V&wait=S`` of a kill-switch long poll: (V or None, S capped); a bad value is a 400."""
    params = request.query_params
    raw_version, raw_wait = params.get("version"), params.get("wait")
    try:
        version = int(raw_version) if raw_version is not None else None
        wait = float(raw_wait) if raw_wait is not None else 0.0
    except ValueError:
        raise HTTPError(400, "version must be an integer and wait a number of seconds") from None
    if not 0 <= wait <= MAX_LONG_POLL_S:  # also NaN
        raise HTTPError(400, f"wait must be between 0 and {MAX_LONG_POLL_S:g} seconds")
    return version, wait


# -- decoding ---------------------------------------------------------------------------
def _item_error(index: int, raw: bytes, exc: Exception) -> dict[str, Any]:
    event_id = None
    try:
        obj = _any_decoder.decode(raw)
        if isinstance(obj, dict) and isinstance(obj.get("id"), str):
            event_id = obj["id"]
    except (msgspec.DecodeError, UnicodeDecodeError):
        pass
    return {"index": index, "id": event_id, "error": str(exc)}


def decode_batch(
    body: bytes, ndjson: bool, max_events: int | None = None
) -> tuple[list[ev.UsageEvent], list[dict[str, Any]]]:
    """Valid events and ``[{index, id, error}]`` for the rest.

    Fast path: one typed decode of the whole array (~0.5 ms per 1000 events);
    only when it fails is each item decoded on its own to name the bad ones.
    """
    if ndjson:
        lines = [line for line in body.splitlines() if line.strip()]
        if max_events is not None and len(lines) > max_events:
            raise HTTPError(413, f"batch of {len(lines)} events exceeds max_batch_events={max_events}")
        items: list[bytes] | None = lines
        body = b"[" + b",".join(lines) + b"]"
    else:
        items = None
    try:
        events = _list_decoder.decode(body)
        if all(e.ts_end >= e.ts_start for e in events):
            return events, []
    except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError):
        pass
    if items is None:
        try:
            items = [bytes(r) for r in _raw_list_decoder.decode(body)]
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            raise HTTPError(400, f"the body is not a JSON array of events (nor NDJSON): {exc}") from None
    good: list[ev.UsageEvent] = []
    rejected: list[dict[str, Any]] = []
    for index, raw in enumerate(items):
        try:
            good.append(ev.decode(raw))
        except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError) as exc:  # invalid UTF-8
            rejected.append(_item_error(index, raw, exc))
    return good, rejected


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed ``limit`` (header or stream)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise HTTPError(400, "invalid Content-Length") from None
        if size > limit:
            raise HTTPError(413, f"body of {size} bytes exceeds max_body_bytes={limit}")
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise HTTPError(413, f"body exceeds max_body_bytes={limit}")
        chunks.append(chunk)
    return b"".join(chunks)


# -- the app ----------------------------------------------------------------------------
def build_app(
    core: DaemonCore,
    *,
    rules: RuleService | None = None,
    fleet: FleetService | None = None,
    lifespan: Callable[[Any], AbstractAsyncContextManager[None]] | None = None,
    extra_routes: Sequence[BaseRoute] = (),
) -> Starlette:
    """The API over the daemon's core, its rules engine and fleet mode (either may be absent).

    ``extra_routes`` (e.g. the spend page's) come first, so they may own ``/``.
    """
    settings = core.settings
    token = core.token.encode()
    metrics = core.metrics
    store = core.store
    registry = core.killswitches
    # Backpressure: refuse (503, the emitter keeps or spools the batch) rather than queue without bound.
    # A queued event costs ~1.6 KB as a Python object: 50k pending is ~80 MB (the RSS peaks of
    # docs/benchmarks.md §5). The emitters' batches are 2k events.
    max_pending = max(settings.max_batch_events, 50_000)

    def require_token(request: Request) -> None:
        if bearer_token(request) is None:
            raise HTTPError(
                401,
                "missing bearer token: send 'Authorization: Bearer <token>' (the token is in the state dir)",
                CHALLENGE,
            )
        if not authorized(request, token):
            raise HTTPError(401, "invalid bearer token", CHALLENGE)

    async def json_body(request: Request, limit: int = 1024 * 1024) -> dict[str, Any]:
        body = await read_body(request, limit)
        try:
            data = _any_decoder.decode(body or b"{}")
        except msgspec.DecodeError as exc:
            raise HTTPError(400, f"the body is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise HTTPError(400, "the body must be a JSON object")
        return data

    def endpoint(
        fn: Callable[[Request], Awaitable[Response]], *, auth: bool
    ) -> Callable[[Request], Awaitable[Response]]:
        async def handler(request: Request) -> Response:
            try:
                if auth:
                    require_token(request)
                return await fn(request)
            except HTTPError as exc:
                return error_response(exc.status, exc.message, exc.headers)
            except Exception as exc:  # one JSON line, not Starlette's plain-text 500
                log.exception("%s %s failed", request.method, request.url.path)
                line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                return error_response(500, f"internal error: {line}")

        return handler

    async def ingest(request: Request) -> Response:
        body = await read_body(request, settings.max_body_bytes)
        ctype = request.headers.get("content-type", "")
        stripped = body.lstrip()
        ndjson = "ndjson" in ctype or "jsonlines" in ctype or (bool(stripped) and stripped[:1] == b"{")
        if not stripped:
            raise HTTPError(400, "empty body: send a JSON array of events or NDJSON")
        events, rejected = decode_batch(body, ndjson, settings.max_batch_events)
        if len(events) + len(rejected) > settings.max_batch_events:
            raise HTTPError(
                413,
                f"batch of {len(events) + len(rejected)} events exceeds"
                f" max_batch_events={settings.max_batch_events}",
            )
        accepted = duplicates = 0
        if events:
            if store.pending_events > max_pending:
                raise HTTPError(503, "the daemon is behind on writes; retry shortly", {"Retry-After": "1"})
            future = store.submit(events)  # the events become one priced Arrow table here
            del events, body, stripped  # while the commit is awaited, only that table is held
            try:
                result = await asyncio.wrap_future(future)
            except Exception as exc:
                line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise HTTPError(503, f"could not store the events: {line}", {"Retry-After": "1"}) from None
            accepted, duplicates = result.accepted, result.duplicates
            if duplicates:
                metrics.duplicates.inc(duplicates)
        # Counted only once the request succeeded: a client retrying after a 503 resends them.
        if rejected:
            metrics.rejected.inc(len(rejected))
        dropped = request.headers.get("x-costwatch-dropped")
        if dropped:
            metrics.client_dropped_header(dropped)
        reply = IngestReply(
            accepted=accepted, duplicates=duplicates, rejected=rejected, killswitch=registry.state()
        )
        return Response(
            msgspec.json.encode(reply), status_code=422 if rejected else 200, media_type="application/json"
        )

    async def killswitch_get(request: Request) -> Response:
        state = registry.state()
        version, wait = _long_poll(request)
        if version is not None and wait > 0 and version == state.version:
            state = await core.killswitch_watch.wait(version, wait)
        return Response(msgspec.json.encode(state), media_type="application/json")

    def fleet_service() -> FleetService:
        if fleet is None:
            raise HTTPError(
                409, "fleet mode is off on this daemon: start it with fleet_dsn (COSTWATCH_FLEET_DSN)"
            )
        return fleet

    def wants_fleet(request: Request, data: dict[str, Any] | None = None) -> bool:
        flag = request.query_params.get("fleet", "")
        return flag.lower() in ("1", "true", "yes") or bool(data and data.get("fleet") is True)

    async def fleet_killswitch(data: dict[str, Any], action: Any, scope: dict[str, Any]) -> Response:
        fleet = fleet_service()
        try:
            if action == "engage":
                reason, for_s, source = _engage_fields(data)
                ks = await run_in_threadpool(fleet.killswitch.engage, scope, reason, source, for_s)
                return json_response({"killswitch": ks, "fleet": True, "state": registry.state()})
            if action == "lift":
                target = None if data.get("all") else scope
                n = await run_in_threadpool(fleet.killswitch.lift, target, str(data.get("by") or "http"))
                return json_response({"lifted": n, "fleet": True, "state": registry.state()})
        except ScopeError as exc:
            raise HTTPError(400, str(exc)) from None
        except HTTPError:
            raise
        except Exception as exc:  # the ledger does not answer: say so, nothing was done
            line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise HTTPError(503, f"the fleet ledger did not take it: {line}") from None
        raise HTTPError(400, "action must be 'engage' or 'lift'")

    async def killswitch_post(request: Request) -> Response:
        data = await json_body(request)
        action = data.get("action")
        scope = data.get("scope") or {}
        if not isinstance(scope, dict):
            raise HTTPError(400, 'scope must be an object like {"app": "chatbot"}')
        if wants_fleet(request, data):
            return await fleet_killswitch(data, action, scope)
        try:
            if action == "engage":
                reason, for_s, source = _engage_fields(data)
                expires = time.time() + for_s if for_s else None
                ks = await run_in_threadpool(registry.engage, scope, reason, source, expires)
                return json_response({"killswitch": ks, "state": registry.state()})
            if action == "lift":
                target = None if data.get("all") else scope
                n = await run_in_threadpool(registry.lift, target, str(data.get("by") or "http"))
                return json_response({"lifted": n, "state": registry.state()})
        except ScopeError as exc:
            raise HTTPError(400, str(exc)) from None
        raise HTTPError(400, "action must be 'engage' or 'lift'")

    async def alertmanager(request: Request) -> Response:
        data = await json_body(request, settings.max_body_bytes)
        alerts = data.get("alerts")
        if not isinstance(alerts, list):
            raise HTTPError(400, "not an Alertmanager webhook payload: 'alerts' is missing")
        engaged = lifted = 0
        for alert in alerts:
            if not isinstance(alert, dict):
                continue
            labels = alert.get("labels") or {}
            annotations = alert.get("annotations") or {}
            name = labels.get("alertname", "alert")
            source = f"alertmanager:{alert.get('fingerprint') or name}"
            if alert.get("status", data.get("status")) == "resolved":
                lifted += await run_in_threadpool(registry.lift_by_source, source, None)
                continue
            scope = {
                k: labels[f"costwatch_scope_{k}"] for k in SCOPE_KEYS if labels.get(f"costwatch_scope_{k}")
            }
            reason = annotations.get("summary") or annotations.get("description") or f"alert {name} firing"
            try:
                await run_in_threadpool(registry.engage, scope, str(reason), source, None)
            except ScopeError as exc:
                raise HTTPError(400, str(exc)) from None
            engaged += 1
        return json_response({"engaged": engaged, "lifted": lifted, "state": registry.state()})

    async def sql(request: Request) -> Response:
        data = await json_body(request)
        query = data.get("sql")
        if not isinstance(query, str) or not query.strip():
            raise HTTPError(400, 'send {"sql": "SELECT …"}')
        fmt = data.get("format", "json")
        if fmt not in ("json", "csv"):
            raise HTTPError(400, "format must be json or csv")
        try:
            if wants_fleet(request, data):
                fleet = fleet_service()
                result = await run_in_threadpool(
                    lambda: fleet.query(
                        query, timeout_s=settings.sql_timeout_s, max_rows=settings.sql_max_rows
                    )
                )
            else:
                result = await run_in_threadpool(
                    run_query,
                    store.con,
                    query,
                    timeout_s=settings.sql_timeout_s,
                    max_rows=settings.sql_max_rows,
                )
        except QueryError as exc:
            raise HTTPError(400, str(exc)) from None
        if fmt == "csv":
            headers = {"x-costwatch-truncated": "true"} if result.truncated else None
            return Response(to_csv(result.columns, result.rows), media_type="text/csv", headers=headers)
        return json_response(result.as_dict())

    async def status(request: Request) -> Response:
        summary = await run_in_threadpool(store.read, lambda cur: queries.summary(cur, settings.timezone))
        summary.update(
            killswitch=registry.state(),
            db_path=str(store.path),
            uptime_s=round(time.time() - core.started_at, 3),
            health=store.health(),
        )
        if fleet is not None:
            summary["fleet"] = fleet.status()
        return json_response(summary)

    async def reprice(request: Request) -> Response:
        data = await json_body(request)
        since = data.get("since")
        if since is not None and not isinstance(since, int | float):
            raise HTTPError(400, "since must be a Unix timestamp in seconds (or null for everything)")
        result = await run_in_threadpool(
            store.call, lambda cur: queries.reprice(cur, core.pricer, since), None
        )
        return json_response(result)

    async def export(request: Request) -> Response:
        data = await json_body(request)
        directory = data.get("dir")
        since = data.get("since")
        if not isinstance(directory, str) or not directory:
            raise HTTPError(400, 'send {"dir": "/path/to/export"}')
        if since is not None and not isinstance(since, int | float):
            raise HTTPError(400, "since must be a Unix timestamp in seconds (or null for everything)")
        try:
            result = await run_in_threadpool(
                store.read, lambda cur: queries.export_parquet(cur, Path(directory), since)
            )
        except OSError as exc:
            raise HTTPError(400, f"cannot write {directory}: {exc.strerror or exc}") from None
        return json_response(result)

    async def metrics_endpoint(request: Request) -> Response:
        return Response(await run_in_threadpool(metrics.render), media_type=CONTENT_TYPE)

    async def healthz(request: Request) -> Response:
        reasons = store.health()
        if reasons:
            return json_response({"status": "degraded", "reasons": reasons}, 503)
        return json_response({"status": "ok", "reasons": []})

    async def index(request: Request) -> Response:
        return PlainTextResponse("costwatch daemon: see /healthz, /metrics and docs/api.md\n")

    def rule_service() -> RuleService:
        if rules is None:
            raise HTTPError(404, "no rules engine runs in this daemon")
        return rules

    async def rules_get(request: Request) -> Response:
        service = rule_service()
        stats = await run_in_threadpool(service.stats)
        forecasts = await run_in_threadpool(service.forecasts)
        return json_response({"rules_dir": str(service.rules_dir or ""), **stats, "forecasts": forecasts})

    async def rules_reload(request: Request) -> Response:
        """Validate and swap the rules; on error the old rules keep running (and the reply says why)."""
        service = rule_service()
        errors = await run_in_threadpool(service.reload)
        return json_response({"reloaded": not errors, "errors": errors, "rules": len(service.ruleset.rules)})

    async def rules_backtest(request: Request) -> Response:
        from datetime import datetime, timedelta, timezone

        from costwatch.daemon.rules import RuleError, load_rules
        from costwatch.daemon.rules.backtest import backtest

        data = await json_body(request)
        try:
            since = datetime.fromtimestamp(float(data["since"]), timezone.utc)
            until = datetime.fromtimestamp(float(data.get("until") or time.time()), timezone.utc)
            step = timedelta(seconds=float(data.get("step_s") or 900))
        except (KeyError, TypeError, ValueError, OverflowError):
            raise HTTPError(
                400, "send {since: unix seconds, until?: unix seconds, step_s?: seconds}"
            ) from None
        directory = data.get("dir") or rule_service().rules_dir
        if not directory:
            raise HTTPError(400, "no rules directory: send {dir: ...}")
        try:
            ruleset = load_rules(Path(directory))
            report = await run_in_threadpool(
                backtest, ruleset, store.con.cursor, since, until, step, settings.timezone
            )
        except RuleError as exc:
            raise HTTPError(400, "; ".join(exc.errors)) from None
        except ValueError as exc:
            raise HTTPError(400, str(exc)) from None
        return json_response({"report": report.format(), "summary": report.to_dict()})

    routes = [
        Route("/", index),
        Route("/healthz", healthz),
        Route("/metrics", metrics_endpoint),
        Route("/v1/events", endpoint(ingest, auth=True), methods=["POST"]),
        Route("/v1/killswitch", endpoint(killswitch_get, auth=False), methods=["GET"]),
        Route("/v1/killswitch", endpoint(killswitch_post, auth=True), methods=["POST"]),
        Route("/v1/killswitch/alertmanager", endpoint(alertmanager, auth=True), methods=["POST"]),
        Route("/v1/sql", endpoint(sql, auth=True), methods=["POST"]),
        Route("/v1/status", endpoint(status, auth=True), methods=["GET"]),
        Route("/v1/admin/reprice", endpoint(reprice, auth=True), methods=["POST"]),
        Route("/v1/admin/export", endpoint(export, auth=True), methods=["POST"]),
        Route("/v1/rules", endpoint(rules_get, auth=True), methods=["GET"]),
        Route("/v1/rules/reload", endpoint(rules_reload, auth=True), methods=["POST"]),
        Route("/v1/rules/backtest", endpoint(rules_backtest, auth=True), methods=["POST"]),
    ]
    # Every route, extra ones included, sits behind the Host check (DNS rebinding: hosts.py).
    # The host in the daemon's own ``url`` (where clients are told to find it) is a configured name too.
    url_host = [urlsplit(settings.url).hostname or ""] if settings.url else []
    host_check = Middleware(
        HostCheck, bind_host=settings.host, allowed_hosts=[*settings.allowed_hosts, *url_host]
    )
    return Starlette(routes=[*extra_routes, *routes], lifespan=lifespan, middleware=[host_check])
