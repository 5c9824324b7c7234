"""Reading the graph back: a profile's identities, its merge history, and why each identifier
belongs to it. Records are trusted only as far as the profile rows agree (see resolver)."""

from __future__ import annotations

from google.protobuf import timestamp_pb2

from identity_service.resolver import Resolver
from mosaic.identity.v1 import identity_pb2, identity_service_pb2
from mosaic.platform.errors import InvalidArgument, NotFound


async def survivor_of(resolver: Resolver, profile_id: str) -> str:
    if not profile_id:
        raise InvalidArgument("profile_id", "is required")
    if not await resolver.store.profiles([profile_id]):
        raise NotFound("profile", profile_id)
    return await resolver.root(profile_id)


async def identities(resolver: Resolver, root: str) -> list[identity_pb2.Identity]:
    component = await resolver.component(root)
    members = await resolver.store.members(sorted(component.profiles))
    seen = await resolver.store.last_seen(sorted(members))
    found_identities = []
    for home, found in sorted(members.items()):
        for m in sorted(found, key=lambda m: (m.id_type, m.id_value)):
            last = seen.get((m.id_type, m.id_value), m.first_seen)
            found_identities.append(
                identity_pb2.Identity(
                    identifier=identity_pb2.Identifier(type=m.id_type, value=m.id_value),
                    home_profile_id=home,
                    first_seen=_ts(m.first_seen),
                    last_seen=_ts(max(last, m.first_seen)),
                    source=m.source,
                    event_id=m.event_id,
                )
            )
    return found_identities


async def history(resolver: Resolver, profile_id: str) -> list[identity_pb2.MergeRecord]:
    """Merges the profile took part in that happened (held, or held until split), oldest first."""
    records = await resolver.store.merges_of(profile_id)
    rows = await resolver.store.profiles(sorted({r.merged_profile_id for r in records}))
    kept = []
    for record in records:
        row = rows.get(record.merged_profile_id)
        if row is not None and row.merge_id == record.merge_id:
            # Holds now: a split recorded beside it lost its race, so it shows no split.
            record.ClearField("split_at")
            record.split_reason = ""
            kept.append(record)
        elif record.HasField("split_at"):
            kept.append(record)
    return kept


async def explain(resolver: Resolver, root: str) -> identity_service_pb2.ExplainProfileResponse:
    answer = identity_service_pb2.ExplainProfileResponse(profile_id=root)
    component = await resolver.component(root)
    rows = await resolver.store.profiles(sorted(component.profiles))
    merges = {}
    for profile_id in component.profiles:
        row = rows.get(profile_id)
        if row is not None and row.merge_id:
            merges[profile_id] = await resolver.store.merge(row.merge_id)
    for identity in await identities(resolver, root):
        path: list[identity_pb2.MergeRecord] = []
        profile_id = identity.home_profile_id
        while profile_id != root and (record := merges.get(profile_id)) is not None:
            path.append(record)
            profile_id = record.survivor_profile_id
        direct = f"linked to this profile by event {identity.event_id}" + (
            f" from source {identity.source}" if identity.source else ""
        )
        if path:
            steps = "; ".join(
                f"{m.merged_profile_id} merged into {m.survivor_profile_id} by {m.rule}"
                + (f" ({m.identifier.type} {m.identifier.value})" if m.identifier.type else "")
                + (f" on event {m.cause_event_id}" if m.cause_event_id else "")
                for m in path
            )
            reason = f"linked to profile {identity.home_profile_id} by event {identity.event_id}; then {steps}"
        else:
            reason = direct
        answer.identifiers.add(identity=identity, path=path, reason=reason)
    for profile_id in sorted(component.profiles):
        answer.unlinked.extend(await resolver.store.unlinked_of(profile_id))
    return answer


def _ts(ms: int) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromMilliseconds(ms)
    return stamp
