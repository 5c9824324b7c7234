"""The ledger's rules: what a valid entry is, a person's view, merges and splits.

Every write goes to the store together with its `consent.changed` message (the outbox), whose
id is derived from the change, so a redelivered merge or a retried call publishes nothing twice.
The message carries the person's whole consent after the change (`PersonConsent`), so the
services that keep a copy (profile, ingestion) replace theirs and never need to ask.
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from consent_service.store import ConsentStore, MergeRecord, Move, OutboxEntry, micros
from mosaic.consent.v1 import consent_pb2
from mosaic.events.v1 import consent_changed_pb2, identity_changed_pb2
from mosaic.platform import topics
from mosaic.platform.consent import Purpose, decide, effective_change, person_consent
from mosaic.platform.errors import InvalidArgument

MAX_TEXT = 256
MAX_PROOF = 16_384  # a TCF string of many vendors is a few KB


def now_us() -> int:
    return time.time_ns() // 1000


@dataclass(frozen=True)
class PersonView:
    """A person as CheckConsent needs it: its profiles and the latest entry per purpose."""

    head: str
    members: tuple[str, ...]
    latest: dict[str, consent_pb2.ConsentDecision] = field(default_factory=dict)
    jurisdiction: int = consent_pb2.JURISDICTION_UNSPECIFIED
    loaded_at: float = field(default_factory=time.monotonic)


def _bounded(value: str, name: str, limit: int = MAX_TEXT) -> None:
    if len(value) > limit:
        raise InvalidArgument(name, f"must be at most {limit} characters")


class Ledger:
    def __init__(
        self, store: ConsentStore, purposes: dict[str, Purpose], jurisdiction: int, clock: Callable[[], int] = now_us
    ) -> None:
        self.store = store
        self.purposes = purposes
        self.jurisdiction = jurisdiction
        self.clock = clock

    def check_purpose(self, purpose: str, name: str) -> Purpose:
        if purpose not in self.purposes:
            raise InvalidArgument(name, f"must be one of the configured purposes: {', '.join(self.purposes)}")
        return self.purposes[purpose]

    def normalise(
        self, decision: consent_pb2.ConsentDecision, prefix: str = "decision."
    ) -> consent_pb2.ConsentDecision:
        """The entry as the ledger keeps it, or InvalidArgument naming the field and the rule."""
        d = consent_pb2.ConsentDecision()
        d.CopyFrom(decision)
        if not d.profile_id:
            raise InvalidArgument(f"{prefix}profile_id", "is required")
        _bounded(d.profile_id, f"{prefix}profile_id")
        self.check_purpose(d.purpose, f"{prefix}purpose")
        for name in ("source", "actor", "change_id"):
            _bounded(getattr(d, name), f"{prefix}{name}")
        _bounded(d.proof.form_id, f"{prefix}proof.form_id")
        _bounded(d.proof.tcf_string, f"{prefix}proof.tcf_string", MAX_PROOF)
        _bounded(d.proof.text, f"{prefix}proof.text", MAX_PROOF)
        if d.change not in consent_pb2.ConsentChange.values():
            raise InvalidArgument(f"{prefix}change", "is not a known ConsentChange")
        if d.legal_basis not in consent_pb2.LegalBasis.values():
            raise InvalidArgument(f"{prefix}legal_basis", "is not a known LegalBasis")
        if d.jurisdiction not in consent_pb2.Jurisdiction.values():
            raise InvalidArgument(f"{prefix}jurisdiction", "is not a known Jurisdiction")
        if not d.HasField("decided_at"):
            d.decided_at.FromMicroseconds(self.clock())
        d.decided_at.FromMicroseconds(micros(d.decided_at))  # what both stores keep
        change = effective_change(d)
        d.granted = change == consent_pb2.CONSENT_CHANGE_GRANT
        if d.HasField("expires_at"):
            if change != consent_pb2.CONSENT_CHANGE_GRANT:
                raise InvalidArgument(f"{prefix}expires_at", "may only be set on a grant")
            if micros(d.expires_at) <= micros(d.decided_at):
                raise InvalidArgument(f"{prefix}expires_at", "must be after decided_at")
        d.source = d.source or "api"
        d.legal_basis = d.legal_basis or consent_pb2.LEGAL_BASIS_CONSENT
        if not d.change_id:
            key = f"{d.profile_id}\0{d.purpose}\0{micros(d.decided_at)}\0{change}".encode()
            d.change_id = base64.urlsafe_b64encode(hashlib.sha256(key).digest()[:18]).decode()
        return d

    def gpc_denials(
        self, profile_id: str, source: str, actor: str, decided_us: int | None = None
    ) -> list[consent_pb2.ConsentDecision]:
        """The entries the Global Privacy Control signal records: a denial of each sale or sharing purpose."""
        entries = []
        for purpose in self.purposes.values():
            if purpose.sale_or_sharing:
                entry = consent_pb2.ConsentDecision(
                    profile_id=profile_id,
                    purpose=purpose.name,
                    change=consent_pb2.CONSENT_CHANGE_DENY,
                    source=source,
                    actor=actor,
                    proof=consent_pb2.ConsentProof(text="Global Privacy Control signal"),
                )
                if decided_us is not None:
                    entry.decided_at.FromMicroseconds(decided_us)
                entries.append(self.normalise(entry))
        return entries

    async def record(self, decisions: list[consent_pb2.ConsentDecision]) -> list[str]:
        """Append normalised entries with their announcements; returns the person's profiles."""
        if not decisions:
            return []
        head = await self.store.head(decisions[0].profile_id)
        members = await self.store.members(head)
        # The person after this write: what the ledger holds, with these entries where they go
        # (an entry already there is kept; a late one lands before newer ones).
        entries = {_key(e): e for e in await self.store.ledger(members)}
        for decision in decisions:
            entries.setdefault(_key(decision), decision)
        person = person_consent(sorted(entries.values(), key=_position))
        outbox = [_changed(f"consent:{d.change_id}", head, members, "decision", person, d) for d in decisions]
        await self.store.append(decisions, outbox)
        return members

    async def view(self, profile_id: str) -> PersonView:
        head = await self.store.head(profile_id)
        members = tuple(await self.store.members(head))
        latest: dict[str, consent_pb2.ConsentDecision] = {}
        jurisdiction = consent_pb2.JURISDICTION_UNSPECIFIED
        for entry in await self.store.ledger(list(members)):  # oldest first: the last one wins
            latest[entry.purpose] = entry
            jurisdiction = entry.jurisdiction or jurisdiction
        return PersonView(head, members, latest, jurisdiction)

    def state(
        self, view: PersonView, purpose: Purpose, jurisdiction: int = 0, gpc: bool = False
    ) -> consent_pb2.PurposeState:
        return decide(
            purpose,
            view.latest.get(purpose.name),
            jurisdiction or view.jurisdiction or self.jurisdiction,
            gpc,
            self.clock(),
        )

    async def history(
        self, profile_id: str, page_size: int, page_token: str
    ) -> tuple[list[consent_pb2.ConsentDecision], str]:
        if not 0 <= page_size <= 1000:
            raise InvalidArgument("page_size", "must be between 0 and 1000")
        page_size = page_size or 100
        after = _read_token(page_token)
        view_head = await self.store.head(profile_id)
        entries = await self.store.ledger(await self.store.members(view_head))
        if after is not None:
            entries = [e for e in entries if _position(e) > after]
        page = entries[:page_size]
        token = _token(_position(page[-1])) if len(entries) > page_size else ""
        return page, token

    async def republish(self, run: str, page: int = 500) -> int:
        """Write every person's current consent to the outbox again (RepublishConsent); returns
        how many people. A person is announced under its head, once a run, with what its
        profiles' ledgers hold. A decision recorded while a person's notice is written may be
        missing from it and published before it, so the person is read again after the write
        and announced once more if they changed: the last notice is never older than the last
        decision."""
        done: set[str] = set()
        cursor = ""
        while True:
            profile_ids, cursor = await self.store.ledger_profiles(cursor, page)
            for profile_id in profile_ids:
                head = await self.store.head(profile_id)
                if head not in done:
                    done.add(head)
                    await self._announce(run, head)
            if not cursor:
                return len(done)

    async def _announce(self, run: str, head: str) -> None:
        written = None
        for attempt in range(3):
            members = await self.store.members(head)
            person = person_consent(await self.store.ledger(members))
            if person == written:
                return
            message_id = f"republish:{run}:{head}" + (f":{attempt}" if attempt else "")
            await self.store.append([], [_changed(message_id, head, members, f"republish {run}", person)])
            written = person

    async def merged(self, merge: identity_changed_pb2.IdentityMerged) -> bool:
        """Fold the merged profiles' people into the survivor's; False when already done."""
        if not merge.merge_id or not merge.survivor_profile_id:
            raise InvalidArgument("merge_id" if not merge.merge_id else "survivor_profile_id", "is required")
        if await self.store.merge_record(merge.merge_id) is not None:
            return False  # a redelivery: the record and its announcement were written together
        survivor = merge.survivor_profile_id
        moves: list[Move] = []
        for merged in dict.fromkeys(merge.merged_profile_ids):
            if merged == survivor:
                continue
            moves += [Move(p, merged) for p in await self.store.members(merged) if p != survivor]
        record = MergeRecord(merge.merge_id, survivor, tuple(moves), split=False)
        members = [survivor, *(await self.store.members(survivor))[1:], *(m.profile_id for m in moves)]
        person = person_consent(await self.store.ledger(members))
        outbox = [_changed(f"merge:{merge.merge_id}", survivor, members, f"merge {merge.merge_id}", person)]
        await self.store.apply_merge(record, outbox)
        return True

    async def split(self, split: identity_changed_pb2.IdentitySplit) -> bool:
        """Undo what the merge moved; False when already undone. A split that overtook its merge
        (they travel on two streams) is recorded as an undone merge that moved nothing, so the
        merge arriving later is skipped."""
        record = await self.store.merge_record(split.merge_id)
        if record is None:
            record = MergeRecord(split.merge_id, split.survivor_profile_id, (), split=False)
        if record.split:
            return False
        cause = f"split {split.merge_id}"
        moved = [m.profile_id for m in record.moves]
        kept = [p for p in await self.store.members(record.survivor) if p not in moved]
        survivor = person_consent(await self.store.ledger(kept))
        outbox = [_changed(f"split:{split.merge_id}", record.survivor, [record.survivor, *moved], cause, survivor)]
        # Each person the split restores is announced apart, under its own key, with its consent.
        restored: dict[str, list[str]] = {}
        for move in record.moves:
            restored.setdefault(move.previous_head, []).append(move.profile_id)
        for head, profiles in restored.items():
            person = person_consent(await self.store.ledger(profiles))
            outbox.append(_changed(f"split:{split.merge_id}:{head}", head, profiles, cause, person))
        await self.store.apply_split(record, outbox)
        return True


