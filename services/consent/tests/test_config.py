"""The consent settings: purposes and jurisdiction from the environment, bad values named."""

import pytest

from consent_service.config import Settings
from mosaic.platform.config import ConfigError


def test_the_default_purposes_are_opt_in_under_gdpr_and_advertising_is_a_sale():
    settings = Settings.from_env({"MOSAIC_AUTH": "off"})
    assert "marketing" in settings.purposes and settings.purposes["advertising"].sale_or_sharing
    assert not settings.purposes["marketing"].gdpr_default and settings.purposes["marketing"].ccpa_default


@pytest.mark.parametrize(
    "environ, rule",
    [
        ({"MOSAIC_CONSENT_PURPOSES": "Marketing"}, "purpose 'Marketing' must be"),
        ({"MOSAIC_CONSENT_PURPOSES": "ads:sold"}, "unknown flag 'sold'"),
        ({"MOSAIC_CONSENT_PURPOSES": "ads,ads"}, "listed twice"),
        ({"MOSAIC_CONSENT_JURISDICTION": "lgpd"}, "must be one of gdpr, ccpa"),
        ({"MOSAIC_CONSENT_CATEGORIES": "C0004"}, "must be Category=purpose"),
        ({"MOSAIC_CONSENT_CATEGORIES": "C0004=telepathy"}, "'telepathy' is not a configured purpose"),
    ],
)
def test_a_bad_setting_names_the_variable_and_the_rule(environ, rule):
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"MOSAIC_AUTH": "off", **environ})
    assert caught.value.variable == next(iter(environ)) and rule in caught.value.rule
