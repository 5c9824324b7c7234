"""PII minimisation: a caller with `profiles:read` but not `profiles:read_pii` gets profiles
whose identifiers and personal traits (the deployment's `MOSAIC_PII_TRAITS`) are masked, in
every read: latest, as of a time, history, diffs, scans and the answer to a write. (What the
person's consent withholds, whoever calls, is withheld before: server.py, purposes.py.)"""

from __future__ import annotations

from collections.abc import Iterable

from google.protobuf import struct_pb2

from mosaic.platform.auth import PII_SCOPE, current_caller
from mosaic.profile.v1 import profile_pb2, profile_service_pb2_grpc

REDACTED = "[redacted]"


def _redacted() -> struct_pb2.Value:
    return struct_pb2.Value(string_value=REDACTED)


def mask_profile(profile: profile_pb2.Profile, pii: frozenset[str]) -> None:
    for name, trait in profile.traits.items():
        if name.lower() in pii and not trait.withheld:
            trait.value.CopyFrom(_redacted())
    identities = list(profile.identities.values())
    profile.ClearField("identities")
    for index, identity in enumerate(identities):
        masked = profile.identities[f"{identity.type}:{REDACTED}{index}"]
        masked.CopyFrom(identity)
        masked.value = REDACTED


def mask_changes(changes: Iterable[profile_pb2.FieldChange], pii: frozenset[str]) -> None:
    for change in changes:
        area, _, name = change.path.partition(".")
        if area == "identities" or (area == "traits" and name.lower() in pii):
            for value in (change.old_value, change.new_value):
                if value.WhichOneof("kind") is not None:
                    value.CopyFrom(_redacted())


class MaskingProfileServicer(profile_service_pb2_grpc.ProfileServiceServicer):
    """The profile API around `inner`, masked for callers that may not see personal data."""

    def __init__(
        self,
        inner: profile_service_pb2_grpc.ProfileServiceServicer,
        pii_traits: Iterable[str],
    ) -> None:
        self.inner = inner
        self.pii = frozenset(name.lower() for name in pii_traits)

    def _masks(self) -> bool:
        return not current_caller().may(PII_SCOPE)

    def _profile(self, answer):
        if self._masks():
            mask_profile(answer.profile, self.pii)
        return answer

    async def GetProfile(self, request, context):
        return self._profile(await self.inner.GetProfile(request, context))

    async def GetProfileAt(self, request, context):
        return self._profile(await self.inner.GetProfileAt(request, context))

    async def UpsertTraits(self, request, context):
        return self._profile(await self.inner.UpsertTraits(request, context))

    async def BatchGetProfiles(self, request, context):
        answer = await self.inner.BatchGetProfiles(request, context)
        masks = self._masks()
        if masks:
            for profile in answer.profiles:
                mask_profile(profile, self.pii)
        return answer

    async def ListSnapshots(self, request, context):
        answer = await self.inner.ListSnapshots(request, context)
        if self._masks():
            for snapshot in answer.snapshots:
                mask_changes(snapshot.changes, self.pii)
        return answer

    async def DiffSnapshots(self, request, context):
        answer = await self.inner.DiffSnapshots(request, context)
        if self._masks():
            mask_changes(answer.changes, self.pii)
        return answer

    async def ScanProfiles(self, request, context):
        masks = self._masks()
        async for answer in self.inner.ScanProfiles(request, context):
            if masks:
                for profile in answer.profiles or [answer.profile]:
                    mask_profile(profile, self.pii)
            yield answer

    async def CreateComputedTrait(self, request, context):
        return await self.inner.CreateComputedTrait(request, context)

    async def ListComputedTraits(self, request, context):
        return await self.inner.ListComputedTraits(request, context)

    async def DefineEventSeries(self, request, context):
        return await self.inner.DefineEventSeries(request, context)

    async def DeleteComputedTrait(self, request, context):
        return await self.inner.DeleteComputedTrait(request, context)
