"""The spend page at ``/``: static HTML/JS/CSS, the SQL it runs, and one small budgets endpoint.

The page reads only through the daemon's API (``POST /v1/sql``, ``GET /v1/status``,
``GET /v1/killswitch``, ``GET /v1/budgets`` below) and writes only through
``POST /v1/killswitch``. Every number it shows comes from one of `QUERIES`,
which it fetches from ``/spend-page/queries.json``: the same text a user can
paste into ``costwatch sql`` (after `render` fills in the placeholders).

The token reaches the page in the URL fragment (``/#token=…``, printed by the
daemon at start, see `page_url`); fragments are never sent to a server, and
the page moves it into localStorage and strips it from the address bar.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from costwatch.daemon.auth import authorized
from costwatch.daemon.schema import UNPRICED_SQL
from costwatch.daemon.sql import encode

__all__ = ["QUERIES", "RANGES", "STATIC_DIR", "page_url", "render", "web_routes"]

STATIC_DIR = Path(__file__).resolve().parent / "static"

# Range key -> (interval of the window, chart bucket, label).
RANGES: dict[str, tuple[str, str, str]] = {
    "1h": ("1 hour", "1 minute", "Last hour"),
    "24h": ("24 hours", "1 hour", "Last 24 hours"),
    "7d": ("7 days", "6 hours", "Last 7 days"),
    "30d": ("30 days", "1 day", "Last 30 days"),
    "90d": ("90 days", "1 day", "Last 90 days"),
}
DEFAULT_RANGE = "24h"

# Placeholders: {tz} the daemon's time zone, {range} and {bucket} from RANGES.
# "Today" and "this month" are calendar periods in {tz}, like `costwatch status`.
_IN_RANGE = "ts_start >= now() - INTERVAL '{range}'"
# Unpriced calls (schema.UNPRICED_SQL) have a NULL cost, never a guessed $0: shown as "unpriced".
# Its columns are unqualified; in the kpis' join they can only be usage_events' (`b` has none).
# Calls with usage_source 'estimated' (streams that ended without usage) are priced and in every
# sum; the kpis count them and their spend apart, so the page says how much rests on estimates.
QUERIES: dict[str, str] = {
    "kpis": f"""
WITH b AS (
  SELECT timezone('{{tz}}', date_trunc('day', timezone('{{tz}}', now()))) AS day_start,
         timezone('{{tz}}', date_trunc('month', timezone('{{tz}}', now()))) AS month_start,
         timezone('{{tz}}', date_trunc('month', timezone('{{tz}}', now())) + INTERVAL '1 month') AS month_end
)
SELECT
  coalesce(sum(e.cost_usd) FILTER (WHERE e.ts_start >= b.day_start), 0) AS spend_today_usd,
  coalesce(sum(e.cost_usd) FILTER (WHERE e.ts_start >= b.month_start), 0) AS spend_month_usd,
  coalesce(sum(e.cost_usd) FILTER (WHERE e.ts_start >= b.month_start), 0)
    * (epoch(b.month_end) - epoch(b.month_start))
    / greatest(epoch(now()) - epoch(b.month_start), 3600) AS projected_month_usd,
  coalesce(sum(e.cost_usd) FILTER (WHERE e.{_IN_RANGE}), 0) AS spend_range_usd,
  count(e.id) FILTER (WHERE e.{_IN_RANGE}) AS requests,
  count(e.id) FILTER (WHERE e.{_IN_RANGE} AND e.error_class IS NOT NULL) AS errors,
  count(e.id) FILTER (WHERE e.{_IN_RANGE} AND {UNPRICED_SQL}) AS unpriced,
  count(e.id) FILTER (WHERE e.{_IN_RANGE} AND e.usage_source = 'estimated') AS estimated,
  coalesce(sum(e.cost_usd) FILTER (WHERE e.{_IN_RANGE} AND e.usage_source = 'estimated'), 0)
    AS estimated_usd
FROM b LEFT JOIN usage_events e ON e.ts_start >= least(b.month_start, now() - INTERVAL '{{range}}')
GROUP BY b.day_start, b.month_start, b.month_end""",
    "cost_by_model_over_time": f"""
SELECT epoch(time_bucket(INTERVAL '{{bucket}}', ts_start, '{{tz}}')) AS t,
       coalesce(model, '(unknown)') AS series, sum(cost_usd) AS cost_usd
FROM usage_events WHERE {_IN_RANGE} AND cost_usd IS NOT NULL
GROUP BY 1, 2 ORDER BY 1, 2""",
    "cost_by_app_over_time": f"""
SELECT epoch(time_bucket(INTERVAL '{{bucket}}', ts_start, '{{tz}}')) AS t,
       app AS series, sum(cost_usd) AS cost_usd
FROM usage_events WHERE {_IN_RANGE} AND cost_usd IS NOT NULL
GROUP BY 1, 2 ORDER BY 1, 2""",
    "spend_by_model": f"""
SELECT provider, coalesce(model, '(unknown)') AS model, count(*) AS requests,
       coalesce(sum(input_tokens), 0) AS input_tokens, coalesce(sum(output_tokens), 0) AS output_tokens,
       sum(cost_usd) AS cost_usd, count(*) FILTER (WHERE {UNPRICED_SQL}) AS unpriced
FROM usage_events WHERE {_IN_RANGE}
GROUP BY 1, 2 ORDER BY cost_usd DESC NULLS LAST, 1, 2""",
    "top_users": f"""
SELECT coalesce("user", '(none)') AS "user", count(*) AS requests, sum(cost_usd) AS cost_usd
FROM usage_events WHERE {_IN_RANGE}
GROUP BY 1 ORDER BY cost_usd DESC NULLS LAST, 1 LIMIT 10""",
    "errors_by_class": f"""
