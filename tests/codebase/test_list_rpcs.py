"""Every List RPC pages: its request has `page_size` and `page_token`, its response
`next_page_token` (AIP-158). A server-streaming List (ListMembers) streams instead."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
from google.protobuf import descriptor

PROTOS = Path(__file__).resolve().parents[2] / "protos"
F = descriptor.FieldDescriptor
STREAMED = {"mosaic.segmentation.v1.SegmentationService.ListMembers"}  # the stream is its own paging


def list_methods() -> list[descriptor.MethodDescriptor]:
    """The List RPCs of every service of protos/ (mosaic/<area>/v1/<name>_service.proto)."""
    methods = []
    for proto in sorted(PROTOS.glob("mosaic/*/v*/*_service.proto")):
        module = importlib.import_module(".".join(proto.relative_to(PROTOS).with_suffix("").parts) + "_pb2")
        for service in module.DESCRIPTOR.services_by_name.values():
            methods += [m for m in service.methods if m.name.startswith("List")]
    return methods


def test_the_list_rpcs_are_found() -> None:
    names = {m.name for m in list_methods()}
    assert {"ListSegments", "ListDestinations", "ListDeliveries", "ListSources", "ListComputedTraits"} <= names


def test_only_list_members_streams_instead_of_paging() -> None:
    assert {m.full_name for m in list_methods() if m.server_streaming} == STREAMED


@pytest.mark.parametrize("method", [m for m in list_methods() if not m.server_streaming], ids=lambda m: m.full_name)
def test_a_list_rpc_has_a_page_size_a_page_token_and_a_next_page_token(method) -> None:
    fields = method.input_type.fields_by_name
    assert fields["page_size"].type == F.TYPE_INT32
    assert fields["page_token"].type == F.TYPE_STRING
    assert method.output_type.fields_by_name["next_page_token"].type == F.TYPE_STRING
