"""Rows of a list page become dicts off the event loop, with json parsed (store/rows.py)."""

from __future__ import annotations

from streamorch.store import rows


def test_rows_become_dicts_with_their_json_parsed() -> None:
    names = ["name", "labels", "details", "n"]
    page = [("a", b'{"zone": "x"}', None, 1), ("b", b"[]", b'"text"', 2)]

    assert rows.dicts(names, [1, 2], page) == [
        {"name": "a", "labels": {"zone": "x"}, "details": None, "n": 1},
        {"name": "b", "labels": [], "details": "text", "n": 2},
    ]


def test_rows_without_json_are_zipped_as_they_are() -> None:
    assert rows.dicts(["k", "v"], [], [("a", 1)]) == [{"k": "a", "v": 1}]
