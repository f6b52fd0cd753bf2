"""``compile_template`` and ``Router``: precedence, binding, 404/405."""

from __future__ import annotations

import contextlib
import random

import pytest

from gateway.errors import MethodNotAllowed, NotFound
from gateway.routing import Router, compile_template


def router_of(*routes: tuple[str, list[str], str]) -> Router[str]:
    router: Router[str] = Router()
    for path, methods, value in routes:
        router.add(compile_template(path), methods, value)
    return router


# -- compile_template ---------------------------------------------------------------------


def test_static_template_has_no_params_and_its_own_shape() -> None:
    template = compile_template("/v1/users")
    assert template.is_static
    assert template.params == ()
    assert template.tail is None
    assert template.shape == "/v1/users"


def test_template_records_params_in_order_and_where_they_sit() -> None:
    template = compile_template("/v1/{org}/users/{id}")
    assert not template.is_static
    assert template.params == ("org", "id")
    assert template.segments == ("v1", "{org}", "users", "{id}")
    assert template.params_at == (None, "org", None, "id")
    assert template.positions == (1, 3)
    assert template.shape == "/v1/{}/users/{}"


def test_tail_template_records_the_tail_apart_from_the_segments() -> None:
    template = compile_template("/files/{rest:path}")
    assert template.tail == "rest"
    assert template.params == ("rest",)
    assert template.segments == ("files",)
    assert template.positions == ()
    assert template.shape == "/files/{*}"


def test_shapes_ignore_parameter_names() -> None:
    assert compile_template("/u/{a}").shape == compile_template("/u/{b}").shape
    assert compile_template("/u/{a:path}").shape == compile_template("/u/{b:path}").shape


def test_shapes_tell_params_tails_and_literals_apart() -> None:
    shapes = {compile_template(path).shape for path in ["/u/{a}", "/u/{a:path}", "/u/a", "/u/{a}/"]}
    assert len(shapes) == 4


@pytest.mark.parametrize(
    ("path", "words"),
    [
        ("/a/{id", "bad parameter"),
        ("/a/id}", "bad parameter"),
        ("/a/x{id}", "bad parameter"),
        ("/a/{id}x", "bad parameter"),
        ("/a/{}", "bad parameter"),
        ("/a/{9id}", "bad parameter"),
        ("/a/{id:int}", "bad parameter"),
        ("/a/{rest:path}/b", "must be the last segment"),
        ("/a/{id}/{id}", "appears twice"),
        ("/a/{id}/{id:path}", "appears twice"),
        ("/a//b", "empty segment"),
        ("/a/./b", "dot segment"),
        ("/a/..", "dot segment"),
        ("a/b", "starts with '/'"),
    ],
)
def test_bad_templates_are_refused(path: str, words: str) -> None:
    with pytest.raises(ValueError) as caught:
        compile_template(path)
    assert words in str(caught.value)


# -- matching --------------------------------------------------------------------------------


def test_static_path_matches_with_no_params() -> None:
    router = router_of(("/v1/users", ["GET"], "users"))
    assert router.match("GET", "/v1/users") == ("users", {})


def test_root_path_matches() -> None:
    router = router_of(("/", ["GET"], "root"))
    assert router.match("GET", "/") == ("root", {})


def test_template_params_are_bound_by_name() -> None:
    router = router_of(("/v1/{org}/users/{id}", ["GET"], "user"))
    assert router.match("GET", "/v1/acme/users/42") == ("user", {"org": "acme", "id": "42"})


def test_bound_params_keep_percent_escapes() -> None:
    router = router_of(("/u/{id}", ["GET"], "user"))
    assert router.match("GET", "/u/a%20b") == ("user", {"id": "a%20b"})


@pytest.mark.parametrize("literal_first", [True, False])
def test_literal_segment_beats_param_whatever_the_insertion_order(literal_first: bool) -> None:
    routes = [("/u/me", ["GET"], "me"), ("/u/{id}", ["GET"], "by-id")]
    router = router_of(*(routes if literal_first else routes[::-1]))
    assert router.match("GET", "/u/me") == ("me", {})
    assert router.match("GET", "/u/42") == ("by-id", {"id": "42"})


