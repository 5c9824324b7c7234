"""The demo's report as text: what went in, what the mesh made of it, and the exact commands to
look at one customer's profile, history, deliveries and trace."""

from __future__ import annotations

import json
import urllib.parse

from mosaic.cli.demo import DESTINATIONS, SEGMENTS, Report
from mosaic.cli.mesh import Mesh


def render(report: Report, mesh: Mesh, auth: str) -> str:
    outcomes = ", ".join(f"{count:,} {outcome}" for outcome, count in report.outcomes.most_common())
    lines = [
        f"Demo: {report.customers:,} customers of a shop, loaded and settled in {report.seconds:.0f} s.",
        f"  events       {report.events_sent:,} sent over gRPC Ingest from web, mobile, CRM and tills: {outcomes}",
        f"  identities   {report.identifiers:,} identifiers (user ids, anonymous ids, loyalty cards, e-mails) resolved to "
        f"{report.profiles:,} profiles for {report.customers:,} customers;",
        f"               {report.anonymous_unified:,} of {report.anonymous_ids:,} anonymous visitors ended on "
        f"their customer's profile ({report.merges_expected:,} journeys joined two profiles that existed apart)",
        "  segments     " + ", ".join(f"{segment_id} {size:,}" for segment_id, size in report.segments.items()),
    ]
    if report.refusals:
        lines.append(
            "               not accepted: " + "; ".join(f"{n:,} {why}" for why, n in report.refusals.most_common(3))
        )
    for destination_id, (path, segment_id) in DESTINATIONS.items():
        lines.append(
            f"  deliveries   {destination_id}: {report.deliveries[destination_id]:,} webhook POSTs to the demo's "
            f"receiver ({path}) for {segment_id} entries with marketing consent"
        )
    user_id, profile_id, order_id = report.example
    lines += ["", f"Segments are defined in the segment language, e.g. {SEGMENTS['recent-big-spenders'][1]!r}."]
    if profile_id:
        who = f"--user-id {user_id}" if user_id else f"--profile-id {profile_id}"
        lines += [
            "",
            f"One customer ({user_id or profile_id}, profile {profile_id}):",
            f"  profile      uv run mosaic profile {who}",
            f"  history      grpcurl {auth} -d '{json.dumps({'profile_id': profile_id})}' "
            f"{mesh.address('profile')} mosaic.profile.v1.ProfileService/ListSnapshots",
            f"  deliveries   uv run mosaic deliveries list --profile-id {profile_id}",
        ]
        if order_id:
            tags = urllib.parse.quote(json.dumps({"messaging.message.id": order_id}, separators=(",", ":")))
            query = urllib.parse.quote(f"messaging.message.id={order_id}")
            lines += [
                f"  trace        (with `make observe`; their last order, {order_id}) in Zipkin's UI: "
                f"http://127.0.0.1:9411/zipkin/?serviceName=identity&annotationQuery={query}",
                f"               Jaeger's API: curl 'http://127.0.0.1:16686/api/traces?service=identity&tags={tags}'",
            ]
    lines += [
        "",
        "Send an event as an SDK would (demo-web's write key, rotated each run):",
        f'  curl -u {report.write_key}: -H \'Content-Type: application/json\' -d \'{{"userId": "{user_id or "cust-00000"}", '
        f'"event": "Order Completed", "properties": {{"revenue": 42}}}}\' '
        f"http://127.0.0.1:{mesh.http_ports['ingestion']}/v1/track",
        "",
    ]
    return "\n".join(lines)
