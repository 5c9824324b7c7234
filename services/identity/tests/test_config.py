"""The identity service's own settings: defaults, and a bad value named."""

import pytest

from identity_service.config import Settings
from mosaic.platform.config import ConfigError


def test_defaults_keep_the_lease_longer_than_the_store_timeout():
    settings = Settings.from_env({"MOSAIC_AUTH": "off"})
    assert (settings.rules_max_age, settings.lease_seconds, settings.phone_region) == (5.0, 15.0, "US")


@pytest.mark.parametrize(
    "variable, value",
    [
        ("MOSAIC_IDENTITY_PHONE_REGION", "Germany"),
        ("MOSAIC_IDENTITY_LOCK_LEASE", "0.1"),
        ("MOSAIC_IDENTITY_RULES_MAX_AGE", "soon"),
    ],
)
def test_a_bad_value_names_its_variable(variable, value):
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"MOSAIC_AUTH": "off", variable: value})
    assert caught.value.variable == variable
