"""The demo: its data set is the same for the same seed, and on the real mesh (six service
processes on a real nats-server, a real webhook receiver) its report's figures hold together;
loaded a second time, every event is a duplicate and nothing is counted or delivered twice."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from mosaic.cli.demo import DESTINATIONS, SEGMENTS, run_demo
from mosaic.cli.demo_data import PHASES, SOURCES, generate
from mosaic.cli.demo_report import render
from mosaic.cli.mesh import Mesh
from mosaic.testing.receivers import WebhookReceiver

NOW = datetime(2026, 6, 1, tzinfo=timezone.utc)


def _all(data):
    return [event for phase in PHASES for source in SOURCES for event in data.events[phase][source]]


def test_the_same_seed_gives_the_same_events_and_another_seed_others():
    first, again, other = generate(300, 7, NOW), generate(300, 7, NOW), generate(300, 8, NOW)
    assert [e.SerializeToString() for e in _all(first)] == [e.SerializeToString() for e in _all(again)]
    assert [e.SerializeToString() for e in _all(first)] != [e.SerializeToString() for e in _all(other)]


def test_the_data_set_has_every_source_journeys_that_merge_and_orders_of_the_last_90_days():
    data = generate(600, 7, NOW)
    assert len(data.customers) == 600
    assert {c.channel for c in data.customers} == set(SOURCES)
    for source in SOURCES:
        assert any(data.events[phase][source] for phase in PHASES), source
    ids = [e.message_id for e in _all(data)]
    assert len(ids) == len(set(ids)) == data.event_count
    assert data.expected_merges > 0
    anonymous = [a for c in data.customers for a in c.anonymous_ids]
    assert len(anonymous) == len(set(anonymous)) > 0
    orders = [e for events in data.events["orders"].values() for e in events]
    assert orders and all(e.event == "Order Completed" and "revenue" in e.properties for e in orders)
    assert all(NOW - timedelta(days=90) <= e.timestamp.ToDatetime(timezone.utc) <= NOW for e in orders)
    assert sum(c.orders for c in data.customers) == len(orders) + len(data.events["history"]["pos"])
    # Sign-ups link the visitor: the anonymous id and the user id on one identify.
    signups = [e for e in data.events["linked"]["web"] if e.anonymous_id and e.user_id]
    assert signups
    consent = [e for e in signups if "consent" in e.context]
    assert consent and all("Marketing" in e.context["consent"]["categoryPreferences"] for e in consent)


def test_a_data_set_needs_a_customer():
    with pytest.raises(ValueError, match="at least 1"):
        generate(0)


async def test_the_demo_report_holds_together_and_a_second_load_changes_nothing(nats_server, tmp_path, monkeypatch):
    monkeypatch.setenv("MOSAIC_TLS_CA", "")
    monkeypatch.setenv("MOSAIC_AUTH_TOKEN_FILE", "")
    mesh = Mesh(
        {
            "MOSAIC_AUTH": "off",
            "MOSAIC_NATS_URL": nats_server.url,
            "MOSAIC_DATA_DIR": str(tmp_path / "data"),
            "MOSAIC_INGEST_OPEN_SOURCES": "true",
            "MOSAIC_DELIVERY_FEEDBACK": "true",
            "OTEL_TRACES_EXPORTER": "none",
        },
        tmp_path / "logs",
    )
    receiver = WebhookReceiver().start()
    try:
        mesh.start()
        report = await run_demo(mesh, receiver, customers=150, seed=3)
        again = await run_demo(mesh, receiver, customers=150, seed=3)
    finally:
        receiver.stop()
        mesh.stop()
    assert report.outcomes == {"accepted": report.events_sent}, report.refusals
    # One profile per customer: every identifier found, none of two customers joined.
    assert report.profiles == report.customers == 150
    assert report.anonymous_unified == report.anonymous_ids > 0
    assert report.identifiers > report.profiles
    assert set(report.segments) == set(SEGMENTS)
    assert all(0 <= size <= report.customers for size in report.segments.values())
    assert report.segments["recent-big-spenders"] + report.segments["one-time-buyers"] <= report.customers  # 3+ vs 1
    assert sum(report.deliveries.values()) > 0
    for destination_id, (_, segment_id) in DESTINATIONS.items():
        assert report.deliveries[destination_id] <= report.segments[segment_id], destination_id
    user_id, profile_id, order_id = report.example
    assert profile_id and order_id.startswith("demo-3-")
    text = render(report, mesh, "-plaintext")
    assert f"resolved to {report.profiles:,} profiles" in text
    assert f"uv run mosaic profile --user-id {user_id}" in text and "ListSnapshots" in text
    # The same events again: ingestion drops them as duplicates, and nothing moves.
    assert again.outcomes == {"duplicate": again.events_sent}
    assert again.profiles == report.profiles and again.segments == report.segments
    assert sum(again.deliveries.values()) == 0
