"""The deployment's consent purposes and how a purpose's state is decided, for every service
that enforces consent (consent answers CheckConsent with it; ingestion, segmentation and the
profile service apply it to what they keep), so they all decide alike.

`MOSAIC_CONSENT_PURPOSES` lists the purposes, each `name` or `name:flag:flag`. Where GDPR
applies every purpose is opt-in (denied until granted), where CCPA/CPRA applies opt-out
(allowed until denied); the flags change that per purpose:

- `sale`: a sale or sharing of data, which the Global Privacy Control signal opts out of;
- `gdpr-allowed`: allowed by default under GDPR too (e.g. processing on legitimate interests);
- `ccpa-denied`: opt-in under CCPA too (e.g. sensitive personal information).

`MOSAIC_CONSENT_JURISDICTION` is the law assumed for a person nobody said anything about, and
`MOSAIC_CONSENT_CATEGORIES` maps Segment consent categories (`C0004=advertising,...`) to
purposes. The three must be equal across the deployment, like MOSAIC_PARTITIONS.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from mosaic.consent.v1 import consent_pb2
from mosaic.events.v1 import consent_changed_pb2
from mosaic.platform.config import ConfigError, Env

DEFAULT_PURPOSES = "analytics,personalisation,marketing,marketing_email,marketing_sms,marketing_push,advertising:sale,sale_sharing:sale"
NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
FLAGS = ("sale", "gdpr-allowed", "ccpa-denied")
JURISDICTIONS = {"gdpr": consent_pb2.JURISDICTION_GDPR, "ccpa": consent_pb2.JURISDICTION_CCPA}
Change = consent_pb2.ConsentChange


@dataclass(frozen=True)
class Purpose:
    name: str
    sale_or_sharing: bool = False
    gdpr_default: bool = False
    ccpa_default: bool = True

    def default(self, jurisdiction: int) -> bool:
        return self.ccpa_default if jurisdiction == consent_pb2.JURISDICTION_CCPA else self.gdpr_default


def parse(spec: str, variable: str = "MOSAIC_CONSENT_PURPOSES") -> dict[str, Purpose]:
    """The purposes of a spec like `analytics,advertising:sale`, in order; ConfigError names the rule."""
    purposes: dict[str, Purpose] = {}
    for item in spec.split(","):
        name, *flags = item.strip().split(":")
        if not NAME.match(name):
            raise ConfigError(
                variable, f"purpose {name!r} must be 1-64 lower-case letters, digits or _, starting with a letter"
            )
        unknown = [f for f in flags if f not in FLAGS]
        if unknown:
            raise ConfigError(variable, f"purpose {name!r}: unknown flag {unknown[0]!r} (flags: {', '.join(FLAGS)})")
        if name in purposes:
            raise ConfigError(variable, f"purpose {name!r} is listed twice")
        purposes[name] = Purpose(name, "sale" in flags, "gdpr-allowed" in flags, "ccpa-denied" not in flags)
    return purposes


def parse_categories(
    spec: str, purposes: Mapping[str, object], variable: str = "MOSAIC_CONSENT_CATEGORIES"
) -> dict[str, str]:
    """`Category=purpose,...` as a mapping; every purpose named must be configured."""
    categories: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        category, sep, purpose = item.partition("=")
        if not sep or not category.strip():
            raise ConfigError(variable, f"{item!r} must be Category=purpose")
        if purpose.strip() not in purposes:
            raise ConfigError(variable, f"{purpose.strip()!r} is not a configured purpose")
        categories[category.strip()] = purpose.strip()
    return categories


def named(change: consent_changed_pb2.ConsentChanged) -> list[str]:
    """Every profile id a consent.changed notice names: whose kept answers it may have changed."""
    names = [*change.profile_ids, change.person_id]
    if change.HasField("decision"):
        names.append(change.decision.profile_id)
    return names


def effective_change(decision: consent_pb2.ConsentDecision) -> int:
    """What a ledger entry does; an entry of the first version says it with `granted` alone."""
    if decision.change:
        return decision.change
    return Change.CONSENT_CHANGE_GRANT if decision.granted else Change.CONSENT_CHANGE_DENY


_REASONS: dict[int, str] = {
    Change.CONSENT_CHANGE_DENY: "denied",
    Change.CONSENT_CHANGE_WITHDRAW: "withdrawn",
    Change.CONSENT_CHANGE_EXPIRE: "expired",
}


def decide(
    purpose: Purpose, latest: consent_pb2.ConsentDecision | None, jurisdiction: int, gpc: bool, now_us: int
) -> consent_pb2.PurposeState:
    """The state of one purpose: GPC first (a live signal outranks the ledger for sale and
    sharing), then the latest ledger entry (a grant past its expires_at is expired), then the
    jurisdiction's default."""
    state = consent_pb2.PurposeState(purpose=purpose.name)
    if latest is not None:
        state.decision.CopyFrom(latest)
    if gpc and purpose.sale_or_sharing:
        state.granted, state.reason = False, "global privacy control"
        return state
    if latest is not None:
        change = effective_change(latest)
        if change == Change.CONSENT_CHANGE_GRANT:
            expired = latest.HasField("expires_at") and latest.expires_at.ToMicroseconds() <= now_us
            state.granted, state.reason = (False, "expired") if expired else (True, "granted")
        else:
            state.granted, state.reason = False, _REASONS[change]
        return state
    state.granted = purpose.default(jurisdiction)
    state.by_default = True
    state.reason = "opt-out default" if state.granted else "opt-in default"
    return state


