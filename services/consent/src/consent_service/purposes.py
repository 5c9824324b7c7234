"""The deployment's purposes, their defaults by jurisdiction, and how a purpose's state is decided.

`MOSAIC_CONSENT_PURPOSES` lists the purposes, each `name` or `name:flag:flag`. Where GDPR
applies every purpose is opt-in (denied until granted), where CCPA/CPRA applies opt-out
(allowed until denied); the flags change that per purpose:

- `sale`: a sale or sharing of data, which the Global Privacy Control signal opts out of;
- `gdpr-allowed`: allowed by default under GDPR too (e.g. processing on legitimate interests);
- `ccpa-denied`: opt-in under CCPA too (e.g. sensitive personal information).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mosaic.consent.v1 import consent_pb2, consent_service_pb2
from mosaic.platform.config import ConfigError

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

    def to_proto(self) -> consent_service_pb2.Purpose:
        return consent_service_pb2.Purpose(
            name=self.name,
            sale_or_sharing=self.sale_or_sharing,
            gdpr_default=self.gdpr_default,
            ccpa_default=self.ccpa_default,
        )


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


def effective_change(decision: consent_pb2.ConsentDecision) -> consent_pb2.ConsentChange:
    """What a ledger entry does; an entry of the first version says it with `granted` alone."""
    if decision.change:
        return decision.change
    return Change.CONSENT_CHANGE_GRANT if decision.granted else Change.CONSENT_CHANGE_DENY


_REASONS = {
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
