"""The SSRF guard, destination rules and the template sandbox."""

import pytest

from delivery_service import destinations, templates
from delivery_service.ssrf import AddressPolicy, Forbidden
from mosaic.delivery.v1 import delivery_pb2
from mosaic.platform.errors import FailedPrecondition, InvalidArgument


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "::1",
        "10.1.2.3",
        "172.16.0.9",
        "192.168.1.1",
        "169.254.169.254",
        "fe80::1",
        "fd00:ec2::254",
        "::ffff:127.0.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "100.64.0.1",
    ],
)
def test_internal_addresses_are_refused_by_default(address):
    assert AddressPolicy().refusal(address) is not None


def test_public_addresses_pass_and_allowing_loopback_allows_only_loopback():
    assert AddressPolicy().refusal("93.184.216.34") is None
    loopback = AddressPolicy(["loopback"])
    assert loopback.refusal("127.0.0.1") is None and loopback.refusal("::1") is None
    assert loopback.refusal("10.0.0.1") is not None and loopback.refusal("169.254.169.254") is not None


async def test_a_host_name_is_checked_by_what_it_resolves_to():
    with pytest.raises(Forbidden, match="loopback"):
        await AddressPolicy().check_host("localhost", 80)
    assert await AddressPolicy(["loopback"]).check_host("localhost", 80)


def hook(**fields) -> delivery_pb2.Destination:
    return delivery_pb2.Destination(
        **{
            "destination_id": "crm",
            "webhook_url": "http://127.0.0.1:9/h",
            "segment_id": "vip",
            "purpose": "marketing",
            **fields,
        }
    )


@pytest.mark.parametrize(
    "fields, field",
    [
        ({"webhook_url": "http://10.0.0.7/hook"}, "destination.webhook_url"),
        ({"webhook_url": "http://169.254.169.254/latest/meta-data"}, "destination.webhook_url"),
        ({"webhook_url": "ftp://example.com/"}, "destination.webhook_url"),
        ({"destination_id": "Not Valid"}, "destination.destination_id"),
        ({"purpose": ""}, "destination.purpose"),
        (
            {"triggers": [delivery_pb2.Trigger(kind=delivery_pb2.TRIGGER_KIND_EVENT)]},
            "destination.triggers[0].event_name",
        ),
        (
            {
                "segment_id": "",
                "triggers": [
                    delivery_pb2.Trigger(
                        kind=delivery_pb2.TRIGGER_KIND_SEGMENT_ENTERED,
                        segment_id="vip",
                        quiet_hours=delivery_pb2.QuietHours(start="21:00", end="8am"),
                    )
                ],
            },
            "destination.triggers[0].quiet_hours.end",
        ),
        (
            {"audience": delivery_pb2.AudienceSettings(file_format=delivery_pb2.AUDIENCE_FILE_FORMAT_CSV)},
            "destination.audience.file_format",
        ),
        (
            {
                "kind": delivery_pb2.DESTINATION_KIND_AUDIENCE_SYNC,
                "audience": delivery_pb2.AudienceSettings(file_format=delivery_pb2.AUDIENCE_FILE_FORMAT_CSV),
            },
            "destination.webhook_url",
        ),
        ({"body_template": "{{ unclosed"}, "destination.body_template"),
        ({"headers": {"Idempotency-Key": "x"}}, "destination.headers['Idempotency-Key']"),
        ({"headers": {"X-Team": "a\r\nX-Injected: b"}}, "destination.headers['X-Team']"),
        ({"signing_secret": "not-a-secret!"}, "destination.signing_secret"),
        ({"limits": delivery_pb2.Limits(max_attempts=1000)}, "destination.limits.max_attempts"),
        ({"frequency_cap": delivery_pb2.FrequencyCap(max_deliveries=3)}, "destination.frequency_cap"),
        (
            {
                "kind": delivery_pb2.DESTINATION_KIND_EMAIL,
                "body_template": "hi",
                "email": delivery_pb2.EmailSettings(smtp_host="10.0.0.2", smtp_port=25, from_address="a@b.c"),
            },
            "destination.email.smtp_host",
        ),
        ({"kind": delivery_pb2.DESTINATION_KIND_SMS}, "destination.body_template"),
    ],
)
async def test_a_bad_destination_is_refused_naming_the_field(fields, field):
    with pytest.raises(InvalidArgument) as refused:
        await destinations.validate(hook(**fields), AddressPolicy(["loopback"]), audience_files=True)
    assert refused.value.field == field