def person_consent(entries: Iterable[consent_pb2.ConsentDecision]) -> consent_pb2.PersonConsent:
    """A person's consent from its ledger entries, oldest first: the latest entry per purpose
    (without its proof, which stays in the ledger) and the last jurisdiction any entry named."""
    latest: dict[str, consent_pb2.ConsentDecision] = {}
    person = consent_pb2.PersonConsent()
    for entry in entries:
        latest[entry.purpose] = entry
        person.jurisdiction = entry.jurisdiction or person.jurisdiction
    for purpose in sorted(latest):
        decision = person.decisions.add()
        decision.CopyFrom(latest[purpose])
        decision.ClearField("proof")
    return person


@dataclass(frozen=True)
class Policy:
    """The deployment's purposes, default law and Segment categories."""

    purposes: dict[str, Purpose] = field(default_factory=lambda: parse(DEFAULT_PURPOSES))
    jurisdiction: int = consent_pb2.JURISDICTION_GDPR
    categories: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Policy:
        environ = os.environ if environ is None else environ
        env = Env(environ)
        purposes = parse(env.str("MOSAIC_CONSENT_PURPOSES", DEFAULT_PURPOSES))
        return cls(
            purposes,
            # The law assumed for a person whose jurisdiction no caller or decision named:
            # GDPR's opt-in is the safe side.
            JURISDICTIONS[env.choice("MOSAIC_CONSENT_JURISDICTION", "gdpr", tuple(JURISDICTIONS))],
            # Segment consent categories (OneTrust ids such as C0004, or names) and their purposes.
            parse_categories(environ.get("MOSAIC_CONSENT_CATEGORIES", ""), purposes),
        )

    def purpose_of(self, category: str) -> str | None:
        """The purpose a Segment consent category names: mapped, or the purpose's own name
        (case, spaces and dashes aside); None for a category of no purpose."""
        if category in self.categories:
            return self.categories[category]
        name = category.strip().lower().replace(" ", "_").replace("-", "_")
        return name if name in self.purposes else None

    def granted(
        self, purpose: str, person: consent_pb2.PersonConsent | None, now_us: int, gpc: bool = False
    ) -> consent_pb2.PurposeState:
        """The state of a configured purpose for a person known by its recorded consent (None:
        nothing recorded, the deployment's default law decides)."""
        latest = None
        jurisdiction = self.jurisdiction
        if person is not None:
            latest = next((d for d in person.decisions if d.purpose == purpose), None)
            jurisdiction = person.jurisdiction or jurisdiction
        return decide(self.purposes[purpose], latest, jurisdiction, gpc, now_us)
