"""The span exporters come from the standard OTEL_TRACES_EXPORTER, a comma-separated list."""

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.exporter.zipkin.json import ZipkinExporter
from opentelemetry.sdk.trace.export import ConsoleSpanExporter

from mosaic.platform.config import ConfigError
from mosaic.platform.telemetry import exporters_from


def test_otlp_is_the_default():
    (exporter,) = exporters_from({})
    assert isinstance(exporter, OTLPSpanExporter)


def test_a_list_builds_one_exporter_per_name():
    exporters = exporters_from({"OTEL_TRACES_EXPORTER": "otlp, zipkin"})
    assert [type(exporter) for exporter in exporters] == [OTLPSpanExporter, ZipkinExporter]
    (console,) = exporters_from({"OTEL_TRACES_EXPORTER": "console"})
    assert isinstance(console, ConsoleSpanExporter)


def test_none_builds_no_exporter():
    assert exporters_from({"OTEL_TRACES_EXPORTER": "none"}) == []


@pytest.mark.parametrize("value", ["bogus", "otlp,bogus", "", "none,zipkin"])
def test_an_unknown_exporter_is_refused_naming_the_variable(value):
    with pytest.raises(ConfigError, match="OTEL_TRACES_EXPORTER") as refused:
        exporters_from({"OTEL_TRACES_EXPORTER": value})
    assert repr(value) in str(refused.value)
