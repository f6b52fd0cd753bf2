"""RFC 9110 section 13 comparisons, case by case."""

from __future__ import annotations

import pytest

from gateway.policies.conditional_spec import (
    match,
    none_match,
    not_modified_since,
    parse_tags,
    strong_etag,
)


def test_parse_tags() -> None:
    assert parse_tags('W/"a", "b"') == [(True, '"a"'), (False, '"b"')]
    assert parse_tags(" * ") is None
    assert parse_tags('"a" "b"') == []  # missing comma: malformed
    assert parse_tags("a") == []


@pytest.mark.parametrize(
    ("header", "current", "expected"),
    [
        ('"a"', '"a"', True),
        ('W/"a"', '"a"', True),
        ('"a"', 'W/"a"', True),
        ('"b", "a"', '"a"', True),
        ('"b"', '"a"', False),
        ("*", '"a"', True),
        ('"a"', None, False),
        ("garbage", '"a"', False),
    ],
)
def test_none_match_is_weak(header: str, current: str | None, expected: bool) -> None:
    assert none_match(header, current) is expected


@pytest.mark.parametrize(
    ("header", "current", "expected"),
    [
        ('"a"', '"a"', True),
        ('W/"a"', '"a"', False),
        ('"a"', 'W/"a"', False),
        ('"x", "a"', '"a"', True),
        ("*", '"a"', True),
        ("*", None, False),
    ],
)
def test_match_is_strong(header: str, current: str | None, expected: bool) -> None:
    assert match(header, current) is expected


def test_not_modified_since() -> None:
    modified = "Wed, 21 Oct 2026 07:28:00 GMT"
    assert not_modified_since(modified, modified)
    assert not_modified_since("Thu, 22 Oct 2026 00:00:00 GMT", modified)
    assert not not_modified_since("Tue, 20 Oct 2026 00:00:00 GMT", modified)
    assert not not_modified_since("yesterday", modified)
    assert not not_modified_since(modified, None)


def test_strong_etag_depends_on_the_bytes() -> None:
    assert strong_etag(b"a") == strong_etag(b"a")
    assert strong_etag(b"a") != strong_etag(b"b")
    assert strong_etag(b"a").startswith('"')
