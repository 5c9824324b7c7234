"""The identity service's gRPC API: identifiers looked up and resolved, profiles merged and split, the rules."""

from __future__ import annotations

import asyncio

from identity_service import admin, dryrun, explain, identifiers
from identity_service.outbox import Outbox
from identity_service.resolver import Resolver
from identity_service.rules import Rules, RulesCache, with_defaults
from identity_service.sightings import Sightings
from mosaic.identity.v1 import identity_pb2, identity_service_pb2_grpc
from mosaic.identity.v1 import identity_service_pb2 as pb
from mosaic.platform import limits
from mosaic.platform.errors import FailedPrecondition, InvalidArgument, NotFound

# Bounds of the work one call may ask for.
MAX_RESOLVE = 1000
MAX_MERGE = 100
MAX_REASON = 1000
MAX_DRY_RUN_LINKS = dryrun.DEFAULT_MAX_LINKS


class IdentityServicer(identity_service_pb2_grpc.IdentityServiceServicer):
    def __init__(
        self, resolver: Resolver, rules: RulesCache, sightings: Sightings, outbox: Outbox, phone_region: str
    ) -> None:
        self.resolver = resolver
        self.rules = rules
        self.sightings = sightings
        self.outbox = outbox
        self.phone_region = phone_region

    async def Lookup(self, request, context):
        identifier = self._checked(request.identifier, "identifier")
        profile_id = await self.resolver.lookup(identifiers.key(identifier))
        if profile_id is None:
            raise NotFound("identifier", f"{identifier.type}:{identifier.value}")
        return pb.LookupResponse(profile_id=profile_id)

    async def Resolve(self, request, context):
        if len(request.identifiers) > MAX_RESOLVE:
            raise InvalidArgument(
                "identifiers", f"must hold at most {MAX_RESOLVE} identifiers, holds {len(request.identifiers)}"
            )
        checked = [self._checked(raw, f"identifiers[{i}]") for i, raw in enumerate(request.identifiers)]
        found = await asyncio.gather(*(self.resolver.lookup(identifiers.key(i)) for i in checked))
        return pb.ResolveResponse(
            matches=[
                pb.IdentifierMatch(identifier=identifier, profile_id=profile_id)
                for identifier, profile_id in zip(checked, found, strict=False)
                if profile_id
            ]
        )

    async def GetIdentities(self, request, context):
        limits.check_required_text("profile_id", request.profile_id)
        root = await explain.survivor_of(self.resolver, request.profile_id)
        await self.sightings.flush()  # this replica's latest sightings (others' within a flush interval)
        return pb.GetIdentitiesResponse(profile_id=root, identities=await explain.identities(self.resolver, root))

    async def GetMergeHistory(self, request, context):
        limits.check_required_text("profile_id", request.profile_id)
        await explain.survivor_of(self.resolver, request.profile_id)
        return pb.GetMergeHistoryResponse(merges=await explain.history(self.resolver, request.profile_id))

    async def ExplainProfile(self, request, context):
        limits.check_required_text("profile_id", request.profile_id)
        root = await explain.survivor_of(self.resolver, request.profile_id)
        return await explain.explain(self.resolver, root)

    async def SplitProfile(self, request, context):
        limits.check_required_text("merge_id", request.merge_id)
        limits.check_text("reason", request.reason, MAX_REASON)
        split = await admin.split(self.resolver, request.merge_id, request.reason)
        await self.outbox.drain()
        return pb.SplitProfileResponse(
            split_id=split.split_id,
            survivor_profile_id=split.survivor_profile_id,
            restored_profile_ids=split.restored_profile_ids,
            moved_identifiers=split.moved_identifiers,
        )

    async def MergeProfiles(self, request, context):
        if len(request.profile_ids) > MAX_MERGE:
            raise InvalidArgument(
                "profile_ids", f"must name at most {MAX_MERGE} profiles, names {len(request.profile_ids)}"
            )
        for index, profile_id in enumerate(request.profile_ids):
            limits.check_required_text(f"profile_ids[{index}]", profile_id)
        limits.check_text("reason", request.reason, MAX_REASON)
        limits.check_text("request_id", request.request_id)
        survivor, records = await admin.merge_profiles(
            self.resolver, list(request.profile_ids), await self.rules.get(), request.reason, request.request_id
        )
        await self.outbox.drain()
        return pb.MergeProfilesResponse(survivor_profile_id=survivor, merges=records)

    async def DryRunRules(self, request, context):
        if not 0 <= request.max_links <= MAX_DRY_RUN_LINKS:
            raise InvalidArgument("max_links", f"must be between 0 and {MAX_DRY_RUN_LINKS:,}")
        await self.sightings.flush()  # the links this replica still holds
        return await dryrun.dry_run(self.resolver, Rules.from_proto(request.rules), request.max_links)

    async def GetRules(self, request, context):
        stored = await self.resolver.store.load_rules() or identity_pb2.IdentityRules()
        return pb.GetRulesResponse(rules=with_defaults(stored))

    async def UpdateRules(self, request, context):
        Rules.from_proto(request.rules)  # names the field of a bad rule before anything is stored
        stored = await self.resolver.store.load_rules()
        version = stored.version if stored else 0
        if request.rules.version != version:
            raise FailedPrecondition(
                "rules", f"version {request.rules.version} is not the version in force ({version})"
            )
        new = identity_pb2.IdentityRules()
        new.CopyFrom(request.rules)
        new.version = version + 1
        if not await self.resolver.store.save_rules(new, version):
            raise FailedPrecondition("rules", "were changed meanwhile; read them again")
        self.rules.invalidate()
        return pb.UpdateRulesResponse(rules=with_defaults(new))

    def _checked(self, identifier: identity_pb2.Identifier, field: str) -> identity_pb2.Identifier:
        limits.check_required_text(f"{field}.type", identifier.type, limits.MAX_TYPE_LENGTH)
        limits.check_text(f"{field}.value", identifier.value)
        value = identifiers.normalise(identifier.type, identifier.value, self.phone_region)
        if not value:
            raise InvalidArgument(f"{field}.value", f"is not a valid {identifier.type}")
        return identity_pb2.Identifier(type=identifier.type, value=value)
