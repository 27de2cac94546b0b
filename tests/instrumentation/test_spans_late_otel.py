"""costwatch imports no OpenTelemetry; an app that imports and configures it after
``import costwatch.autoinstrument`` still gets its GenAI spans, children of its own."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.fakes.provider import FakeProvider
from tests.support.processes import clean_env

APP = """
import json, sys
import costwatch.autoinstrument
assert not any(m.startswith("opentelemetry") for m in sys.modules), "costwatch imported OpenTelemetry"
import costwatch, openai
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)
client = openai.OpenAI(base_url=sys.argv[1] + "/v1", api_key="sk-test", max_retries=0)
with trace.get_tracer("app").start_as_current_span("handler") as parent:
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
costwatch.flush(5)
spans = {s.name: s for s in exporter.get_finished_spans()}
ours = spans["chat gpt-4o-mini"]
print(json.dumps({"names": sorted(spans), "child": ours.parent.span_id == parent.get_span_context().span_id}))
"""


def test_otel_configured_after_costwatch_gets_child_spans(tmp_path: Path) -> None:
    env = clean_env(
        COSTWATCH_URL="http://127.0.0.1:9",
        COSTWATCH_STATE_DIR=str(tmp_path),
        COSTWATCH_EXIT_FLUSH_TIMEOUT_S="0",
    )
    with FakeProvider() as fake:
        done = subprocess.run(
            [sys.executable, "-c", APP, fake.url], env=env, capture_output=True, text=True, timeout=60
        )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == {
        "names": ["chat gpt-4o-mini", "handler"],
        "child": True,
    }
