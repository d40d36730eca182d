"""Dataset and table references on the command line: NAME, NAME@3, and NAME@latest for
datasets, with a one-line error naming the accepted forms."""

from __future__ import annotations

import pytest

from underlay.cli.common import parse_ref
from underlay.errors import InvalidInput


def test_references_name_a_version_or_the_latest() -> None:
    assert parse_ref("sales", "table") == ("sales", None)
    assert parse_ref("sales@3", "table") == ("sales", 3)
    assert parse_ref("images@latest", "dataset", latest=True) == ("images", None)


@pytest.mark.parametrize("ref", ["@3", "sales@x", "sales@-1", "sales@latest"])
def test_a_bad_table_reference_names_the_forms(ref: str) -> None:
    with pytest.raises(InvalidInput, match=r"is not a table reference: write NAME or NAME@3$"):
        parse_ref(ref, "table")


def test_a_bad_dataset_reference_names_the_forms() -> None:
    with pytest.raises(InvalidInput, match=r"write NAME, NAME@3 or NAME@latest$"):
        parse_ref("images@new", "dataset", latest=True)
