"""The decision of one resolution, as a pure function of what the graph holds.

`decide` gets the event's identifiers in priority order, the profile each known one resolves
to, and the state of those profiles' components; it returns a `Plan`: the survivor (or a new
profile), the profiles to merge into it, the identifiers to link, and those left unlinked
with the reason. Identifiers are taken in priority order and each is accepted only if the
profile it would build still keeps every rule, so when rules collide the lowest-priority
identifier is the one left out. The live resolver (on either store) and the dry run both
call it, so a dry run answers with the very logic that will run.

`MemoryGraph` applies plans in memory; the dry run replays recorded links through it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from identity_service.rules import NEWEST, Rules
from mosaic.identity.v1 import identity_pb2

Key = tuple[str, str]


@dataclass
class Component:
    """A root profile with every profile merged into it: what the rules are checked against."""

    root: str
    created_at: int  # ms since the epoch of the event that created it
    profiles: set[str] = field(default_factory=set)
    counts: Counter[str] = field(default_factory=Counter)
    never_merge: set[str] = field(default_factory=set)

    @property
    def merges(self) -> int:
        return len(self.profiles) - 1

    @property
    def mappings(self) -> int:
        return sum(self.counts.values())


@dataclass
class Plan:
    """What one resolution changes."""

    survivor: str | None  # None: a new profile
    joined: list[tuple[str, identity_pb2.Identifier]] = field(default_factory=list)  # (root, linking identifier)
    link: list[identity_pb2.Identifier] = field(default_factory=list)
    unlinked: list[tuple[identity_pb2.Identifier, str, str]] = field(default_factory=list)  # (id, reason, other)

    @property
    def merged(self) -> list[tuple[str, identity_pb2.Identifier]]:
        """The roots folded into the survivor, each with the identifier that linked it."""
        return [(root, identifier) for root, identifier in self.joined if root != self.survivor]

    @property
    def changes_graph(self) -> bool:
        return self.survivor is None or bool(self.link) or bool(self.merged)


def decide(
    identifiers: list[identity_pb2.Identifier],
    roots: dict[Key, str],
    components: dict[str, Component],
    rules: Rules,
) -> Plan:
    """The plan for an event's identifiers (priority order); `roots` maps known ones to their root."""
    group: list[str] = []
    counts: Counter[str] = Counter()
    profiles: set[str] = set()
    never: set[str] = set()
    plan = Plan(survivor=None)
    for identifier in identifiers:
        root = roots.get((identifier.type, identifier.value))
        if root is None:
            if sum(counts.values()) + 1 > rules.max_mappings:
                plan.unlinked.append((identifier, f"mapping cap {rules.max_mappings} reached", ""))
            elif counts[identifier.type] + 1 > rules.limit(identifier.type):
                plan.unlinked.append(
                    (identifier, f"limit {identifier.type}={rules.limit(identifier.type)} reached", "")
                )
            else:
                counts[identifier.type] += 1
                plan.link.append(identifier)
            continue
        if root in group:
            continue
        other = components[root]
        reason = merge_refusal(group, counts, profiles, never, other, rules)
        if reason:
            plan.unlinked.append((identifier, reason, root))
            continue
        group.append(root)
        plan.joined.append((root, identifier))
        counts += other.counts
        profiles |= other.profiles
        never |= other.never_merge
    if group:
        plan.survivor = survivor(group, components, rules)
    return plan


def survivor(roots: list[str], components: dict[str, Component], rules: Rules) -> str:
    """The profile that remains: the oldest (or newest) by first sighting, then by id."""
    ordered = sorted(roots, key=lambda r: (components[r].created_at, r))
    return ordered[-1] if rules.survivor == NEWEST else ordered[0]


def merge_refusal(
    group: list[str], counts: Counter[str], profiles: set[str], never: set[str], other: Component, rules: Rules
) -> str | None:
    if not group and not counts:
        return None  # the first profile found: joining it is not a merge
    combined = counts + other.counts
    for identifier_type, count in sorted(combined.items()):
        if count > rules.limit(identifier_type):
            return f"merge would exceed limit {identifier_type}={rules.limit(identifier_type)}"
    if group and len(profiles) + len(other.profiles) - 1 > rules.max_merges:
        return f"merge cap {rules.max_merges} reached"
    if sum(combined.values()) > rules.max_mappings:
        return f"mapping cap {rules.max_mappings} reached"
    if never & other.profiles or other.never_merge & profiles:
        return "profiles were split by an operator"
    return None


class MemoryGraph:
    """An identity graph in memory, for the dry run: claims, merges, the same decisions."""

    def __init__(self, rules: Rules) -> None:
        self.rules = rules
        self.home: dict[Key, str] = {}
        self.parent: dict[str, str] = {}
        self.created: dict[str, int] = {}
        self.counts: dict[str, Counter[str]] = {}
        self.children: dict[str, list[str]] = {}

    def root(self, profile_id: str) -> str:
        while profile_id in self.parent:
            profile_id = self.parent[profile_id]
        return profile_id

    def component(self, root: str) -> Component:
        component = Component(root, self.created[root], profiles={root})
        stack = [root]
        while stack:
            for child in self.children.get(stack.pop(), []):
                component.profiles.add(child)
                stack.append(child)
        for profile_id in component.profiles:
            component.counts.update(self.counts[profile_id])
        return component

    def apply(self, event_id: str, at: int, identifiers: list[identity_pb2.Identifier]) -> str | None:
        roots = {k: self.root(self.home[k]) for i in identifiers if (k := (i.type, i.value)) in self.home}
        plan = decide(identifiers, roots, {r: self.component(r) for r in set(roots.values())}, self.rules)
        target = plan.survivor or f"new:{event_id}"
        if plan.survivor is None:
            if not plan.link:
                return None
            self.created[target] = at
            self.counts[target] = Counter()
        for loser, _ in plan.merged:
            self.parent[loser] = target
            self.children.setdefault(target, []).append(loser)
        for identifier in plan.link:
            self.home[(identifier.type, identifier.value)] = target
            self.counts[target][identifier.type] += 1
        return target

    def clusters(self) -> dict[str, set[Key]]:
        found: dict[str, set[Key]] = {}
        for key, home in self.home.items():
            found.setdefault(self.root(home), set()).add(key)
        return found
