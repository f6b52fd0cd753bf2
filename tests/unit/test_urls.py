"""``UrlTemplate``: route parameters land in upstream URLs re-encoded, never as syntax."""

from __future__ import annotations

import pytest

from gateway.upstream.urls import UrlTemplate, placeholders


def render(text: str, tails: frozenset[str] = frozenset(), **params: str) -> str:
    return UrlTemplate.compile(text, tails).render(params)


def test_value_cannot_add_a_query_parameter() -> None:
    assert (
        render("/orders?user={id}&limit=5", id="1&admin=true")
        == "/orders?user=1%26admin%3Dtrue&limit=5"
    )


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        ("a/b", "a%2Fb"),
        ("a?b", "a%3Fb"),
        ("a#b", "a%23b"),
        ("a+b", "a%2Bb"),
        ("a b", "a%20b"),
        ("100%", "100%25"),
        ("é", "%C3%A9"),
    ],
)
def test_reserved_characters_in_a_param_are_encoded(value: str, encoded: str) -> None:
    assert render("/users/{id}", id=value) == f"/users/{encoded}"


def test_slash_in_a_normal_param_cannot_add_a_path_segment() -> None:
    assert render("/users/{id}/profile", id="a/b") == "/users/a%2Fb/profile"


def test_tail_param_keeps_its_slashes() -> None:
    tails = frozenset({"rest"})
    assert render("/orders/{rest}", tails, rest="a/b/c") == "/orders/a/b/c"


def test_tail_param_still_encodes_everything_but_slash() -> None:
    tails = frozenset({"rest"})
    assert render("/o/{rest}", tails, rest="a b/c?d&e") == "/o/a%20b/c%3Fd%26e"


def test_only_the_tail_keeps_slashes_when_both_are_used() -> None:
    tails = frozenset({"rest"})
    assert render("/b/{bucket}/{rest}", tails, bucket="x/y", rest="p/q") == "/b/x%2Fy/p/q"


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        ("a%20b", "a%20b"),
        ("%C3%A9", "%C3%A9"),
        ("caf%c3%a9", "caf%C3%A9"),
        ("%2A", "%2A"),
    ],
)
def test_escaped_input_is_decoded_once_then_encoded_once(value: str, encoded: str) -> None:
    assert render("/q/{v}", v=value) == f"/q/{encoded}"


def test_encoded_space_stays_one_encoded_space() -> None:
    rendered = render("/search?q={term}", term="a%20b")
    assert rendered == "/search?q=a%20b"
    assert "%2520" not in rendered


def test_double_encoded_input_stays_encoded_and_is_not_decoded_twice() -> None:
    assert render("/q/{v}", v="%252e%252e") == "/q/%252e%252e"


def test_unreserved_characters_are_left_alone() -> None:
    assert render("/q/{v}", v="Az09-._~") == "/q/Az09-._~"


def test_same_placeholder_twice_is_rendered_twice() -> None:
    assert render("/u/{id}?again={id}", id="7") == "/u/7?again=7"


def test_adjacent_placeholders_render_in_order() -> None:
    assert render("{a}{b}", a="1", b="2") == "12"


def test_static_template_renders_as_written() -> None:
    template = UrlTemplate.compile("/static/path?x=1")
    assert template.is_static
    assert template.render({}) == "/static/path?x=1"
    assert template.render({"x": "ignored"}) == "/static/path?x=1"


def test_template_with_placeholders_is_not_static() -> None:
    template = UrlTemplate.compile("/u/{id}")
    assert not template.is_static
    assert template.names == ("id",)
    assert template.pieces == ("/u/", "")


def test_placeholders_lists_names_in_order_with_repeats() -> None:
    assert placeholders("/a/{x}/{y}?q={x}") == ["x", "y", "x"]
    assert placeholders("/no/params") == []


@pytest.mark.parametrize("text", ["/a/{1x}", "/a/{}", "/a/{x-y}", "/a/{x:path}", "/a/{ x }"])
def test_placeholders_refuses_bad_names(text: str) -> None:
    with pytest.raises(ValueError, match="bad placeholder"):
        placeholders(text)


@pytest.mark.parametrize("text", ["/a/{x", "/a/x}", "/a/{{x}}", "/a}/{x}", "{"])
def test_placeholders_refuses_unbalanced_braces(text: str) -> None:
    with pytest.raises(ValueError, match="unbalanced braces"):
        placeholders(text)


def test_compile_refuses_what_placeholders_refuses() -> None:
    with pytest.raises(ValueError):
        UrlTemplate.compile("/a/{x")
