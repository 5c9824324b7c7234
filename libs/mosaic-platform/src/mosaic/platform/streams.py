"""The JetStream streams: one per topic and the dead letters, declared at every start; erasing a
message, or every message of a key."""

from __future__ import annotations

from collections.abc import Iterable

import nats.js.errors
from nats.js import JetStreamContext, api

from mosaic.platform import topics
from mosaic.platform.errors import Unavailable
from mosaic.platform.nats_connection import JETSTREAM_DOWN, NATS_DOWN
from mosaic.platform.topics import Topic

_NO_MESSAGE = 10057  # JetStream's error code for a sequence that holds no message
_NONE_LEFT = 10037  # no message on the subject from the sequence asked
_NO_STREAM = 10059  # a stream not declared (delivery's jobs, where delivery never ran)


async def ensure(js: JetStreamContext, wanted: Iterable[Topic], max_messages: int, replicas: int) -> None:
    """Create or update the streams; safe to run from every replica at every start.

    `max_messages` (0: none) bounds each stream. A full stream refuses new messages (discard
    NEW) rather than dropping old ones nobody has consumed yet: the publisher gets
    Unavailable, so ingestion answers 503 with Retry-After and nothing accepted is lost.
    A count, not bytes: nats-server 2.9 checks a byte bound against the payload without the
    record's overhead, stores past it, then trims the oldest messages (measured: accepted
    events lost from the head, test_stream_limits); the message count is checked exactly."""
    configs = [
        api.StreamConfig(
            name=topic.stream,
            subjects=[topic.wildcard],
            storage=api.StorageType.FILE,
            retention=api.RetentionPolicy.LIMITS,
            max_age=topic.max_age,
            max_msgs=max_messages or None,
            discard=api.DiscardPolicy.NEW,
            duplicate_window=topic.duplicate_window,
            num_replicas=replicas,
        )
        for topic in wanted
    ]
    configs.append(
        api.StreamConfig(
            name=topics.DEAD_LETTER_STREAM,
            subjects=[topics.DEAD_LETTER_SUBJECTS],
            storage=api.StorageType.FILE,
            max_age=30 * topics.DAY,
            num_replicas=replicas,
        )
    )
    for config in configs:
        try:
            await js.add_stream(config)
        except nats.js.errors.BadRequestError:
            await js.update_stream(config)  # exists with another configuration


async def erase(js: JetStreamContext, topic: Topic, sequence: int) -> None:
    """Delete a consumed message from its stream, its bytes overwritten on disk (JetStream's
    secure delete): for messages that must not outlive their use. One already gone is fine."""
    await _delete(js, topic.stream, sequence)


async def erase_subjects(js: JetStreamContext, stream: str, subjects: str) -> int:
    """Securely delete (as `erase`) every message of `stream` on `subjects` (a wildcard: one
    key's subjects); how many. Each is found through the stream's subject index (the next
    message on the subjects from a sequence), so the rest of the stream is never read. Not a
    purge by subject: nats-server 2.9 purges without overwriting, leaving the bytes in the
    block file until it is compacted."""
    count, sequence = 0, 1
    while True:
        try:
            message = await js.get_msg(stream, seq=sequence, subject=subjects, next=True)
        except (*NATS_DOWN, *JETSTREAM_DOWN) as error:
            raise Unavailable("nats", f"erase from {stream} not confirmed: {type(error).__name__}") from error
        except nats.js.errors.NotFoundError as error:
            if error.err_code in (_NONE_LEFT, _NO_STREAM):
                return count
            raise
        assert message.seq is not None  # a stored message has its sequence
        await _delete(js, stream, message.seq)
        count += 1
        sequence = message.seq + 1


async def _delete(js: JetStreamContext, stream: str, sequence: int) -> None:
    try:
        await js.delete_msg(stream, sequence)
    except (*NATS_DOWN, *JETSTREAM_DOWN) as error:
        raise Unavailable("nats", f"erase from {stream} not confirmed: {type(error).__name__}") from error
    except nats.js.errors.APIError as error:
        if error.err_code != _NO_MESSAGE:
            raise