@pytest.mark.parametrize("literal_first", [True, False])
def test_literal_beats_param_deep_in_a_template(literal_first: bool) -> None:
    routes = [("/o/{org}/settings", ["GET"], "settings"), ("/o/{org}/{page}", ["GET"], "page")]
    router = router_of(*(routes if literal_first else routes[::-1]))
    assert router.match("GET", "/o/acme/settings") == ("settings", {"org": "acme"})
    assert router.match("GET", "/o/acme/about") == ("page", {"org": "acme", "page": "about"})


@pytest.mark.parametrize("param_first", [True, False])
def test_param_beats_tail_for_a_single_segment(param_first: bool) -> None:
    routes = [("/f/{name}", ["GET"], "one"), ("/f/{rest:path}", ["GET"], "tail")]
    router = router_of(*(routes if param_first else routes[::-1]))
    assert router.match("GET", "/f/a") == ("one", {"name": "a"})
    assert router.match("GET", "/f/a/b") == ("tail", {"rest": "a/b"})


def test_matching_backtracks_out_of_a_dead_end_literal() -> None:
    router = router_of(("/a/{x}/c", ["GET"], "xc"), ("/a/b/d", ["GET"], "bd"))
    assert router.match("GET", "/a/b/d") == ("bd", {})
    assert router.match("GET", "/a/b/c") == ("xc", {"x": "b"})
    assert router.match("GET", "/a/z/c") == ("xc", {"x": "z"})


def test_matching_backtracks_from_a_param_to_a_tail() -> None:
    router = router_of(("/a/{x}/c", ["GET"], "xc"), ("/a/{rest:path}", ["GET"], "tail"))
    assert router.match("GET", "/a/b/zz") == ("tail", {"rest": "b/zz"})


@pytest.mark.parametrize(
    ("path", "rest"),
    [("/files/a", "a"), ("/files/a/b", "a/b"), ("/files/a/b/c.txt", "a/b/c.txt")],
)
def test_tail_matches_one_or_more_segments_joined_with_slash(path: str, rest: str) -> None:
    router = router_of(("/files/{rest:path}", ["GET"], "files"))
    assert router.match("GET", path) == ("files", {"rest": rest})


def test_tail_binds_after_the_params_before_it() -> None:
    router = router_of(("/b/{bucket}/{key:path}", ["GET"], "object"))
    assert router.match("GET", "/b/photos/2024/cat.jpg") == (
        "object",
        {"bucket": "photos", "key": "2024/cat.jpg"},
    )


@pytest.mark.parametrize("path", ["/files", "/files/"])
def test_tail_needs_at_least_one_segment(path: str) -> None:
    router = router_of(("/files/{rest:path}", ["GET"], "files"))
    with pytest.raises(NotFound):
        router.match("GET", path)


@pytest.mark.parametrize("path", ["/u/", "/u//x", "/u"])
def test_empty_segment_does_not_match_a_param(path: str) -> None:
    router = router_of(("/u/{id}", ["GET"], "user"), ("/u/{id}/x", ["GET"], "x"))
    with pytest.raises(NotFound):
        router.match("GET", path)


def test_trailing_slash_is_a_different_path() -> None:
    router = router_of(("/s", ["GET"], "bare"), ("/t/{x}/", ["GET"], "slashed"))
    assert router.match("GET", "/s") == ("bare", {})
    assert router.match("GET", "/t/1/") == ("slashed", {"x": "1"})
    with pytest.raises(NotFound):
        router.match("GET", "/s/")
    with pytest.raises(NotFound):
        router.match("GET", "/t/1")


@pytest.mark.parametrize("path", ["/nope", "/v1", "/v1/users/42/extra", "/V1/users"])
def test_unrouted_path_raises_not_found(path: str) -> None:
    router = router_of(("/v1/users", ["GET"], "users"), ("/v1/users/{id}", ["GET"], "user"))
    with pytest.raises(NotFound) as caught:
        router.match("GET", path)
    assert caught.value.status == 404
    assert path in caught.value.detail


def test_empty_router_finds_nothing() -> None:
    router: Router[str] = Router()
    with pytest.raises(NotFound):
        router.match("GET", "/")


def test_wrong_method_raises_method_not_allowed_with_sorted_allow() -> None:
    router = router_of(("/u/{id}", ["PUT", "DELETE", "GET"], "user"))
    with pytest.raises(MethodNotAllowed) as caught:
        router.match("PATCH", "/u/1")
    assert caught.value.status == 405
    assert caught.value.headers == {"Allow": "DELETE, GET, HEAD, PUT"}


