"""The ingestion settings: production-safe defaults, and bad values named at start."""

import pytest

from ingestion_service.config import Settings
from mosaic.platform.config import ConfigError, PlatformSettings

PLATFORM = PlatformSettings.from_env(
    "ingestion",
    {
        "MOSAIC_AUTH": "off",
    },
)


def test_only_created_sources_may_send_unless_open_sources_are_asked_for():
    assert (
        Settings.from_env(
            {
                "MOSAIC_AUTH": "off",
            },
            PLATFORM,
        ).open_sources
        is False
    )
    assert (
        Settings.from_env({"MOSAIC_AUTH": "off", "MOSAIC_INGEST_OPEN_SOURCES": "true"}, PLATFORM).open_sources is True
    )


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"MOSAIC_INGEST_OPEN_SOURCES": "yes"}, "MOSAIC_INGEST_OPEN_SOURCES: must be one of true, false, got 'yes'"),
        ({"MOSAIC_INGEST_RATE_LIMIT": "-5"}, "MOSAIC_INGEST_RATE_LIMIT: must be at least 0.0, got -5.0"),
        ({"MOSAIC_INGEST_RATE_BURST": "lots"}, "MOSAIC_INGEST_RATE_BURST: must be a whole number, got 'lots'"),
    ],
)
def test_a_bad_value_is_refused_naming_the_variable_and_the_rule(environ, message):
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(environ, PLATFORM)
    assert str(caught.value) == message
