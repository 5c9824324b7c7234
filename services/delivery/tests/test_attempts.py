"""A job's attempt number is read from its ack subject as nats-py's `msg.metadata` reads it."""

from __future__ import annotations

import pytest
from nats.aio.msg import Msg
from nats.errors import NotJSMessageError

from delivery_service.worker import attempt_of


@pytest.mark.parametrize(
    "reply",
    [
        "$JS.ACK.DELIVERY_JOBS.delivery-jobs-crm.3.17.12.1796276179834088588.40",
        "$JS.ACK.hub.ACCHASH.DELIVERY_JOBS.delivery-jobs-crm.7.17.12.1796276179834088588.40",
        "$JS.ACK.hub.ACCHASH.DELIVERY_JOBS.delivery-jobs-crm.12.17.12.1796276179834088588.40.tok",
    ],
)
def test_the_attempt_is_the_delivery_count_of_the_ack_subject_in_either_format(reply):
    msg = Msg(None, subject="delivery.jobs.crm.x", reply=reply)
    assert attempt_of(msg) == msg.metadata.num_delivered


@pytest.mark.parametrize("reply", ["", "_INBOX.abc", "$JS.ACK.too.short"])
def test_a_message_not_from_jetstream_has_no_attempt(reply):
    with pytest.raises(NotJSMessageError):
        attempt_of(Msg(None, subject="s", reply=reply))