def test_allow_lists_the_methods_of_every_route_on_the_path() -> None:
    router = router_of(("/s", ["POST"], "create"), ("/s", ["DELETE"], "purge"))
    with pytest.raises(MethodNotAllowed) as caught:
        router.match("GET", "/s")
    assert caught.value.headers["Allow"] == "DELETE, POST"
    assert router.match("POST", "/s") == ("create", {})
    assert router.match("DELETE", "/s") == ("purge", {})


def test_get_implies_head_with_the_same_value() -> None:
    router = router_of(("/u/{id}", ["GET"], "user"), ("/s", ["GET"], "static"))
    assert router.match("HEAD", "/u/7") == ("user", {"id": "7"})
    assert router.match("HEAD", "/s") == ("static", {})


def test_head_is_not_implied_without_get() -> None:
    router = router_of(("/s", ["POST"], "create"))
    with pytest.raises(MethodNotAllowed) as caught:
        router.match("HEAD", "/s")
    assert caught.value.headers["Allow"] == "POST"


def test_explicit_head_route_is_kept_when_get_is_added_later() -> None:
    router = router_of(("/s", ["HEAD"], "head"), ("/s", ["GET"], "get"))
    assert router.match("HEAD", "/s") == ("head", {})
    assert router.match("GET", "/s") == ("get", {})


@pytest.mark.parametrize(
    ("first", "second"),
    [("/s", "/s"), ("/u/{a}", "/u/{b}"), ("/f/{a:path}", "/f/{b:path}")],
)
def test_adding_the_same_method_twice_on_one_shape_raises(first: str, second: str) -> None:
    router = router_of((first, ["GET", "POST"], "one"))
    with pytest.raises(ValueError, match="already routed"):
        router.add(compile_template(second), ["POST"], "two")


def test_a_more_specific_route_without_the_method_does_not_hide_a_broader_one() -> None:
    router = router_of(("/f/{x}", ["POST"], "post-one"), ("/f/{rest:path}", ["GET"], "get-tail"))
    assert router.match("GET", "/f/a") == ("get-tail", {"rest": "a"})
    assert router.match("POST", "/f/a") == ("post-one", {"x": "a"})
    with pytest.raises(MethodNotAllowed) as caught:
        router.match("DELETE", "/f/a")
    assert caught.value.headers["Allow"] == "GET, HEAD, POST"


def test_static_path_falls_back_to_a_template_with_the_method() -> None:
    router = router_of(("/u/me", ["GET"], "me"), ("/u/{id}", ["DELETE"], "delete"))
    assert router.match("GET", "/u/me") == ("me", {})
    assert router.match("DELETE", "/u/me") == ("delete", {"id": "me"})


def test_explicit_head_replaces_the_implied_one_in_any_order() -> None:
    for order in ([0, 1], [1, 0]):
        routes = [("/h", ["GET"], "get"), ("/h", ["HEAD"], "head")]
        router = router_of(*(routes[i] for i in order))
        assert router.match("HEAD", "/h") == ("head", {})
        assert router.match("GET", "/h") == ("get", {})


# -- the one-frame first path ---------------------------------------------------------------


def test_the_first_path_never_answers_other_than_the_full_walk() -> None:
    """``_first_path`` is a shortcut of ``_walk``: whenever it finds an endpoint, it is
    the one the backtracking walk finds. Checked over random route sets and paths."""
    rng = random.Random(7)
    words = ["a", "b", "c"]

    def template() -> str:
        parts = [rng.choice([*words, "{p%d}"]) for _ in range(rng.randint(1, 2))]
        parts = [part % index if "%" in part else part for index, part in enumerate(parts)]
        if rng.random() < 0.3:
            parts.append("{rest:path}")
        return "/" + "/".join(parts)

    shortcuts = 0
    for _ in range(300):
        router: Router[str] = Router()
        for _ in range(rng.randint(1, 6)):
            path, method = template(), rng.choice(["GET", "POST"])
            with contextlib.suppress(ValueError):  # the same method on one shape twice
                router.add(compile_template(path), [method], f"{method} {path}")
        for _ in range(20):
            segments = [rng.choice([*words, "x", ""]) for _ in range(rng.randint(1, 4))]
            method = rng.choice(["GET", "POST"])
            first = router._first_path(segments, method)
            if first is not None:
                shortcuts += 1
                assert first is router._walk(router._root, segments, 0, method)
    assert shortcuts > 300  # the shortcut was taken often enough to be tested
