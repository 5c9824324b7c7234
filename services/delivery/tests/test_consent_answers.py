"""The consent answers the workers keep: pure logic on a clock passed in, with a stand-in for
the ConsentService stub (the real service and its notices are in test_consent_at_send.py)."""

from __future__ import annotations

import asyncio

from delivery_service.consent import Answers
from mosaic.consent.v1 import consent_pb2, consent_service_pb2
from mosaic.events.v1 import consent_changed_pb2
from mosaic.platform.errors import Unavailable


class Consent:
    """Answers CheckConsent from `granted`; `gate`, when set, holds each answer until released."""

    def __init__(self) -> None:
        self.granted: dict[tuple[str, str], bool] = {}
        self.asked = 0
        self.gate: asyncio.Event | None = None

    async def CheckConsent(self, request, timeout=None):  # noqa: N802 - the gRPC method name
        self.asked += 1
        answer = self.granted.get((request.profile_id, request.purpose), False)
        if self.gate is not None:
            await self.gate.wait()
        return consent_service_pb2.CheckConsentResponse(granted=answer)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_an_answer_is_kept_per_person_and_purpose_until_it_ages_out():
    consent, clock = Consent(), Clock()
    consent.granted[("p-1", "marketing")] = True
    answers = Answers(consent, max_age=30, clock=clock)
    assert await answers.granted("p-1", "marketing") and await answers.granted("p-1", "marketing")
    assert not await answers.granted("p-1", "analytics")
    assert consent.asked == 2
    clock.now += 30
    consent.granted[("p-1", "marketing")] = False
    assert not await answers.granted("p-1", "marketing")
    assert consent.asked == 3


async def test_kept_for_no_time_asks_every_time():
    consent = Consent()
    answers = Answers(consent, max_age=0)
    for _ in range(3):
        await answers.granted("p-1", "marketing")
    assert consent.asked == 3


async def test_a_notice_drops_every_profile_it_names_and_no_other():
    consent = Consent()
    answers = Answers(consent, max_age=30)
    for person in ("old-id", "survivor", "decided", "other"):
        await answers.granted(person, "marketing")
    answers.on_changed(
        consent_changed_pb2.ConsentChanged(
            person_id="survivor",
            profile_ids=["old-id"],
            decision=consent_pb2.ConsentDecision(profile_id="decided", purpose="marketing"),
        )
    )
    assert [answers.cached(p, "marketing") for p in ("old-id", "survivor", "decided", "other")] == [
        None,
        None,
        None,
        False,
    ]


async def test_an_answer_asked_for_before_a_notice_is_not_kept():
    consent = Consent()
    consent.granted[("p-1", "marketing")] = True
    consent.gate = asyncio.Event()
    answers = Answers(consent, max_age=30)
    asking = asyncio.create_task(answers.granted("p-1", "marketing"))
    await asyncio.sleep(0)
    answers.on_changed(consent_changed_pb2.ConsentChanged(person_id="p-1", profile_ids=["p-1"]))
    consent.gate.set()
    assert await asking  # the caller gets what it asked for...
    assert answers.cached("p-1", "marketing") is None  # ...but it may predate the change: not kept


async def test_the_jobs_of_one_person_waiting_together_ask_once():
    consent = Consent()
    consent.granted[("p-1", "marketing")] = True
    consent.gate = asyncio.Event()
    answers = Answers(consent, max_age=30)
    asking = [asyncio.create_task(answers.granted("p-1", "marketing")) for _ in range(3)]
    await asyncio.sleep(0)
    consent.gate.set()
    assert await asyncio.gather(*asking) == [True, True, True]
    assert consent.asked == 1


async def test_a_question_on_its_way_before_a_notice_is_not_joined_after_it():
    consent = Consent()
    consent.gate = asyncio.Event()
    answers = Answers(consent, max_age=30)
    before = asyncio.create_task(answers.granted("p-1", "marketing"))
    await asyncio.sleep(0)
    answers.on_changed(consent_changed_pb2.ConsentChanged(person_id="p-1", profile_ids=["p-1"]))
    consent.granted[("p-1", "marketing")] = True  # the change the notice announced
    after = asyncio.create_task(answers.granted("p-1", "marketing"))
    await asyncio.sleep(0)
    consent.gate.set()
    assert consent.asked == 2
    assert await after  # asked anew, after the change
    assert not await before  # answered as it was when asked


async def test_a_question_that_fails_fails_for_every_job_waiting_on_it():
    class Down(Consent):
        async def CheckConsent(self, request, timeout=None):  # noqa: N802 - the gRPC method name
            self.asked += 1
            await asyncio.sleep(0)
            raise Unavailable("consent", "UNAVAILABLE: down")

    consent = Down()
    answers = Answers(consent, max_age=30)
    results = await asyncio.gather(*(answers.granted("p-1", "marketing") for _ in range(2)), return_exceptions=True)
    assert [type(r) for r in results] == [Unavailable, Unavailable] and consent.asked == 1
    assert answers.cached("p-1", "marketing") is None
