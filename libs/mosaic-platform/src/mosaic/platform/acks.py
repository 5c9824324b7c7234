"""JetStream's answers to the bus's publishes, collected on one subscription (see `Acks`)."""

from __future__ import annotations

import asyncio
import json

import nats
import nats.js.errors
from nats.aio.msg import Msg


class _Answers:
    """The answers to one batch of publishes, in publish order, and the future of all of them."""

    def __init__(self, count: int) -> None:
        self.answers: list[bytes | None] = [None] * count
        self.missing = count
        self.future: asyncio.Future[list[bytes]] = asyncio.get_running_loop().create_future()

    def answer(self, index: int, data: bytes) -> None:
        if self.answers[index] is None:
            self.missing -= 1
        self.answers[index] = data
        if not self.missing:
            self.future.set_result([answer for answer in self.answers if answer is not None])  # all are in


class Acks:
    """JetStream's answers to publishes that name a reply subject of ours: one subscription
    (`<inbox>.*.*`) for all of them, one future per batch, each publish replied to at
    `<inbox>.<batch>.<index>`. It does by hand what the client's `publish_async` does, without a
    random token, a semaphore, a future per message and a JSON parse of every ack."""

    def __init__(self, nc: nats.NATS) -> None:
        self._nc = nc
        self._prefix = ""
        self._next = 0
        self._pending: dict[str, _Answers] = {}
        self._subscribed = False

    async def expect(self, count: int) -> tuple[str, str, asyncio.Future[list[bytes]]]:
        """A new batch of `count` publishes: (token, reply subject prefix to which publish i
        appends `format(i, "x")`, future of the answers in order)."""
        if not self._subscribed:
            self._prefix = self._nc.new_inbox() + "."
            await self._nc.subscribe(self._prefix + "*.*", cb=self._answer)
            self._subscribed = True
        self._next += 1
        token = format(self._next, "x")
        batch = self._pending[token] = _Answers(count)
        return token, f"{self._prefix}{token}.", batch.future

    def forget(self, token: str) -> None:
        self._pending.pop(token, None)

    async def _answer(self, msg: Msg) -> None:
        token, _, index = msg.subject[len(self._prefix) :].partition(".")
        batch = self._pending.get(token)
        if batch is None or batch.future.done():
            return
        if msg.headers and msg.headers.get("Status") == "503":
            batch.future.set_exception(nats.js.errors.NoStreamResponseError())  # no stream (yet) behind the subject
        else:
            batch.answer(int(index, 16), msg.data)


def checked(answer: bytes) -> bytes:
    """A JetStream publish answer, unless it carries an error: that is raised instead."""
    if b'"error"' in answer:
        raise nats.js.errors.APIError.from_error(json.loads(answer)["error"])
    return answer


def duplicate(answer: bytes) -> bool:
    """Whether a checked publish answer says duplicate. Parsed only when the key is there
    (rarely): a plain answer is {"stream":"S", "seq":1}."""
    return b'"duplicate"' in answer and bool(json.loads(answer).get("duplicate"))


def sequence(answer: bytes) -> int:
    """The stream sequence a checked publish answer gives: a duplicate's is its original's."""
    return int(json.loads(answer)["seq"])
