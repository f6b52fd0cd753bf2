"""``normalise_path``: one canonical form per path, and refusal of what could smuggle one."""

from __future__ import annotations

import pytest

from gateway.errors import BadRequest
from gateway.paths import normalise_path


@pytest.mark.parametrize("path", ["/", "/a", "/v1/users/42", "/a/b/", "/a.b/c..d", "/a-b_c~d"])
def test_clean_path_is_returned_unchanged(path: str) -> None:
    assert normalise_path(path) == path


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/a/../b", "/b"),
        ("/a/b/../../c", "/c"),
        ("/a/./b", "/a/b"),
        ("/./a", "/a"),
        ("/a/b/..", "/a/"),
        ("/a/.", "/a/"),
        ("/a/..", "/"),
    ],
)
def test_dot_segments_are_removed(raw: str, expected: str) -> None:
    assert normalise_path(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/../../etc", "/etc"),
        ("/..", "/"),
        ("/a/../../../b", "/b"),
        ("/%2e%2e/%2e%2e/etc/passwd", "/etc/passwd"),
    ],
)
def test_dot_dot_never_climbs_above_the_root(raw: str, expected: str) -> None:
    assert normalise_path(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/a/%2e%2e/b", "/b"),
        ("/a/%2E%2e/b", "/b"),
        ("/a/%2E%2E/b", "/b"),
        ("/a/.%2e/b", "/b"),
        ("/a/%2e./b", "/b"),
        ("/a/%2e/b", "/a/b"),
        ("/a/b/%2e%2e", "/a/"),
    ],
)
def test_encoded_dots_are_decoded_then_removed_as_dot_segments(raw: str, expected: str) -> None:
    assert normalise_path(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("//a///b", "/a/b"), ("//", "/"), ("/a//", "/a/"), ("///a", "/a")],
)
def test_runs_of_slashes_collapse(raw: str, expected: str) -> None:
    assert normalise_path(raw) == expected


def test_trailing_slash_is_kept_through_normalisation() -> None:
    assert normalise_path("/a/./b/") == "/a/b/"
    assert normalise_path("/a/%62/") == "/a/b/"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/v1/%75sers", "/v1/users"),
        ("/%41%5a%61%7a%30%39", "/AZaz09"),
        ("/a%2Db%5Fc%7Ed", "/a-b_c~d"),
        ("/a%7e", "/a~"),
    ],
)
def test_escapes_of_unreserved_characters_are_decoded(raw: str, expected: str) -> None:
    assert normalise_path(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/a%20b", "/a%20b"),
        ("/a%2a", "/a%2A"),
        ("/a%3f", "/a%3F"),
        ("/caf%c3%a9", "/caf%C3%A9"),
        ("/a%25", "/a%25"),
        ("/a%252e%252e/b", "/a%252e%252e/b"),
    ],
)
def test_other_escapes_are_kept_with_upper_case_hex(raw: str, expected: str) -> None:
    assert normalise_path(raw) == expected


def test_normalising_is_idempotent() -> None:
    for raw in ["/a/%2e%2e/b/", "//x/%7euser/%2a", "/a/b/../c/./%20"]:
        once = normalise_path(raw)
        assert normalise_path(once) == once


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("/a/%2f/b", "encoded '/'"),
        ("/a/%2F", "encoded '/'"),
        ("/a%5cb", "encoded '\\'"),
        ("/a%5Cb", "encoded '\\'"),
        ("/a%00", "encoded NUL"),
        ("/%2e%2e%2fetc", "encoded '/'"),
    ],
)
def test_encoded_separator_or_nul_is_refused(raw: str, why: str) -> None:
    with pytest.raises(BadRequest) as caught:
        normalise_path(raw)
    assert why in caught.value.detail
    assert caught.value.status == 400


@pytest.mark.parametrize("raw", ["/a\\b", "/a\\..\\b", "\\"])
def test_raw_backslash_is_refused(raw: str) -> None:
    with pytest.raises(BadRequest):
        normalise_path(raw)


@pytest.mark.parametrize("raw", ["/a%", "/a%2", "/a%zz", "/a%2g", "/%g2/b", "/a%%41"])
def test_malformed_escape_is_refused(raw: str) -> None:
    with pytest.raises(BadRequest) as caught:
        normalise_path(raw)
    assert "malformed" in caught.value.detail


@pytest.mark.parametrize("raw", ["", "a/b", "%2F", "*", "http://h/a"])
def test_path_not_starting_with_a_slash_is_refused(raw: str) -> None:
    with pytest.raises(BadRequest) as caught:
        normalise_path(raw)
    assert "absolute path" in caught.value.detail


@pytest.mark.parametrize("path", ["/a\x00b", "/a\nb", "/a\tb", "/a\x7fb", "/a%2e/\x01"])
def test_raw_control_characters_are_refused(path: str) -> None:
    with pytest.raises(BadRequest):
        normalise_path(path)
