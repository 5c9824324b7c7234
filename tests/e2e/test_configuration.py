"""A service process started with bad configuration stops at once, naming the variable."""

import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    ("service", "environ", "message"),
    [
        ("delivery", {"MOSAIC_AUTH": "off"}, "configuration error: MOSAIC_CONSENT_ADDRESS: is required and not set"),
        (
            "consent",
            {},
            "configuration error: MOSAIC_AUTH: is required: set MOSAIC_AUTH_JWKS (bearer tokens) and/or "
            "MOSAIC_TLS_CLIENT_CA (mutual TLS), or MOSAIC_AUTH=off for a trial without it",
        ),
        (
            "segmentation",
            {"MOSAIC_AUTH": "off", "MOSAIC_TLS_CLIENT_CA": "/nonexistent/ca.pem"},
            "configuration error: MOSAIC_TLS_CLIENT_CA: must name a readable file, got '/nonexistent/ca.pem'",
        ),
        (
            "profile",
            {"MOSAIC_STORE": "mongo"},
            "configuration error: MOSAIC_STORE: must be one of embedded, cassandra, got 'mongo'",
        ),
        (
            "identity",
            {"MOSAIC_PARTITIONS": "many"},
            "configuration error: MOSAIC_PARTITIONS: must be a whole number, got 'many'",
        ),
    ],
)
def test_a_service_with_a_bad_variable_exits_2_naming_it(service, environ, message):
    result = subprocess.run(
        [sys.executable, "-m", f"{service}_service"],
        env={"PATH": "/usr/bin:/bin", **environ},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == message
