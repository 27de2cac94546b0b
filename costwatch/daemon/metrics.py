"""Prometheus metrics fed from committed events, on a private registry.

Updated by the writer thread right after each commit, through cached label
children (~0.3 µs an update). Counters start at zero when the daemon starts,
as is the Prometheus norm (`rate()`/`increase()` handle resets); the stored
totals are always in SQL. No per-user label: users are unbounded cardinality.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from costwatch._version import __version__ as _version
from costwatch.daemon.schema import unpriced_mask
from costwatch.events import status_class
from costwatch.protocol import KillSwitchState

__all__ = ["CONTENT_TYPE", "DaemonMetrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)
COMMIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_TOKEN_TYPES = (
    ("input", "input_tokens"),
    ("output", "output_tokens"),
    ("cached_input", "cached_input_tokens"),
    ("cache_write", "cache_write_tokens"),
    ("reasoning", "reasoning_tokens"),
)
_RATELIMIT_FIELDS = (
    "ratelimit_remaining_requests",
    "ratelimit_remaining_tokens",
    "ratelimit_limit_requests",
    "ratelimit_limit_tokens",
)
_MLABELS = ("provider", "model", "app")
# Prebuilt Arrow scalars: a Python literal given to a compute function is converted on every call.
_LATENCY_BOUNDS = tuple(pa.scalar(b, pa.float64()) for b in LATENCY_BUCKETS)
_THOUSAND = pa.scalar(1000.0, pa.float64())
_HISTOGRAM_SUMS = tuple(
    f"{name}_{part}"
    for name in ("latency", "ttft")
    for part in ("s", *(f"le{n}" for n in range(len(LATENCY_BUCKETS))))
)
_ZERO = pa.scalar(0, pa.int64())
_EMPTY = pa.scalar("", pa.string())
_NULL_STR = pa.scalar(None, pa.string())
_UNKNOWN = pa.scalar("unknown", pa.string())
_ESTIMATED = pa.scalar("estimated", pa.string())
_REASON = re.compile(r"[a-z][a-z0-9_]{0,31}")


class _KillSwitchCollector(Collector):
    """`costwatch_killswitch_engaged{scope}` computed at scrape time from the registry."""

    def __init__(self, state: Callable[[], KillSwitchState]) -> None:
        self._state = state

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "costwatch_killswitch_engaged", "Engaged kill switches by scope (1 = engaged).", labels=["scope"]
        )

    def describe(self) -> Iterable[GaugeMetricFamily]:
        yield self._family()

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = self._family()
        scopes: dict[str, int] = {"global": 0}
        for ks in self._state().engaged:
            key = ",".join(f"{k}={v}" for k, v in sorted(ks.scope.items())) or "global"
            scopes[key] = 1
        for key, value in scopes.items():
            family.add_metric([key], value)
        yield family


class DaemonMetrics:
    """All daemon metrics; `observe_commit` is called by the store's writer thread only."""

    def __init__(self, killswitch_state: Callable[[], KillSwitchState] | None = None) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        # `model` is the model that served the call when the provider named one (often a dated
        # snapshot), else the requested one: a model's successes and failures land in different
        # series. `request_model` (what the app asked for, "unknown" when absent) keeps them in one,
        # for error rates per model. Only here: the histograms and the other counters stay on
        # (provider, model, app), since a request_model label multiplies every bucket series.
        self.requests = Counter(
            "costwatch_llm_requests",
            "LLM API attempts recorded.",
            [*_MLABELS, "request_model", "status_class", "error_class"],
            registry=r,
        )
        self.tokens = Counter("costwatch_llm_tokens", "Tokens by type.", [*_MLABELS, "type"], registry=r)
        self.cost = Counter("costwatch_llm_cost_usd", "Cost of priced calls in USD.", _MLABELS, registry=r)
        self.duration = Histogram(
            "costwatch_llm_request_duration_seconds",
            "LLM request duration.",
            _MLABELS,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "costwatch_llm_time_to_first_token_seconds",
            "Time to first token of streamed calls.",
            _MLABELS,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.rl_requests = Gauge(
            "costwatch_llm_ratelimit_remaining_requests",
            "Last seen remaining requests in the provider's rate-limit window.",
            _MLABELS,
            registry=r,
        )
        self.rl_tokens = Gauge(
            "costwatch_llm_ratelimit_remaining_tokens",
            "Last seen remaining tokens in the provider's rate-limit window.",
            _MLABELS,
            registry=r,
        )
        self.rl_limit_requests = Gauge(
            "costwatch_llm_ratelimit_limit_requests",
            "Last seen request limit of the provider's rate-limit window (headroom = remaining / limit).",
            _MLABELS,
            registry=r,
        )
        self.rl_limit_tokens = Gauge(
            "costwatch_llm_ratelimit_limit_tokens",
            "Last seen token limit of the provider's rate-limit window (headroom = remaining / limit).",
            _MLABELS,
            registry=r,
        )
        self.ingested = Counter("costwatch_ingest_events", "Events stored.", registry=r)
        self.duplicates = Counter("costwatch_ingest_duplicates", "Duplicate events ignored.", registry=r)
        self.rejected = Counter("costwatch_ingest_rejected", "Events refused by validation.", registry=r)
        self.batches = Counter("costwatch_ingest_batches", "Group commits that stored events.", registry=r)
        self.commit_seconds = Histogram(
            "costwatch_ingest_commit_seconds",
            "Time to dedupe, price, insert and commit one group.",
            buckets=COMMIT_BUCKETS,
            registry=r,
        )
        self.unpriced = Counter(
            "costwatch_unpriced_events",
            "Events with usage whose model has no known price (cost NULL).",
            ["provider", "model"],
            registry=r,
        )
        self.estimated = Counter(
            "costwatch_estimated_usage_events",
            "Events whose tokens are estimated (streams that ended without usage); their tokens and"
            " cost are in the token and cost counters.",
            ["provider", "model"],
            registry=r,
        )
        self.client_dropped = Counter(
            "costwatch_client_dropped_events",
            "Events instrumented apps report having dropped, by reason.",
            ["reason"],
            registry=r,
        )
        self.last_ingest = Gauge(
            "costwatch_last_ingest_timestamp_seconds", "Unix time of the last commit with events.", registry=r
        )
        self.up = Gauge("costwatch_up", "1 while the daemon serves.", registry=r)
        self.up.set(1)
        self.build = Gauge("costwatch_build_info", "Build information.", ["version"], registry=r)
        self.build.labels(_version).set(1)
        self._ratelimit_gauges = (
            self.rl_requests,
            self.rl_tokens,
            self.rl_limit_requests,
            self.rl_limit_tokens,
        )
        if killswitch_state is not None:
            r.register(_KillSwitchCollector(killswitch_state))
        self._children: dict[tuple[Any, ...], Any] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def observe_commit(self, table: pa.Table, seconds: float) -> None:
        """Count the rows just committed (writer thread): event and price columns of the batch.

        Aggregated per label set by one Arrow `group_by` (in row order, so "last seen" values
        are the batch's last non-null ones; histograms as counts at or below each bound), then
        one ``inc`` / ``set`` per set and one update per histogram bucket: no Python work per
        event, and a fixed cost per commit of one aggregation.
        """
        self.commit_seconds.observe(seconds)
        if not table.num_rows:
            return
        self.batches.inc()
        self.ingested.inc(table.num_rows)
        self.last_ingest.set(time.time())
        child = self._child
        model = _first_named(table, ("model", "response_model", "request_model"))
        unpriced = unpriced_mask(table)
        keys = pa.table(
            {
                "provider": table["provider"],
                "model": model,
                "app": table["app"],
                "request_model": _first_named(table, ("request_model",)),
                "http_status": table["http_status"],
                "error_class": table["error_class"],
                "unpriced": unpriced.cast(pa.int64()),
                "estimated": pc.equal(table["usage_source"], _ESTIMATED).cast(pa.int64()),
                "cost": table["cost_usd"],
                **{field: table[field] for _, field in _TOKEN_TYPES},
                **{field: table[field] for field in _RATELIMIT_FIELDS},
                **_histogram_columns("latency", table["latency_ms"]),
                **_histogram_columns("ttft", table["ttft_ms"]),
            }
        )
        groups = keys.group_by(list(keys.column_names[:6]), use_threads=False).aggregate(
            [
                ([], "count_all"),
                *[(field, "sum") for _, field in _TOKEN_TYPES],
                ("cost", "sum"),
                ("cost", "count"),
                ("unpriced", "sum"),
                ("estimated", "sum"),
                *[(field, "last") for field in _RATELIMIT_FIELDS],
                *[(name, "sum") for name in _HISTOGRAM_SUMS],
                ("latency_s", "count"),
                ("ttft_s", "count"),
            ]
        )
        histograms: dict[tuple[Any, ...], list[Any]] = {}
        for row in groups.to_pylist():
            provider, model_name, app = row["provider"], row["model"], row["app"]
            labels = (provider, model_name, app)
            status, error = status_class(row["http_status"]), row["error_class"] or "none"
            child(self.requests, *labels, row["request_model"], status, error).inc(row["count_all"])
            for type_name, field in _TOKEN_TYPES:
                if row[f"{field}_sum"]:
                    child(self.tokens, *labels, type_name).inc(row[f"{field}_sum"])
            if row["cost_count"]:
                child(self.cost, *labels).inc(row["cost_sum"])
            if row["unpriced_sum"]:
                child(self.unpriced, provider, model_name).inc(row["unpriced_sum"])
            if row["estimated_sum"]:
                child(self.estimated, provider, model_name).inc(row["estimated_sum"])
            for field, metric in zip(_RATELIMIT_FIELDS, self._ratelimit_gauges, strict=True):
                if row[f"{field}_last"] is not None:
                    child(metric, *labels).set(row[f"{field}_last"])
            for name in ("latency", "ttft"):
                if row[f"{name}_s_count"]:
                    total = histograms.setdefault((name, *labels), [0.0, 0, [0] * len(_LATENCY_BOUNDS)])
                    total[0] += row[f"{name}_s_sum"]
                    total[1] += row[f"{name}_s_count"]
                    for n in range(len(_LATENCY_BOUNDS)):
                        total[2][n] += row[f"{name}_le{n}_sum"] or 0
        for (name, *labels), (seconds, count, at_or_below) in histograms.items():
            # What `Histogram.observe` updates, once per bucket: a value counts in the first
            # bucket whose bound it does not exceed (+Inf last).
            histogram = child(self.duration if name == "latency" else self.ttft, *labels)
            histogram._sum.inc(seconds)
            previous = 0
            for index, cumulative in enumerate([*at_or_below, count]):
                if cumulative - previous:
                    histogram._buckets[index].inc(cumulative - previous)
                previous = cumulative

    def client_dropped_header(self, header: str) -> None:
        """Parse ``x-costwatch-dropped: reason=n,...`` from a client and count it."""
        for part in header.split(","):
            reason, _, count = part.strip().partition("=")
            try:
                n = int(count)
            except ValueError:
                continue
            if _REASON.fullmatch(reason) and 0 < n <= 10**12:  # bounded label values
                self.client_dropped.labels(reason).inc(n)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _histogram_columns(name: str, ms: pa.ChunkedArray) -> dict[str, Any]:
    """``{name}_s`` (seconds, null where ``ms`` is) and ``{name}_le{n}`` (1 where at or below bound n)."""
    seconds = pc.divide(ms, _THOUSAND)
    columns: dict[str, Any] = {f"{name}_s": seconds}
    for n, bound in enumerate(_LATENCY_BOUNDS):
        columns[f"{name}_le{n}"] = pc.less_equal(seconds, bound).cast(pa.int64())
    return columns


def _first_named(table: pa.Table, fields: tuple[str, ...]) -> pa.ChunkedArray:
    """Per row, the first of ``fields`` that is neither null nor empty, else ``"unknown"``.

    The label an event's model gets (``event.model or event.response_model or …``).
    """
    columns = [pc.if_else(pc.equal(table[f], _EMPTY), _NULL_STR, table[f]) for f in fields]
    return pc.coalesce(*columns, _UNKNOWN)
