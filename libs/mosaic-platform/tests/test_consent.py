"""The shared consent policy: a person's state from the ledger, and defaults by jurisdiction."""

from google.protobuf import timestamp_pb2

from mosaic.consent.v1 import consent_pb2
from mosaic.platform.consent import Policy, person_consent

NOW_US = 1_800_000_000 * 1_000_000


def entry(purpose: str, seconds: int, **fields) -> consent_pb2.ConsentDecision:
    return consent_pb2.ConsentDecision(
        profile_id="p", purpose=purpose, decided_at=timestamp_pb2.Timestamp(seconds=seconds), **fields
    )


def test_a_persons_consent_is_the_latest_entry_per_purpose_and_the_last_jurisdiction_named():
    person = person_consent(
        [
            entry("marketing", 1, granted=True, jurisdiction=consent_pb2.JURISDICTION_CCPA),
            entry("analytics", 2, granted=True, proof=consent_pb2.ConsentProof(text="banner")),
            entry("marketing", 3, change=consent_pb2.CONSENT_CHANGE_WITHDRAW),
        ]
    )
    assert [(d.purpose, d.change) for d in person.decisions] == [
        ("analytics", consent_pb2.CONSENT_CHANGE_UNSPECIFIED),
        ("marketing", consent_pb2.CONSENT_CHANGE_WITHDRAW),
    ]
    assert person.jurisdiction == consent_pb2.JURISDICTION_CCPA  # a later entry naming none keeps it
    assert not person.decisions[0].HasField("proof")


def test_nothing_recorded_follows_the_deployments_law_and_a_persons_law_wins_when_named():
    gdpr = Policy.from_env({})
    ccpa = Policy.from_env({"MOSAIC_CONSENT_JURISDICTION": "ccpa"})
    assert not gdpr.granted("analytics", None, NOW_US).granted
    assert ccpa.granted("analytics", None, NOW_US).granted
    californian = consent_pb2.PersonConsent(jurisdiction=consent_pb2.JURISDICTION_CCPA)
    assert gdpr.granted("analytics", californian, NOW_US).reason == "opt-out default"
    assert not ccpa.granted("advertising", californian, NOW_US, gpc=True).granted  # a sale: GPC opts out


def test_a_grant_past_its_expiry_is_expired():
    granted = entry("marketing", 1, granted=True, expires_at=timestamp_pb2.Timestamp(seconds=2))
    person = person_consent([granted])
    state = Policy().granted("marketing", person, NOW_US)
    assert (state.granted, state.reason) == (False, "expired")
    assert Policy().granted("marketing", person, 1_500_000).granted


def test_categories_name_purposes_by_mapping_or_by_their_own_name():
    policy = Policy.from_env({"MOSAIC_CONSENT_CATEGORIES": "C0004=advertising"})
    assert policy.purpose_of("C0004") == "advertising"
    assert policy.purpose_of("Marketing Email") == "marketing_email"
    assert policy.purpose_of("C0001") is None
