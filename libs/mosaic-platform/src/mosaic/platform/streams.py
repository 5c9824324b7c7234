"""The JetStream streams: one per topic and the dead letters, declared at every start; erasing a message."""

from __future__ import annotations

from collections.abc import Iterable

import nats.js.errors
from nats.js import JetStreamContext, api

from mosaic.platform import topics
from mosaic.platform.errors import Unavailable
from mosaic.platform.nats_connection import JETSTREAM_DOWN, NATS_DOWN
from mosaic.platform.topics import Topic

_NO_MESSAGE = 10057  # JetStream's error code for a sequence that holds no message


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
    try:
        await js.delete_msg(topic.stream, sequence)
    except (*NATS_DOWN, *JETSTREAM_DOWN) as error:
        raise Unavailable("nats", f"erase from {topic.stream} not confirmed: {type(error).__name__}") from error
    except nats.js.errors.APIError as error:
        if error.err_code != _NO_MESSAGE:
            raise
