"""Page tokens: opaque, validated, one way to page by offset."""

from __future__ import annotations

import pytest

from cxmesh_server.runtime import paging
from cxmesh_server.runtime.errors import InvalidArgument


def test_offset_pages_walk_forward_and_end() -> None:
    first = paging.offset_page(2, "")
    assert (first.offset, first.size, first.limit) == (0, 2, 3)
    token = first.next_token(fetched=3)
    second = paging.offset_page(2, token)
    assert second.offset == 2
    assert second.next_token(fetched=2) == ""


@pytest.mark.parametrize(
    "token", ["garbage", paging.encode_token([-5]), paging.encode_token(["x"])]
)
def test_forged_tokens_are_invalid_arguments(token: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        paging.offset_page(10, token)
    assert caught.value.violations[0].field == "page_token"


def test_page_sizes_have_a_default_and_a_cap() -> None:
    assert paging.page_size(0) == 50
    assert paging.page_size(5000) == 1000
    with pytest.raises(InvalidArgument):
        paging.page_size(-1)


def test_update_masks_name_updatable_fields_or_star() -> None:
    from google.protobuf.field_mask_pb2 import FieldMask

    from cxmesh_server.runtime.masks import update_paths

    updatable = {"display_name", "description"}
    assert update_paths(FieldMask(paths=["*"]), updatable) == updatable
    assert update_paths(FieldMask(paths=["display_name"]), updatable) == {"display_name"}
    for bad in ([], ["etag"]):
        with pytest.raises(InvalidArgument) as caught:
            update_paths(FieldMask(paths=bad), updatable)
        assert caught.value.violations[0].field == "update_mask"
