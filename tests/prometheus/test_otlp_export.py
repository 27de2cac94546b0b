"""OTLP span export as docs/fleet.md shows it: the app's OTel SDK, any collector.

A real instrumented process configures ``TracerProvider`` + the OTLP/HTTP exporter from
``OTEL_EXPORTER_OTLP_ENDPOINT``; a loopback HTTP server stands in for the OpenTelemetry
Collector and decodes what arrives at ``/v1/traces``. The GenAI spans must be children of
the app's span, and the daemon must have stored the same trace and span ids.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fakes.provider import FakeProvider
from tests.prometheus._stack import daemon, run_traffic, wait_for
from tests.support.processes import LoopbackServer

trace_service_pb2 = pytest.importorskip(
    "opentelemetry.proto.collector.trace.v1.trace_service_pb2",
    reason="needs opentelemetry-exporter-otlp-proto-http (pip install it)",
)
pytest.importorskip("opentelemetry.exporter.otlp.proto.http.trace_exporter")


class Collector:
    """A stand-in OpenTelemetry Collector: records the spans POSTed to /v1/traces."""

    def __init__(self) -> None:
        self.spans: list[Any] = []
        self.lock = threading.Lock()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                request = trace_service_pb2.ExportTraceServiceRequest()
                request.ParseFromString(body)
                with collector.lock:
                    for resource_spans in request.resource_spans:
                        for scope_spans in resource_spans.scope_spans:
                            collector.spans.extend(scope_spans.spans)
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.loopback = LoopbackServer(Handler)
        self.url = self.loopback.url

    def close(self) -> None:
        self.loopback.close()


@pytest.fixture
def collector() -> Iterator[Collector]:
    c = Collector()
    try:
        yield c
    finally:
        c.close()


def attributes(span: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in span.attributes:
        value = kv.value
        out[kv.key] = getattr(value, value.WhichOneof("value")) if value.WhichOneof("value") else None
    return out


def test_genai_spans_reach_an_otlp_collector(
    tmp_path: Path, fake_provider_server: FakeProvider, collector: Collector, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url)
    with daemon(tmp_path, config={}) as d:
        result = run_traffic(d, fake_provider_server.url, "otlp-app", mode="otlp")
        assert result.returncode == 0, result.stdout + result.stderr[-3000:]
        app = json.loads(result.stdout.strip().splitlines()[-1])

        genai = [s for s in collector.spans if "gen_ai.provider.name" in attributes(s)]
        assert len(genai) == 2, [s.name for s in collector.spans]
        for span in genai:
            attrs = attributes(span)
            assert attrs["gen_ai.provider.name"] == "openai"
            assert attrs["gen_ai.request.model"] in {"gpt-4o-mini", "gpt-4o"}
            assert attrs["gen_ai.usage.input_tokens"] > 0
            assert span.trace_id.hex() == app["trace_id"]
            assert span.parent_span_id.hex() == app["span_id"], "a child of the app's current span"
        streamed = next(s for s in genai if attributes(s)["gen_ai.request.model"] == "gpt-4o")
        assert attributes(streamed)["gen_ai.response.time_to_first_chunk"] > 0

        def stored() -> list[Any] | None:
            response = httpx.post(
                d.url + "/v1/sql",
                json={"sql": "SELECT trace_id, span_id FROM usage_events WHERE app = 'otlp-app'"},
                headers={"Authorization": f"Bearer {d.token}"},
                timeout=10,
            )
            rows: list[Any] = response.json()["rows"]
            return rows if len(rows) == 2 else None

        rows = wait_for("the daemon to store both events", stored, 10)
        assert {(r[0], r[1]) for r in rows} == {(s.trace_id.hex(), s.span_id.hex()) for s in genai}
