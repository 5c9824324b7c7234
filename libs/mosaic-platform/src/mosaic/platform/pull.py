"""Pull requests to one durable JetStream consumer, each answered on an inbox subject of its own.

Not nats-py's `PullSubscription.fetch`: it spends a task, a `wait_for` and a uuid on every
message it hands over (measured: 42 µs a delivery job with its ack, against 21 here; about a
seventh of segmentation's time in the pipeline), hands nothing over before its wait is done,
and once nothing was waiting it keeps a fetch open until the whole batch has come or the
request expired: up to a second for the first events after a lull.

Here a request's messages are handed over as they come, and its end is known: JetStream ends a
request with a status (404 "No Messages" to a no_wait request, 408 when it expired, 409 when it
refuses it) unless all it asked for came, and sends that status to the request's reply
subject, so a late status of an earlier request never ends a later one. One request is open at
a time and `request` returns once it is over, so nothing more is on its way: what a stopping
consumer gives back is all it was given. A message that still comes after this side gave a
request up (its end lost with a connection) goes to `late`.

A fetch is one request, no_wait with an expiry: JetStream answers it with what is waiting, or
else with the first messages to come, and ends it then or at the expiry. Not a no_wait request
alone followed by a wait: nats-server 2.9 queues a no_wait request when its count of the
consumer's pending messages is off by one, and never ends it (no expiry, nothing delivered):
the fetch waited for its end, and every no_wait request after it was refused at once with 408
"Requests Pending" (the stuck one asks for more than the count), a loop of requests that took
most of a core of the service and half of nats-server's until the count was read again.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

log = logging.getLogger("mosaic.bus")

# How long past its expiry a request is waited for before its end is taken as lost; the
# server counts the expiry from receipt, so it ends a little after this side's clock says.
END_MARGIN_SECONDS = 2.0
ENDS_WELL = ("", "404", "408")  # all came; nothing waiting; the wait ran out
_HEARTBEAT = "100"  # idle heartbeats and flow control: never asked for here
# JetStream's refusal of a no_wait request while older requests of the consumer (another
# replica's, or one given up here) ask for more than it counts pending; a plain wait is never
# refused so.
_REQUESTS_PENDING = "Requests Pending"


class Puller:
    """The messages of one durable pull consumer, asked for a request at a time."""

    def __init__(self, nc: Client, next_subject: str, late: Callable[[Msg], None]) -> None:
        self._nc = nc
        self._next_subject = next_subject
        self._late = late
        self._inbox = nc.new_inbox()
        self._sub: Any = None
        self._requests = 0
        self._reply = ""  # the open request's subject
        self._deliver: Callable[[Msg], None] | None = None
        self._left = 0
        self._ended: asyncio.Future[str] | None = None
        self._said = ""  # the description of the status that ended the last request

    @classmethod
    async def bind(
        cls,
        js: JetStreamContext,
        nc: Client,
        stream: str,
        config: api.ConsumerConfig,
        late: Callable[[Msg], None],
    ) -> Puller:
        """Create the durable consumer `config` names unless it exists, and subscribe to its
        replies. An existing one keeps its configuration (as with nats-py's `pull_subscribe`) but
        for `max_ack_pending`, which goes with the batch a fetch asks for: a consumer made when
        the bus fetched fewer would cap every fetch at its old limit."""
        durable = config.durable_name
        assert durable, "a puller is for a durable consumer"
        try:
            info = await js.consumer_info(stream, durable)
        except nats.js.errors.NotFoundError:
            await js.add_consumer(stream, config=config.evolve(name=durable))
        else:
            wanted = config.max_ack_pending
            if wanted is not None and info.config.max_ack_pending != wanted:
                await js.add_consumer(stream, config=info.config.evolve(max_ack_pending=wanted))  # an update
        puller = cls(nc, f"{js._prefix}.CONSUMER.MSG.NEXT.{stream}.{durable}", late)  # nats-py's API prefix
        puller._sub = await nc.subscribe(f"{puller._inbox}.*", cb=puller._on_message)
        return puller

    async def request(
        self, count: int, wait: float, deliver: Callable[[Msg], None], no_wait: bool = False
    ) -> tuple[int, str]:
        """Ask for up to `count` messages, each given to `deliver` as it comes: those waiting now
        (`wait` 0), or those that come within `wait` seconds; with `no_wait` too, those waiting
        now or else the first to come within `wait` (the request is over once some came).
        Returns how many came and how the request ended: "" (all came), JetStream's status (see
        `ENDS_WELL`; 409: refused, its description kept for `fetch`'s error), or "lost" (no end
        came: NATS away, or the consumer deleted)."""
        self._requests += 1
        self._reply = reply = f"{self._inbox}.{self._requests}"
        self._deliver, self._left = deliver, count
        self._ended = ended = asyncio.get_running_loop().create_future()
        asked: dict[str, Any] = {"batch": count}
        if wait:
            asked["expires"] = int(wait * 1e9)
        if no_wait or not wait:
            asked["no_wait"] = True
        try:
            await self._nc.publish(self._next_subject, json.dumps(asked).encode(), reply=reply)
            how = await asyncio.wait_for(ended, wait + END_MARGIN_SECONDS)
        except asyncio.TimeoutError:
            how = "lost"
            log.warning(
                "no end came to a pull request",
                extra={
                    "fields": {"subject": self._next_subject, "batch": count, "wait": wait, "came": count - self._left}
                },
            )
        finally:
            came = count - self._left
            self._reply, self._deliver, self._left, self._ended = "", None, 0, None
        return came, how

    async def take(self, count: int, wait: float, deliver: Callable[[Msg], None]) -> tuple[int, str]:
        """Up to `count` messages, each given to `deliver` as it comes: those waiting now, or
        else the first to come within `wait` seconds. Returns what `request` does."""
        came, how = await self.request(count, wait, deliver, no_wait=True)
        if not came and how == "408" and self._said == _REQUESTS_PENDING:
            came, how = await self.request(1, wait, deliver)  # a wait, which is not refused so
        return came, how

    async def fetch(self, batch: int, wait: float) -> list[Msg]:
        """Up to `batch` messages: those waiting now, or else the first to come within `wait`
        seconds (none if none did). A request refused, or whose end was lost, is raised: APIError
        or nats.errors.TimeoutError."""
        taken: list[Msg] = []
        came, how = await self.take(batch, wait, taken.append)
        if not came and how not in ENDS_WELL:
            if how == "lost":
                raise nats.errors.TimeoutError
            raise nats.js.errors.APIError(code=int(how), description=self._said)
        return taken

    async def close(self) -> None:
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except nats.errors.Error:
                pass

    async def _on_message(self, msg: Msg) -> None:
        headers = msg.headers
        status = headers.get("Status") if headers else None
        if status:
            ended = self._ended
            if status != _HEARTBEAT and msg.subject == self._reply and ended is not None and not ended.done():
                self._said = str((headers or {}).get(api.Header.DESCRIPTION, ""))
                ended.set_result(status)
            return  # else: the end of a request already given up
        if self._deliver is None or self._left <= 0:
            self._late(msg)
            return
        self._left -= 1
        self._deliver(msg)
        if self._left == 0 and self._ended is not None and not self._ended.done():
            self._ended.set_result("")
