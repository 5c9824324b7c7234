"""The trace sampler comes from the standard OTEL_TRACES_SAMPLER variables, parent-based by default."""

import pytest
from opentelemetry.sdk.trace import sampling

from mosaic.platform.config import ConfigError
from mosaic.platform.telemetry import sampler_from


def test_the_default_sampler_is_parent_based_always_on():
    sampler = sampler_from({})
    assert isinstance(sampler, sampling.ParentBased)
    assert "AlwaysOnSampler" in sampler.get_description()


def test_a_ratio_sampler_takes_its_ratio_from_the_argument():
    sampler = sampler_from({"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"})
    assert isinstance(sampler, sampling.ParentBased) and "TraceIdRatioBased{0.1}" in sampler.get_description()
    assert sampler_from({"OTEL_TRACES_SAMPLER": "always_off"}) is sampling.ALWAYS_OFF


@pytest.mark.parametrize(
    "environ, variable",
    [
        ({"OTEL_TRACES_SAMPLER": "sometimes"}, "OTEL_TRACES_SAMPLER"),
        ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "half"}, "OTEL_TRACES_SAMPLER_ARG"),
        ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "1.5"}, "OTEL_TRACES_SAMPLER_ARG"),
    ],
)
def test_a_bad_sampler_setting_is_refused_naming_the_variable(environ, variable):
    with pytest.raises(ConfigError) as refused:
        sampler_from(environ)
    assert refused.value.variable == variable
