"""What the consumer does with a message it could not handle: one pure decision (`decide`).

- `Unavailable` (a dependency is down) is retried in place with backoff, keeping the message
  in progress. A nak would let later messages of the same partition overtake it; holding the
  partition keeps per-key order, which is the point of partitioning. Still down when the
  partition stops (or its lease lapses), it is given back for the next holder to do first.
- any other `DomainError`, or a payload that does not parse, is poison: it is copied to the
  DEAD_LETTERS stream with the reason in a header, then terminated.
- any other exception (a bug) is nak'ed with a growing delay and redelivered; after
  `max_deliver` deliveries it is dead-lettered like poison.
"""

from __future__ import annotations

import dataclasses
import enum

from google.protobuf.message import DecodeError

from mosaic.platform import retry
from mosaic.platform.errors import DomainError, Unavailable

# Waits between retries of a handler, in place or by redelivery: 0.2 s, 0.4 s, 0.8 s ... 30 s.
BACKOFF_BASE, BACKOFF_CAP = 0.2, 30.0


def backoff(attempt: int) -> float:
    return retry.backoff(attempt, BACKOFF_BASE, BACKOFF_CAP)


class Unparsable(Exception):
    """A payload that is not its topic's message: poison from the first delivery."""

    def __init__(self, message_type: str, error: DecodeError) -> None:
        super().__init__(f"payload is not a {message_type}: {error}")


class Action(enum.Enum):
    RETRY_IN_PLACE = "retry in place"  # call the handler again, the message kept in progress
    REDELIVER = "redeliver"  # nak with a delay: JetStream delivers it again
    DEAD_LETTER = "dead letter"  # copy it to DEAD_LETTERS with the reason, then terminate it
    GIVE_BACK = "give back"  # the partition stops: nak'ed on stopping, for the next holder


@dataclasses.dataclass(frozen=True)
class Decision:
    action: Action
    delay: float = 0.0  # REDELIVER: seconds before JetStream redelivers
    reason: str = ""  # DEAD_LETTER: the dead letter's Mosaic-Reason
    bug: bool = False  # raised what no handler should: its traceback is logged


def decide(error: BaseException, num_delivered: int, max_deliver: int, *, active: bool) -> Decision:
    """What to do with a message on its `num_delivered`th delivery, whose handling raised
    `error` (`Unparsable` for a payload that did not parse); `active`: its partition is still
    consumed here (not stopping, the lease held)."""
    if isinstance(error, Unparsable):
        return Decision(Action.DEAD_LETTER, reason=str(error))
    if isinstance(error, Unavailable):
        return Decision(Action.RETRY_IN_PLACE if active else Action.GIVE_BACK)
    if isinstance(error, DomainError):
        return Decision(Action.DEAD_LETTER, reason=str(error))
    if num_delivered >= max_deliver:
        return Decision(Action.DEAD_LETTER, reason=f"failed {num_delivered} times: {error!r}", bug=True)
    return Decision(Action.REDELIVER, delay=backoff(num_delivered), bug=True)