SELECT coalesce(error_class, 'ok') AS error_class, count(*) AS requests,
       count(*) / sum(count(*)) OVER () AS share
FROM usage_events WHERE {_IN_RANGE}
GROUP BY 1 ORDER BY requests DESC, 1""",
    "latency_by_model": f"""
SELECT coalesce(model, '(unknown)') AS model, count(*) AS requests,
       quantile_cont(latency_ms, 0.5) AS p50_ms, quantile_cont(latency_ms, 0.95) AS p95_ms,
       quantile_cont(latency_ms, 0.99) AS p99_ms,
       quantile_cont(ttft_ms, 0.5) AS ttft_p50_ms, quantile_cont(ttft_ms, 0.95) AS ttft_p95_ms
FROM usage_events WHERE {_IN_RANGE} AND error_class IS NULL
GROUP BY 1 ORDER BY 1""",
    "ratelimit_headroom": f"""
SELECT provider, coalesce(model, '(unknown)') AS model,
       arg_max(ratelimit_remaining_requests, ts_start)
         FILTER (WHERE ratelimit_remaining_requests IS NOT NULL) AS remaining_requests,
       arg_max(ratelimit_limit_requests, ts_start)
         FILTER (WHERE ratelimit_limit_requests IS NOT NULL) AS limit_requests,
       arg_max(ratelimit_remaining_tokens, ts_start)
         FILTER (WHERE ratelimit_remaining_tokens IS NOT NULL) AS remaining_tokens,
       arg_max(ratelimit_limit_tokens, ts_start)
         FILTER (WHERE ratelimit_limit_tokens IS NOT NULL) AS limit_tokens,
       epoch(max(ts_start)) AS seen_at
FROM usage_events
WHERE {_IN_RANGE}
  AND (ratelimit_remaining_requests IS NOT NULL OR ratelimit_remaining_tokens IS NOT NULL)
GROUP BY 1, 2 ORDER BY 1, 2""",
}
QUERIES = {name: sql.strip() for name, sql in QUERIES.items()}

_TZ_RE = re.compile(r"^[A-Za-z0-9_+\-/]{1,64}$")


def render(name: str, range_key: str = DEFAULT_RANGE, tz: str = "UTC") -> str:
    """The exact SQL the page sends for ``name`` (the page's ``render()`` in app.js does the same)."""
    if range_key not in RANGES:
        raise ValueError(f"unknown range {range_key!r}: use one of {', '.join(RANGES)}")
    if not _TZ_RE.match(tz):
        raise ValueError(f"invalid time zone name {tz!r}")
    interval, bucket, _ = RANGES[range_key]
    return QUERIES[name].replace("{tz}", tz).replace("{range}", interval).replace("{bucket}", bucket)


def page_url(host: str, port: int, token: str | None) -> str:
    """What the daemon prints at start: ``http://127.0.0.1:7707/#token=…`` (the fragment stays local)."""
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/" + (f"#token={quote(token, safe='')}" if token else "")


# The page loads nothing from elsewhere; uPlot sets element styles from script, hence 'unsafe-inline'
# for styles only.
_PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:;"
        " connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


class _StaticFiles(StaticFiles):
    """Static files revalidated on every load (ETag), so an upgraded daemon never serves stale JS."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers.update(_PAGE_HEADERS)
        return response


def _json(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(encode(obj), status_code=status, media_type="application/json", headers=headers)


Forecasts = Callable[[], list[dict[str, Any]]]


def web_routes(token: str, forecasts: Forecasts | None = None) -> list[BaseRoute]:
    """Routes for the daemon's app: ``/``, ``/spend-page/…`` and ``GET /v1/budgets``.

    ``forecasts`` is the rules engine's (`RuleService.forecasts`); without one, ``/v1/budgets``
    says no rules are loaded.
    """
    expected = token.encode()

    async def index(request: Request) -> Response:
        return FileResponse(STATIC_DIR / "index.html", headers=_PAGE_HEADERS)

    async def queries(request: Request) -> Response:
        ranges = {k: {"interval": i, "bucket": b, "label": label} for k, (i, b, label) in RANGES.items()}
        return _json({"queries": QUERIES, "ranges": ranges, "default_range": DEFAULT_RANGE})

    async def budgets(request: Request) -> Response:
        if not authorized(request, expected):
            return _json({"error": "missing or invalid bearer token"}, 401, {"WWW-Authenticate": "Bearer"})
        if forecasts is None:
            return _json({"rules_loaded": False, "budgets": []})
        try:
            items = await run_in_threadpool(forecasts)
        except Exception as exc:
            line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            return _json({"error": f"budget forecasts failed: {line}"}, 500)
        return _json({"rules_loaded": True, "budgets": items})

    return [
        Route("/", index, methods=["GET", "HEAD"]),
        Route("/spend-page/queries.json", queries, methods=["GET"]),
        Route("/v1/budgets", budgets, methods=["GET"]),
        Mount("/spend-page", app=_StaticFiles(directory=STATIC_DIR), name="spend-page"),
    ]


def main(argv: list[str] | None = None) -> int:
    """``python -m costwatch.daemon.web NAME [RANGE] [TZ]`` prints a page query, ready for `costwatch sql`."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] not in QUERIES:
        print(f"usage: python -m costwatch.daemon.web {{{','.join(QUERIES)}}} [RANGE] [TZ]", file=sys.stderr)
        return 2
    try:
        print(render(args[0], *args[1:3]))
    except ValueError as exc:
        print(f"costwatch: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
