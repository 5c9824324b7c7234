"""Rule dry-run: replay the recorded identifier links under proposed rules, in memory.

The links are replayed in event-time order through `graph.MemoryGraph`, which takes the same
decisions as the live resolver. The clusters it builds are compared with today's graph (each
identifier's profile, read from the store, so manual merges and splits count): a proposed
cluster holding identifiers of several of today's profiles is a merge; one of today's
profiles whose identifiers land in several proposed clusters is a split. Nothing is written.
"""

from __future__ import annotations

from identity_service.graph import Key, MemoryGraph
from identity_service.identifiers import ordered
from identity_service.resolver import Resolver
from identity_service.rules import Rules
from mosaic.identity.v1 import identity_pb2, identity_service_pb2

DEFAULT_MAX_LINKS = 1_000_000


async def dry_run(resolver: Resolver, proposed: Rules, max_links: int) -> identity_service_pb2.DryRunRulesResponse:
    links = await resolver.store.links(max_links or DEFAULT_MAX_LINKS)
    memory = MemoryGraph(proposed)
    for link in links:
        identifiers = [identity_pb2.Identifier(type=t, value=v) for t, v in link.identifiers]
        usable = [i for i in identifiers if not proposed.blocked_reason(i.type, i.value)]
        if usable:
            memory.apply(link.event_id, link.at, ordered(usable, proposed))
    proposed_clusters = memory.clusters()

    everything = sorted({key for link in links for key in link.identifiers})
    today: dict[Key, str] = {}
    homes = await resolver.claims(everything)
    roots = await resolver.roots({claim.profile_id for claim in homes.values()})
    for key, claim in homes.items():
        today[key] = roots[claim.profile_id]

    answer = identity_service_pb2.DryRunRulesResponse(
        links_replayed=len(links),
        profiles_now=len(set(today.values())),
        profiles_proposed=len(proposed_clusters),
    )
    spread: dict[str, set[str]] = {}
    for name, keys in sorted(proposed_clusters.items(), key=lambda item: sorted(item[1])):
        now = sorted({today[k] for k in keys if k in today})
        if len(now) > 1:
            answer.would_merge.add(profile_ids=now, identifiers=_identifiers(keys))
        for profile_id in now:
            spread.setdefault(profile_id, set()).add(name)
    for profile_id, names in sorted(spread.items()):
        if len(names) > 1:
            keys = {k for k, p in today.items() if p == profile_id}
            answer.would_split.add(profile_ids=[profile_id], identifiers=_identifiers(keys))
    return answer


def _identifiers(keys) -> list[identity_pb2.Identifier]:
    return [identity_pb2.Identifier(type=t, value=v) for t, v in sorted(keys)]