def _changed(
    message_id: str,
    person: str,
    profile_ids: Iterable[str],
    cause: str,
    consent: consent_pb2.PersonConsent,
    decision: consent_pb2.ConsentDecision | None = None,
) -> OutboxEntry:
    message = consent_changed_pb2.ConsentChanged(
        person_id=person, profile_ids=list(dict.fromkeys(profile_ids)), cause=cause, person=consent
    )
    if decision is not None:
        message.decision.CopyFrom(decision)
    return OutboxEntry(message_id, topics.CONSENT_CHANGED.name, person, message.SerializeToString())


def _position(entry: consent_pb2.ConsentDecision) -> tuple[int, str, str]:
    return micros(entry.decided_at), entry.purpose, entry.profile_id


def _key(entry: consent_pb2.ConsentDecision) -> tuple[str, str, int]:
    """What makes a ledger entry one: the store keeps one per (profile, purpose, decided_at)."""
    return entry.profile_id, entry.purpose, micros(entry.decided_at)


def _token(position: tuple[int, str, str]) -> str:
    return base64.urlsafe_b64encode("\0".join(map(str, position)).encode()).decode()


def _read_token(token: str) -> tuple[int, str, str] | None:
    if not token:
        return None
    try:
        us, purpose, profile_id = base64.urlsafe_b64decode(token.encode()).decode().split("\0")
        return int(us), purpose, profile_id
    except (ValueError, UnicodeDecodeError):
        raise InvalidArgument("page_token", "is not a token this service issued") from None
