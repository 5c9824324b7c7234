"""deploy/local/zipkin.sh runs a real Zipkin on loopback: spans a service exports with
OTEL_TRACES_EXPORTER=zipkin come back from its traces API, and its UI page is served."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from mosaic.platform.telemetry import exporters_from

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "deploy/local/zipkin.sh"
ZIPKIN = "http://127.0.0.1:9411"

pytestmark = pytest.mark.servers


@pytest.fixture(scope="module")
def zipkin():
    started = subprocess.run([str(SCRIPT), "start"], capture_output=True, text=True, timeout=900)
    assert started.returncode == 0, started.stdout + started.stderr
    yield ZIPKIN
    subprocess.run([str(SCRIPT), "stop"], capture_output=True, timeout=60, check=True)


def _get(url: str) -> tuple[int, str, str]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, response.headers.get("Content-Type", ""), response.read().decode()


def test_a_span_exported_to_zipkin_is_found_through_its_api(zipkin, monkeypatch):
    monkeypatch.setenv("OTEL_EXPORTER_ZIPKIN_ENDPOINT", f"{zipkin}/api/v2/spans")
    service = f"zipkin-test-{uuid.uuid4().hex[:8]}"
    (exporter,) = exporters_from({"OTEL_TRACES_EXPORTER": "zipkin"})
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    with provider.get_tracer("test").start_as_current_span("demo event") as span:
        span.set_attribute("mosaic.event.message_id", "m-1")
        trace_id = format(span.get_span_context().trace_id, "032x")
    provider.shutdown()

    deadline = time.monotonic() + 30
    traces: list = []
    while time.monotonic() < deadline:
        # by a tag, as the demo report's Zipkin link searches for the customer's order
        _, _, body = _get(f"{zipkin}/api/v2/traces?serviceName={service}&annotationQuery=mosaic.event.message_id%3Dm-1")
        traces = json.loads(body)
        if traces:
            break
        time.sleep(0.5)
    assert [[span["traceId"] for span in trace] for trace in traces] == [[trace_id]]
    (found,) = traces[0]
    assert found["name"] == "demo event" and found["tags"]["mosaic.event.message_id"] == "m-1"


def test_the_ui_page_is_served(zipkin):
    status, content_type, body = _get(f"{zipkin}/zipkin/")
    assert status == 200 and content_type.startswith("text/html")
    assert "<html" in body.lower()


def test_it_listens_on_loopback_only(zipkin):
    listening = subprocess.run(["ss", "-Hltn", "sport = :9411"], capture_output=True, text=True, check=True).stdout
    addresses = {line.split()[3].rsplit(":", 1)[0] for line in listening.splitlines()}
    assert addresses and addresses <= {"127.0.0.1", "[::ffff:127.0.0.1]"}, listening
