"""The rebuild's reading of ScanProfiles answers, in pages and in the one-profile form of a
profile service from before pages (a rolling upgrade). Pure logic: the stub is a stand-in."""

from mosaic.platform.config import SecuritySettings
from mosaic.platform.topics import partition_of
from mosaic.profile.v1 import profile_pb2
from mosaic.profile.v1 import profile_service_pb2 as pb
from segmentation_service.columns import ColumnarView
from segmentation_service.profiles import ProfileReader

IDS = [f"p-{i}" for i in range(40)]


class Answers:
    def __init__(self, responses):
        self.responses = responses
        self.requests = []

    def ScanProfiles(self, request):  # noqa: N802 - the gRPC method's name
        self.requests.append(request)

        async def stream():
            for response in self.responses:
                yield response

        return stream()


async def rebuilt(responses, owned):
    reader = ProfileReader("127.0.0.1:1", SecuritySettings())
    reader.stub = Answers(responses)
    view = ColumnarView(4)
    count = await reader.rebuild(view, frozenset(owned), merged=set())
    await reader.close()
    return view, count, reader.stub.requests[0]


async def test_pages_are_loaded_whole_and_the_request_names_the_partitions_owned():
    owned = {1, 3}
    mine = [i for i in IDS if partition_of(i, 4) in owned]
    pages = [
        pb.ScanProfilesResponse(profiles=[profile_pb2.Profile(profile_id=i) for i in mine[k : k + 5]])
        for k in range(0, len(mine), 5)
    ]
    view, count, request = await rebuilt(pages, owned)
    assert count == len(mine) and sorted(view.rows) == sorted(mine)
    assert (request.page_size, request.partition_count, list(request.partitions)) == (500, 4, [1, 3])


async def test_an_older_profile_service_answering_one_profile_a_message_is_kept_to_the_partitions_owned():
    answers = [pb.ScanProfilesResponse(profile=profile_pb2.Profile(profile_id=i)) for i in IDS]
    view, count, _ = await rebuilt(answers, {0, 2})
    expected = sorted(i for i in IDS if partition_of(i, 4) in {0, 2})
    assert count == len(expected) and sorted(view.rows) == expected
