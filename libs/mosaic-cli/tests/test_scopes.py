"""Every RPC of every service declares the scope a caller needs (and the interceptor refuses
a method that declares none, so a missing scope would lock callers out rather than let them in)."""

from __future__ import annotations

import re

from mosaic.cli import apis
from mosaic.platform.auth import declared_access

SCOPE = re.compile(r"^[a-z]+:[a-z_]+$")


def test_every_rpc_in_the_descriptors_declares_a_scope() -> None:
    access = declared_access(apis.services())
    assert len(access) > 40  # the walk really saw the services
    missing = sorted(method for method, declared in access.items() if declared is None)
    assert missing == [], f"RPCs without a scope (add `option (mosaic.auth.v1.access)`): {missing}"


def test_scopes_are_area_colon_action() -> None:
    assert all(SCOPE.match(scope) for scope in apis.scopes()), apis.scopes()


def test_reads_of_personal_data_are_audited() -> None:
    access = declared_access(apis.services())
    for method in (
        "/mosaic.profile.v1.ProfileService/GetProfile",
        "/mosaic.identity.v1.IdentityService/GetIdentities",
        "/mosaic.identity.v1.IdentityService/UpdateRules",
        "/mosaic.consent.v1.ConsentService/SetConsent",
    ):
        assert (declared := access[method]) is not None and declared.audited, method
