"""The consent answers the workers keep: pure logic on a clock passed in, with a stand-in for
the ConsentService stub (the real service and its notices are in test_consent_at_send.py)."""

from __future__ import annotations

import asyncio

import grpc

from delivery_service.consent import MAX_CHECKS, Answers
from mosaic.consent.v1 import consent_pb2, consent_service_pb2
from mosaic.events.v1 import consent_changed_pb2
from mosaic.platform.errors import Unavailable


class Consent:
    """Answers CheckConsents from `granted`, as it was when asked; `gate`, when set, holds each
    answer until released; `asked` counts the calls, `checks` the questions of each."""

    def __init__(self) -> None:
        self.granted: dict[tuple[str, str], bool] = {}
        self.asked = 0
        self.checks: list[int] = []
        self.gate: asyncio.Event | None = None

    async def CheckConsents(self, request, timeout=None):  # noqa: N802 - the gRPC method name
        self.asked += 1
        self.checks.append(len(request.checks))
        answers = [
            consent_service_pb2.CheckConsentResponse(granted=self.granted.get((c.profile_id, c.purpose), False))
            for c in request.checks
        ]
        if self.gate is not None:
            await self.gate.wait()
        return consent_service_pb2.CheckConsentsResponse(answers=answers)


async def on_its_way(consent: Consent, calls: int) -> None:
    """Return once the consent service was called `calls` times (the questions wait a turn)."""
    while consent.asked < calls:
        await asyncio.sleep(0)


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
    await on_its_way(consent, 1)
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
    await on_its_way(consent, 1)
    answers.on_changed(consent_changed_pb2.ConsentChanged(person_id="p-1", profile_ids=["p-1"]))
    consent.granted[("p-1", "marketing")] = True  # the change the notice announced
    after = asyncio.create_task(answers.granted("p-1", "marketing"))
    await asyncio.sleep(0)
    consent.gate.set()
    assert await after  # asked anew, after the change
    assert not await before  # answered as it was when asked
    assert consent.asked == 2


async def test_a_question_that_fails_fails_for_every_job_waiting_on_it():
    class Down(Consent):
        async def CheckConsents(self, request, timeout=None):  # noqa: N802 - the gRPC method name
            self.asked += 1
            await asyncio.sleep(0)
            raise grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "down")

    consent = Down()
    answers = Answers(consent, max_age=30)
    results = await asyncio.gather(*(answers.granted("p-1", "marketing") for _ in range(2)), return_exceptions=True)
    assert [type(r) for r in results] == [Unavailable, Unavailable] and consent.asked == 1
    assert answers.cached("p-1", "marketing") is None


async def test_the_questions_of_one_batch_of_jobs_go_out_in_one_call_of_at_most_max_checks():
    consent = Consent()
    for n in range(0, MAX_CHECKS + 10, 2):
        consent.granted[(f"p-{n}", "marketing")] = True
    answers = Answers(consent, max_age=30)
    # Asked together, as the jobs of one fetched batch ask; p-0 twice (two destinations).
    people = ["p-0", *(f"p-{n}" for n in range(MAX_CHECKS + 10))]
    got = await asyncio.gather(*(answers.granted(p, "marketing") for p in people))
    assert got == [True, *(n % 2 == 0 for n in range(MAX_CHECKS + 10))]
    assert consent.checks == [MAX_CHECKS, 10]
    assert answers.cached("p-3", "marketing") is False and answers.cached("p-4", "marketing") is True
    assert await answers.granted("p-5", "analytics") is False  # a question asked alone later
    assert consent.checks == [MAX_CHECKS, 10, 1]
