"""Operator changes of the graph: manual merges and splits, under the same locks as events.

A split undoes one merge: the merged profile becomes a root again, and since every
identifier keeps its home profile, the identifiers it brought go back with it (and so do the
profiles that had been merged into it). The merge record keeps the split beside it, the
profile remembers never to be merged with the survivor again, and `identity.split` tells the
profile service to rebuild both from their history.
"""

from __future__ import annotations

import uuid
from dataclasses import replace

from google.protobuf import timestamp_pb2

from identity_service import graph
from identity_service.resolver import NAMESPACE, Resolver, Retry, now_ms
from identity_service.rules import Rules
from identity_service.store import OutboxEntry
from mosaic.events.v1 import identity_changed_pb2
from mosaic.identity.v1 import identity_pb2
from mosaic.platform import topics
from mosaic.platform.errors import FailedPrecondition, InvalidArgument, NotFound


async def merge_profiles(
    resolver: Resolver, profile_ids: list[str], rules: Rules, reason: str, request_id: str
) -> tuple[str, list[identity_pb2.MergeRecord]]:
    """Merge profiles by hand; the rules' limits still hold (FailedPrecondition names the rule)."""
    if len(set(profile_ids)) < 2:
        raise InvalidArgument("profile_ids", "must name at least two profiles")
    rows = await resolver.store.profiles(profile_ids)
    for profile_id in profile_ids:
        if profile_id not in rows:
            raise NotFound("profile", profile_id)
    request_id = request_id or str(uuid.uuid4())
    for _ in range(50):
        roots = sorted(set((await resolver.roots(set(profile_ids))).values()))
        if len(roots) == 1:
            return roots[0], []
        holder = f"manual-{uuid.uuid4().hex}"
        try:
            locked = await resolver.lock_all(roots, holder)
        except Retry:
            continue
        try:
            components = {r: await resolver.component(r) for r in locked}
            survivor = graph.survivor(roots, components, rules)
            kept = components[survivor]
            counts, profiles = kept.counts.copy(), set(kept.profiles)
            for root in roots:
                if root == survivor:
                    continue
                # An operator may merge again what an operator split: only the limits and caps hold.
                other = replace(components[root], never_merge=set())
                refusal = graph.merge_refusal([survivor], counts, profiles, set(), other, rules)
                if refusal:
                    raise FailedPrecondition(f"profile {root}", refusal)
                counts += other.counts
                profiles |= other.profiles
            records = []
            for root in roots:
                if root != survivor:
                    records.append(
                        await resolver.merge(
                            root,
                            survivor,
                            holder,
                            components[root],
                            cause=request_id,
                            rule=f"manual: {reason}" if reason else "manual",
                        )
                    )
                    locked.remove(root)
            return survivor, records
        except Retry:
            continue
        finally:
            for profile_id in locked:
                await resolver.store.unlock(profile_id, holder)
    raise FailedPrecondition("profiles", "stayed contended; try again")


async def split(resolver: Resolver, merge_id: str, reason: str) -> identity_changed_pb2.IdentitySplit:
    """Undo one merge; returns the published `identity.split` payload."""
    if not merge_id:
        raise InvalidArgument("merge_id", "is required")
    record = await resolver.store.merge(merge_id)
    if record is None:
        raise NotFound("merge", merge_id)
    survivor, merged = record.survivor_profile_id, record.merged_profile_id
    for _ in range(50):
        row = (await resolver.store.profiles([merged])).get(merged)
        if row is None or row.merge_id != merge_id or row.merged_into != survivor:
            raise FailedPrecondition(f"merge {merge_id}", "does not hold (already split, or never completed)")
        root = await resolver.root(survivor)
        holder = f"split-{uuid.uuid4().hex}"
        try:
            await resolver.lock_all([root], holder)
        except Retry:
            continue
        try:
            moved = await resolver.component(merged)
            members = await resolver.store.members(sorted(moved.profiles))
            split_at = timestamp_pb2.Timestamp()
            split_at.FromMilliseconds(now_ms())
            event = identity_changed_pb2.IdentitySplit(
                split_id=str(uuid.uuid5(NAMESPACE, f"split:{merge_id}")),
                merge_id=merge_id,
                survivor_profile_id=survivor,
                restored_profile_ids=[merged],
                reason=reason,
                split_at=split_at,
                moved_identifiers=[
                    identity_pb2.Identifier(type=m.id_type, value=m.id_value)
                    for found in members.values()
                    for m in found
                ],
            )
            record.split_at.CopyFrom(split_at)
            record.split_reason = reason
            await resolver.store.save_merge(record)
            await resolver.store.outbox_put(
                OutboxEntry(
                    f"{event.split_id}/{holder}", topics.IDENTITY_SPLIT.name, survivor, event.SerializeToString()
                )
            )
            if not await resolver.store.unmerge(merged, survivor, never_merge=survivor):
                continue  # the merge changed under us; look again
            await resolver.store.remove_child(survivor, merged)
            resolver.root_cache.forget([survivor, merged])
            return event
        finally:
            await resolver.store.unlock(root, holder)
    raise FailedPrecondition("profiles", "stayed contended; try again")
