"""The topic registry (mosaic.platform.topics) against the code: every topic has a producer and a
consumer in the services' code, and the registry names exactly the services the code shows."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf.message import Message

from mosaic.platform import topics
from mosaic.testing import topic_uses

ROOT = Path(__file__).resolve().parents[2]
PLATFORM_SRC = ROOT / "libs" / "mosaic-platform" / "src"
CONSTANTS = {name: t.name for name, t in vars(topics).items() if isinstance(t, topics.Topic)}


@pytest.fixture(scope="module")
def found() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    return topic_uses.by_topic(topic_uses.scan(ROOT / "services", PLATFORM_SRC, CONSTANTS))


def test_every_topic_constant_is_in_the_registry() -> None:
    assert sorted(CONSTANTS.values()) == sorted(t.name for t in topics.REGISTRY)
    assert len({t.stream for t in topics.REGISTRY}) == len(topics.REGISTRY)


@pytest.mark.parametrize("topic", topics.REGISTRY, ids=lambda t: t.name)
def test_the_registry_names_payload_key_and_both_ends(topic: topics.Topic) -> None:
    assert issubclass(topic.message, Message)
    assert topic.key, "the key it is partitioned by"
    assert topic.producers and topic.consumers
    assert set(topic.producers) <= set(topics.SERVICES) and set(topic.consumers) <= set(topics.SERVICES)


@pytest.mark.parametrize("topic", topics.REGISTRY, ids=lambda t: t.name)
def test_the_code_publishes_and_consumes_each_topic_as_registered(found, topic: topics.Topic) -> None:
    producers, consumers = found
    assert producers.get(topic.name, set()) == set(topic.producers), f"who publishes {topic.name} in the code"
    assert consumers.get(topic.name, set()) == set(topic.consumers), f"who consumes {topic.name} in the code"


def test_the_scan_sees_a_topic_that_nobody_consumes(tmp_path: Path) -> None:
    """A half-wired flow in a service tree is reported: the check can fail."""
    src = tmp_path / "services" / "alpha" / "src" / "alpha_service"
    src.mkdir(parents=True)
    (src / "app.py").write_text(
        "from mosaic.platform import topics\n"
        "from mosaic.platform.topics import PROFILE_UPDATED as UPDATED\n"
        "JOBS = topics.DELIVERY_JOBS\n"
        "async def build(bus, js, job):\n"
        "    await bus.publish(topics.EVENTS_RAW, 'k', job, 'id')\n"
        "    subject = f'{JOBS.name}.{job.destination_id}'\n"
        "    await js.publish(subject, b'')\n"
        "    bus.consume(UPDATED, print, [0])\n"
        "    await bus.erase(topics.AUDIT, 1)\n"
    )
    uses = topic_uses.scan(tmp_path / "services", PLATFORM_SRC, CONSTANTS)
    assert uses["alpha"].published == {"events.raw", "delivery.jobs"}
    assert uses["alpha"].consumed == {"profile.updated"}  # erasing is neither


def test_the_scan_follows_platform_code_a_service_runs(tmp_path: Path) -> None:
    src = tmp_path / "services" / "beta" / "src" / "beta_service"
    src.mkdir(parents=True)
    (src / "app.py").write_text(
        "from mosaic.platform import server\n"
        "from mosaic.platform.privacy import Participant\n"
        "def main(bus):\n"
        "    Participant('beta', bus, None, None).start([0])\n"
        "    server.main(None, None)\n"
    )
    uses = topic_uses.scan(tmp_path / "services", PLATFORM_SRC, CONSTANTS)
    assert uses["beta"].published == {"privacy.receipt", "audit"}
    assert uses["beta"].consumed == {"privacy.requested", "audit"}
