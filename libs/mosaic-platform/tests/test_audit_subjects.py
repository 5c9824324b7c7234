"""Whom an audit record names: a keyed hash, never the value a caller sent; and the key of a
deployment, made once and shared by every service through a real nats-server."""

from __future__ import annotations

import asyncio
import dataclasses
import re

from nats.js import api

from mosaic.consent.v1 import consent_pb2, consent_service_pb2, privacy_service_pb2
from mosaic.identity.v1 import identity_pb2, identity_service_pb2
from mosaic.platform import audit
from mosaic.platform.bus import Bus
from mosaic.profile.v1 import profile_service_pb2

SALT = "a-secret"


def test_a_profile_id_is_keyed_even_when_a_caller_put_an_email_address_in_it():
    subject = audit.subject_of(profile_service_pb2.GetProfileRequest(profile_id="ada@example.com"), SALT)
    assert re.fullmatch(r"profile:[0-9a-f]{32}", subject) and "ada" not in subject
    assert subject == audit.subject_of(profile_service_pb2.GetProfileRequest(profile_id="ada@example.com"), SALT)
    assert subject != audit.subject_of(profile_service_pb2.GetProfileRequest(profile_id="ada@example.com"), "other")


def test_a_person_named_one_field_down_or_by_identifiers_is_the_subject():
    decision = consent_pb2.ConsentDecision(profile_id="p-ada", purpose="marketing")
    set_consent = audit.subject_of(consent_service_pb2.SetConsentRequest(decision=decision), SALT)
    assert set_consent == audit.subject_of(profile_service_pb2.GetProfileRequest(profile_id="p-ada"), SALT)
    email = identity_pb2.Identifier(type="email", value="ada@example.com")
    erase = audit.subject_of(
        privacy_service_pb2.ErasePersonRequest(person=privacy_service_pb2.PersonSelector(identifier=email)), SALT
    )
    assert erase.startswith("email:") and "ada" not in erase
    resolve = audit.subject_of(identity_service_pb2.ResolveRequest(identifiers=[email, email]), SALT)
    assert resolve == f"{erase},{erase}"
    assert audit.subject_of(profile_service_pb2.ScanProfilesRequest(), SALT) == ""


def test_a_filter_in_clear_is_keyed_as_the_records_are():
    by_id = audit.subject_of(profile_service_pb2.GetProfileRequest(profile_id="p-ada"), SALT)
    assert audit.wanted_subject("p-ada", SALT) == by_id
    assert audit.wanted_subject(by_id, SALT) == by_id  # copied from a record
    email = identity_pb2.Identifier(type="email", value="ada@example.com")
    by_email = audit.subject_of(profile_service_pb2.GetProfileRequest(identifier=email), SALT)
    assert audit.wanted_subject("email:ada@example.com", SALT) == by_email


async def test_the_deployments_key_is_made_once_and_shared(nats_server):
    first = await Bus.connect(nats_server.url, "profile", 2)
    second = await Bus.connect(nats_server.url, "consent", 2)
    try:
        salt = await audit.deployment_salt(first)
        assert re.fullmatch(r"[0-9a-f]{64}", salt)
        assert await audit.deployment_salt(second) == salt == await audit.deployment_salt(first)
    finally:
        await first.close()
        await second.close()


async def test_a_bucket_not_yet_listening_is_written_again_until_it_is(nats_server):
    """The race of services starting together, made to last: the bucket's stream exists but
    does not take the bucket's subjects yet, so the first writes find no responders."""
    bus = await Bus.connect(nats_server.url, "profile", 2)
    try:
        js = bus.jetstream
        stream = api.StreamConfig(
            name=f"KV_{audit.SALT_BUCKET}",
            subjects=["not-yet.>"],
            max_msgs_per_subject=1,
            allow_direct=True,
            allow_rollup_hdrs=True,
            deny_delete=True,
        )
        await js.add_stream(stream)

        async def listen_later() -> None:
            await asyncio.sleep(1.0)
            await js.update_stream(dataclasses.replace(stream, subjects=[f"$KV.{audit.SALT_BUCKET}.>"]))

        later = asyncio.create_task(listen_later())
        salt = await audit.deployment_salt(bus, patience=10.0)
        await later
        assert re.fullmatch(r"[0-9a-f]{64}", salt)
        stored = await (await js.key_value(audit.SALT_BUCKET)).get("salt")
        assert stored.value == salt.encode()
    finally:
        await bus.close()
