"""The Grafana dashboards under deploy/observability/dashboards load, and every panel queries
only metrics the registry (mosaic.platform.metrics) defines, under the names the Prometheus
exporter gives them: each registered metric is exported once through the real exporter and
scraped, so the mapping (dots to _, the unit suffix, _total, _bucket) is the exporter's own."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import Observation
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import REGISTRY, generate_latest

from mosaic.platform.metrics import METRICS, PROCESS_METRICS

DASHBOARDS = sorted((Path(__file__).resolve().parents[2] / "deploy/observability/dashboards").glob("*.json"))
# Series Prometheus makes itself for every target.
SCRAPE_SERIES = {"up"}
PROMQL_WORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
    "and",
    "or",
    "unless",
    "le",
    "inf",
    "nan",
}


@pytest.fixture(scope="module")
def exported_names() -> set[str]:
    reader = PrometheusMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    meter = provider.get_meter("dashboards-test")
    for spec in METRICS.values():
        attributes = {name: "x" for name in spec.attributes}
        if spec.kind == "counter":
            meter.create_counter(spec.name, unit=spec.unit).add(1, attributes)
        elif spec.kind == "histogram":
            meter.create_histogram(spec.name, unit=spec.unit).record(0.1, attributes)
        elif spec.kind == "gauge":
            meter.create_observable_gauge(spec.name, [lambda _, a=attributes: [Observation(1, a)]], unit=spec.unit)  # type: ignore[misc]  # mypy cannot infer a lambda whose default binds the loop's value
        else:
            meter.create_observable_counter(spec.name, [lambda _, a=attributes: [Observation(1, a)]], unit=spec.unit)  # type: ignore[misc]  # mypy cannot infer a lambda whose default binds the loop's value
    text = generate_latest(REGISTRY).decode()
    provider.shutdown()
    names = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}
    return {name for name in names if name.startswith("mosaic_")} | set(PROCESS_METRICS) | SCRAPE_SERIES


def metric_names(expr: str) -> set[str]:
    """The series a PromQL expression reads: identifiers that are not functions, keywords,
    label names (in {...}, by (...), without (...)), strings or durations."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
        rest = expr[match.end() :].lstrip()
        if rest.startswith("(") or match.group().lower() in PROMQL_WORDS:
            continue  # a function or a keyword
        names.add(match.group())
    return names


def panels(dashboard: dict) -> list[dict]:
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))  # rows hold panels
    return found


def test_there_is_a_dashboard_for_the_pipeline_each_service_lag_and_deliveries():
    titles = {json.loads(path.read_text())["title"] for path in DASHBOARDS}
    assert titles >= {
        "Mosaic: pipeline overview",
        "Mosaic: per service",
        "Mosaic: consumer lag",
        "Mosaic: deliveries and dead letters",
    }


def test_the_query_parser_finds_the_series_and_skips_functions_and_labels():
    expr = 'histogram_quantile(0.95, sum by (le, rpc_method) (rate(mosaic_x_bucket{job="$service", a=~"b|c"}[5m]))) / on (job) up'
    assert metric_names(expr) == {"mosaic_x_bucket", "up"}


def test_an_unknown_metric_is_caught(exported_names):
    assert metric_names("rate(mosaic_ingest_event_total[5m])") - exported_names == {"mosaic_ingest_event_total"}


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_every_panel_queries_only_registered_metrics(path, exported_names):
    dashboard = json.loads(path.read_text())
    assert dashboard["uid"] and dashboard["panels"]
    for panel in panels(dashboard):
        if panel.get("type") == "row":
            continue
        assert panel.get("targets"), f"{path.name}: panel {panel['title']!r} queries nothing"
        for target in panel["targets"]:
            names = metric_names(target["expr"])
            assert names, f"{path.name}: {panel['title']!r} reads no series: {target['expr']}"
            unknown = names - exported_names
            assert not unknown, f"{path.name}: {panel['title']!r} queries {unknown}, which the registry does not define"


def test_dashboard_uids_are_unique():
    uids = [json.loads(path.read_text())["uid"] for path in DASHBOARDS]
    assert len(uids) == len(set(uids))