async def test_a_destination_without_triggers_is_one_only_campaigns_send_to():
    await destinations.validate(hook(segment_id=""), AddressPolicy(["loopback"]))


async def test_an_audience_sync_to_files_needs_the_deployments_folder():
    d = hook(
        kind=delivery_pb2.DESTINATION_KIND_AUDIENCE_SYNC,
        webhook_url="",
        audience=delivery_pb2.AudienceSettings(file_format=delivery_pb2.AUDIENCE_FILE_FORMAT_JSONL),
    )
    await destinations.validate(d, AddressPolicy(), audience_files=True)  # no URL, so no address to check
    with pytest.raises(FailedPrecondition, match="MOSAIC_DELIVERY_AUDIENCE_DIR"):
        await destinations.validate(d, AddressPolicy(), audience_files=False)


async def test_a_valid_destination_gets_a_secret_that_answers_never_show():
    d = hook(headers={"Authorization": "Bearer s3cret"})
    await destinations.validate(d, AddressPolicy(["loopback"]))
    assert d.signing_secret.startswith("whsec_")
    shown = destinations.public(d)
    assert not shown.signing_secret and shown.headers["Authorization"] == destinations.REDACTED
    assert "s3cret" not in str(shown) and d.signing_secret not in str(shown)


async def test_loopback_is_refused_at_creation_unless_the_deployment_allows_it():
    with pytest.raises(InvalidArgument, match="loopback"):
        await destinations.validate(hook(), AddressPolicy())


def test_templates_render_traits_and_the_sandbox_refuses_internals():
    assert (
        templates.render("Hi {{ first_name }}, {{ traits.plan }}!", {"first_name": "Ada", "plan": "pro"})
        == "Hi Ada, pro!"
    )
    assert templates.render("Hi {{ missing }}.", {}) == "Hi ."
    with pytest.raises(templates.RenderError, match="SecurityError"):
        templates.render("{{ ''.__class__.__mro__[1].__subclasses__() }}", {})


def test_a_template_hashes_an_address_as_ad_platforms_take_it():
    hashed = templates.render("{{ email | trim | lower | sha256 }}", {"email": " Ada@Example.com "})
    assert hashed == "b5fc85e55755f9e0d030a10ab4429b6b2944855f9a0d60077fe832becbc41d72"  # sha256 of ada@example.com


def test_a_bad_setting_names_its_variable():
    from delivery_service.config import Settings
    from mosaic.platform.config import ConfigError

    base = {"MOSAIC_AUTH": "off", "MOSAIC_CONSENT_ADDRESS": "127.0.0.1:1"}
    with pytest.raises(ConfigError, match="MOSAIC_DELIVERY_ALLOW_ADDRESSES"):
        Settings.from_env(base | {"MOSAIC_DELIVERY_ALLOW_ADDRESSES": "loopback,everything"})
    with pytest.raises(ConfigError, match="MOSAIC_DELIVERY_ENGAGEMENT_SECRET"):
        Settings.from_env(base | {"MOSAIC_DELIVERY_ENGAGEMENT_SECRET": "plain"})
    with pytest.raises(ConfigError, match="MOSAIC_DELIVERY_DEFAULT_TIME_ZONE"):
        Settings.from_env(base | {"MOSAIC_DELIVERY_DEFAULT_TIME_ZONE": "Paris"})
    assert Settings.from_env(base | {"MOSAIC_DELIVERY_DEFAULT_TIME_ZONE": "Europe/Paris"}).default_zone.key == (
        "Europe/Paris"
    )
    settings = Settings.from_env(base | {"MOSAIC_DELIVERY_ALLOW_ADDRESSES": "loopback"})
    assert settings.policy.refusal("127.0.0.1") is None and not settings.feedback
