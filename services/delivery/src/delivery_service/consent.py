"""The one question delivery asks ConsentService: is this purpose granted for this person now?

The workers ask it before every send through `Answers`, which keeps the answers it was given,
kept current by `consent.changed` as the consent service keeps its own replicas' caches
(consent_service/cache.py): every change (a decision, a merge, a split) is announced naming
each profile whose answers may have changed, every delivery replica hears it (a plain
subscription, `Bus.listen`) and drops those people. So an answer read here is as fresh as one
a consent replica that did not take the write would give: the change is seen once its notice
has arrived (milliseconds after the write; the notice goes out through consent's outbox). What
a replica misses while it is disconnected from NATS ages out after `max_age` seconds
(MOSAIC_DELIVERY_CONSENT_CACHE_SECONDS; 0 asks the consent service before every send).
The people a fetched batch of jobs holds no answer for are asked about in one CheckConsents
call (measured, bench/delivery.py: one CheckConsent a person cost ~230 µs of this process's CPU
and ~500 µs of the consent service's, more than everything else a webhook delivery does
together). The planner asks once per decision, with CheckConsent (`granted`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable

import grpc

from mosaic.consent.v1 import consent_service_pb2
from mosaic.events.v1 import consent_changed_pb2
from mosaic.platform.consent import named
from mosaic.platform.errors import Unavailable
from mosaic.platform.lru import Lru

# The most checks in one CheckConsents call (the consent service's bound).
MAX_CHECKS = 1000


async def granted(consent, profile_id: str, purpose: str) -> bool:
    """CheckConsent; Unavailable when the consent service does not answer (retried upstream)."""
    try:
        answer = await consent.CheckConsent(
            consent_service_pb2.CheckConsentRequest(profile_id=profile_id, purpose=purpose), timeout=5
        )
    except grpc.aio.AioRpcError as error:
        raise Unavailable("consent", f"{error.code().name}: {error.details()}") from error
    return answer.granted


class Answers:
    """Consent answers by person and purpose, dropped when `consent.changed` names the person.

    The questions with no answer kept are asked together: each waits for the next turn of the
    event loop, by when every job of the same fetched batch has asked its own, and they go
    out in one CheckConsents call (per MAX_CHECKS)."""

    def __init__(
        self, consent, max_age: float, size: int = 100_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.consent = consent  # a ConsentService stub
        self.max_age = max_age
        self.clock = clock
        self._people: Lru[str, dict[str, tuple[bool, float]]] = Lru(size)
        # Moves on at every drop: an answer asked for before a drop is not kept (it may be older).
        self._epoch = 0
        # The questions on their way, so that the jobs of one person waiting together (several
        # destinations or campaigns at once, a replay) ask once rather than once each.
        # Forgotten at every drop: a question asked before it is not joined after it.
        self._asking: dict[tuple[str, str], asyncio.Future[bool]] = {}
        self._next: list[tuple[tuple[str, str], asyncio.Future[bool]]] = []  # for the next call
        self._calls: set[asyncio.Task[None]] = set()
        self.hits = 0
        self.misses = 0
        self.calls = 0  # CheckConsents calls made

    def cached(self, profile_id: str, purpose: str) -> bool | None:
        """The answer kept for the person and purpose, if it is younger than max_age."""
        person = self._people.get(profile_id)
        kept = person.get(purpose) if person is not None else None
        if kept is None or self.clock() - kept[1] >= self.max_age:
            return None
        self.hits += 1
        return kept[0]

    async def granted(self, profile_id: str, purpose: str) -> bool:
        """The kept answer, or the consent service's (then kept); Unavailable when it does not answer."""
        answer = self.cached(profile_id, purpose)
        if answer is not None:
            return answer
        question = (profile_id, purpose)
        asking = self._asking.get(question)
        if asking is None:
            self.misses += 1
            loop = asyncio.get_running_loop()
            asking = self._asking[question] = loop.create_future()
            if not self._next:
                loop.call_soon(self._ask_next)
            self._next.append((question, asking))
        else:
            self.hits += 1
        return await asyncio.shield(asking)  # one waiter cancelled does not cancel the others

    def _ask_next(self) -> None:
        waiting, self._next = self._next, []
        for start in range(0, len(waiting), MAX_CHECKS):
            call = asyncio.create_task(self._ask(waiting[start : start + MAX_CHECKS]))
            self._calls.add(call)
            call.add_done_callback(self._calls.discard)

    async def _ask(self, waiting: list[tuple[tuple[str, str], asyncio.Future[bool]]]) -> None:
        epoch, asked_at = self._epoch, self.clock()
        checks = [consent_service_pb2.CheckConsentRequest(profile_id=p, purpose=purpose) for (p, purpose), _ in waiting]
        self.calls += 1
        try:
            answers = await self.consent.CheckConsents(
                consent_service_pb2.CheckConsentsRequest(checks=checks), timeout=5
            )
        except grpc.aio.AioRpcError as error:
            return self._fail(waiting, Unavailable("consent", f"{error.code().name}: {error.details()}"))
        except asyncio.CancelledError:
            self._fail(waiting, Unavailable("consent", "the question was cancelled"))
            raise
        granted = [a.granted for a in answers.answers]
        if len(granted) != len(waiting):
            return self._fail(waiting, Unavailable("consent", f"{len(granted)} answers to {len(waiting)} checks"))
        keep = self.max_age > 0 and epoch == self._epoch
        for ((profile_id, purpose), asking), answer in zip(waiting, granted, strict=True):
            asking.set_result(answer)
            self._forget((profile_id, purpose), asking)
            if keep:
                person = self._people.get(profile_id)
                if person is None:
                    person = {}
                    self._people.put(profile_id, person)
                person[purpose] = (answer, asked_at)

    def _fail(self, waiting: list[tuple[tuple[str, str], asyncio.Future[bool]]], error: Unavailable) -> None:
        for question, asking in waiting:
            asking.set_exception(error)
            asking.exception()  # retrieved here: there may be no one waiting any more
            self._forget(question, asking)

    def _forget(self, question: tuple[str, str], asking: asyncio.Future[bool]) -> None:
        if self._asking.get(question) is asking:
            del self._asking[question]

    def drop(self, profile_ids: Iterable[str]) -> None:
        self._epoch += 1
        self._asking.clear()
        for profile_id in profile_ids:
            self._people.pop(profile_id)

    def on_changed(self, change: consent_changed_pb2.ConsentChanged) -> None:
        """The handler of `consent.changed` notices."""
        self.drop(named(change))
