"""What the consumer does with a message its handler failed on: the decision alone, no NATS."""

import pytest
from google.protobuf.message import DecodeError

from mosaic.platform.errors import InvalidArgument, NotFound, Unavailable
from mosaic.platform.failures import Action, Decision, Unparsable, decide

MAX_DELIVER = 10
UNPARSABLE = Unparsable("mosaic.events.v1.Event", DecodeError("Error parsing message"))
BUG = RuntimeError("bug")

CASES = [
    # (error, delivery, partition still active, decision)
    pytest.param(
        UNPARSABLE,
        1,
        True,
        Decision(Action.DEAD_LETTER, reason="payload is not a mosaic.events.v1.Event: Error parsing message"),
        id="an unparsable payload is poison at once",
    ),
    pytest.param(
        UNPARSABLE,
        1,
        False,
        Decision(Action.DEAD_LETTER, reason="payload is not a mosaic.events.v1.Event: Error parsing message"),
        id="an unparsable payload is poison even when stopping",
    ),
    pytest.param(
        Unavailable("store", "down"),
        1,
        True,
        Decision(Action.RETRY_IN_PLACE),
        id="a dependency down is retried in place",
    ),
    pytest.param(
        Unavailable("store", "down"),
        MAX_DELIVER + 5,
        True,
        Decision(Action.RETRY_IN_PLACE),
        id="a dependency down never counts toward max_deliver",
    ),
    pytest.param(
        Unavailable("store", "down"),
        1,
        False,
        Decision(Action.GIVE_BACK),
        id="still down when the partition stops or its lease lapses: given back",
    ),
    pytest.param(
        InvalidArgument("event", "must not be 'bad'"),
        1,
        True,
        Decision(Action.DEAD_LETTER, reason="event: must not be 'bad'"),
        id="a domain error is poison, its message the reason",
    ),
    pytest.param(
        NotFound("profile", "p1"),
        3,
        False,
        Decision(Action.DEAD_LETTER, reason="profile 'p1' not found"),
        id="a domain error is poison even when stopping",
    ),
    pytest.param(BUG, 1, True, Decision(Action.REDELIVER, delay=0.2, bug=True), id="a bug is redelivered after 0.2 s"),
    pytest.param(BUG, 3, True, Decision(Action.REDELIVER, delay=0.8, bug=True), id="the delay doubles per delivery"),
    pytest.param(BUG, 9, True, Decision(Action.REDELIVER, delay=30.0, bug=True), id="the delay is capped at 30 s"),
    pytest.param(
        BUG, 2, False, Decision(Action.REDELIVER, delay=0.4, bug=True), id="a bug is redelivered even when stopping"
    ),
    pytest.param(
        BUG,
        MAX_DELIVER,
        True,
        Decision(Action.DEAD_LETTER, reason="failed 10 times: RuntimeError('bug')", bug=True),
        id="a bug on its max_deliver-th delivery is dead-lettered",
    ),
    pytest.param(
        BUG,
        MAX_DELIVER + 2,
        True,
        Decision(Action.DEAD_LETTER, reason="failed 12 times: RuntimeError('bug')", bug=True),
        id="past max_deliver (it was lowered): dead-lettered",
    ),
    pytest.param(
        DecodeError("nested"),
        1,
        True,
        Decision(Action.REDELIVER, delay=0.2, bug=True),
        id="a decode error the handler raised itself is a bug, not poison",
    ),
]


@pytest.mark.parametrize(("error", "num_delivered", "active", "expected"), CASES)
def test_a_failure_is_decided_by_its_kind_its_delivery_and_the_partition(
    error: BaseException, num_delivered: int, active: bool, expected: Decision
) -> None:
    assert decide(error, num_delivered, MAX_DELIVER, active=active) == expected
