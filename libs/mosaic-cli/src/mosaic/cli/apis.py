"""Every public gRPC service of the mesh, by descriptor: for tools that walk the API."""

from __future__ import annotations

from typing import Any

from mosaic.archive.v1 import event_archive_service_pb2
from mosaic.audit.v1 import audit_service_pb2
from mosaic.consent.v1 import consent_service_pb2, privacy_service_pb2
from mosaic.delivery.v1 import delivery_service_pb2
from mosaic.identity.v1 import identity_service_pb2
from mosaic.ingestion.v1 import ingestion_service_pb2
from mosaic.platform.auth import PII_SCOPE, declared_access
from mosaic.profile.v1 import profile_service_pb2
from mosaic.retention.v1 import retention_service_pb2
from mosaic.segmentation.v1 import segmentation_service_pb2

MODULES = (
    ingestion_service_pb2,
    identity_service_pb2,
    profile_service_pb2,
    event_archive_service_pb2,
    segmentation_service_pb2,
    consent_service_pb2,
    privacy_service_pb2,
    delivery_service_pb2,
    audit_service_pb2,
    retention_service_pb2,
)


def services() -> list[Any]:
    return [service for module in MODULES for service in module.DESCRIPTOR.services_by_name.values()]


def scopes() -> list[str]:
    """Every scope there is: those the methods declare, and the one that unmasks personal data."""
    declared = {access.scope for access in declared_access(services()).values() if access is not None}
    return sorted(declared | {PII_SCOPE})
