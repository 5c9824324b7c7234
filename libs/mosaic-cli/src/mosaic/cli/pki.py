"""Credentials for a local mesh: a CA, a certificate per service, a JWT signing key with its
JWKS, and bearer tokens, so `mosaic run` serves with TLS and authentication on, as production
does. Written once under `.local/pki/` (git-ignored) and reused; never for production, where
the certificates come from the deployment's CA and the tokens from its identity provider.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import uuid
from dataclasses import dataclass
from pathlib import Path

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SERVICES = ("ingestion", "identity", "profile", "segmentation", "consent", "delivery")
TOKEN_DAYS = 30
# What each service may do when it calls another (delivery asks consent at send time).
SERVICE_SCOPES = {
    "delivery": [
        "consent:read",
        "profiles:read",
        "profiles:read_pii",
        # outcomes and engagement fed back: its source, the events, the
        # person's identifiers, an unsubscribe's withdrawal
        "sources:read",
        "sources:write",
        "events:write",
        "identity:read_pii",
        "consent:write",
        "segments:read",  # a campaign's members (ListMembers), its segment checked at creation
    ],
    "segmentation": [
        "profiles:read",
        "profiles:read_pii",
        "profiles:series",  # the event series its segments read (DefineEventSeries)
        "segments:read",  # peers' Estimate
    ],
    "consent": ["identity:read"],  # an export or erasure by identifier finds the person
    "ingestion": ["identity:read_pii"],  # the ids of a person whose consent changed
}


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Mosaic local"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    path.chmod(0o600)


def _certificate(
    subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name, issuer_key, *, ca: bool = False, days: int = 365
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.DNSName(subject),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1")),
                ]
            ),
            critical=False,
        ).add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


@dataclass(frozen=True)
class Pki:
    """Where the local credentials are."""

    root: Path

    @property
    def ca(self) -> Path:
        return self.root / "ca.pem"

    @property
    def jwks(self) -> Path:
        return self.root / "jwks.json"

    def cert(self, name: str) -> Path:
        return self.root / f"{name}.pem"

    def key(self, name: str) -> Path:
        return self.root / f"{name}.key"

    def token(self, name: str) -> Path:
        return self.root / "tokens" / f"{name}.token"

    def service_env(self, service: str) -> dict[str, str]:
        """The variables of one service of the mesh: TLS, token checks, its own token."""
        return {
            "MOSAIC_AUTH": "required",
            "MOSAIC_AUTH_JWKS": str(self.jwks.resolve()),
            "MOSAIC_TLS_CERT": str(self.cert(service).resolve()),
            "MOSAIC_TLS_KEY": str(self.key(service).resolve()),
            "MOSAIC_TLS_CA": str(self.ca.resolve()),
            "MOSAIC_AUTH_TOKEN_FILE": str(self.token(service).resolve()),
        }

    def issue(self, name: str, scopes: list[str], days: int = TOKEN_DAYS, *, expired: bool = False) -> str:
        """A bearer token for `name` with `scopes`, signed with the local key."""
        key = serialization.load_pem_private_key(self.key("jwt-signing").read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)  # made by this module, for ES256
        kid = json.loads(self.jwks.read_text())["keys"][0]["kid"]
        now = datetime.datetime.now(datetime.timezone.utc)
        expires = now - datetime.timedelta(hours=1) if expired else now + datetime.timedelta(days=days)
        claims = {"sub": name, "aud": "mosaic", "iat": now, "exp": expires, "scope": " ".join(scopes)}
        return jwt.encode(claims, key, algorithm="ES256", headers={"kid": kid})


def ensure(root: Path, admin_scopes: list[str]) -> Pki:
    """The local credentials under `root`, made on first use; tokens are issued anew each time
    (they expire), certificates and keys are kept."""
    pki = Pki(root)
    (root / "tokens").mkdir(parents=True, exist_ok=True)
    if not pki.ca.exists():
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = _name("Mosaic local CA")
        ca_cert = _certificate("Mosaic local CA", ca_key, ca_name, ca_key, ca=True, days=3650)
        for service in (*SERVICES, "cli"):
            key = ec.generate_private_key(ec.SECP256R1())
            _write_key(pki.key(service), key)
            pki.cert(service).write_bytes(
                _certificate(service, key, ca_name, ca_key).public_bytes(serialization.Encoding.PEM)
            )
        signing = ec.generate_private_key(ec.SECP256R1())
        _write_key(pki.key("jwt-signing"), signing)
        public = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(signing.public_key()))
        pki.jwks.write_text(
            json.dumps({"keys": [{**public, "kid": uuid.uuid4().hex[:16], "use": "sig", "alg": "ES256"}]})
        )
        pki.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))  # last: its presence means complete
    for service in SERVICES:
        pki.token(service).write_text(pki.issue(service, SERVICE_SCOPES.get(service, [])))
    pki.token("admin").write_text(pki.issue("local-admin", admin_scopes))
    pki.token("reader").write_text(pki.issue("local-reader", ["profiles:read", "identity:read"]))
    return pki
