"""``load_config``: every problem names its file, its line and its key path.

Lines are found by searching the written text for a marker, so a test states *which*
line it expects (the line holding ``budgte:``) instead of a bare number.
"""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import pytest
from pydantic import ValidationError

from gateway.config import ConfigError, ConfigIssue, load_config
from gateway.routing import Router, compile_template

UPSTREAMS = """\
upstreams:
  users:
    targets: [http://127.0.0.1:9101]
  orders:
    targets: [http://127.0.0.1:9102]
"""


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def line_of(path: Path, needle: str, occurrence: int = 1) -> int:
    """The 1-based number of the line holding the ``occurrence``-th ``needle``."""
    seen = 0
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if needle in line:
            seen += 1
            if seen == occurrence:
                return number
    raise AssertionError(f"{needle!r} (#{occurrence}) is not in {path}")


def issues_of(path: Path) -> list[ConfigIssue]:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.issues, "a ConfigError must carry at least one issue"
    return caught.value.issues


def only_issue(path: Path) -> ConfigIssue:
    issues = issues_of(path)
    assert len(issues) == 1, [str(issue) for issue in issues]
    return issues[0]


def write_routes(folder: Path, routes: str, name: str = "gateway.yaml") -> Path:
    """A file with the shared upstreams and ``routes:`` followed by ``routes``."""
    return write(folder, name, UPSTREAMS + "routes:\n" + textwrap.dedent(routes))


# -- rendering --------------------------------------------------------------------------


def test_issue_renders_file_line_key_path_and_message() -> None:
    issue = ConfigIssue("gw.yaml", 7, "routes[0].path", "bad")
    assert str(issue) == "gw.yaml:7: routes[0].path: bad"


def test_issue_without_line_or_key_path_renders_only_what_it_knows() -> None:
    assert str(ConfigIssue("gw.yaml", None, "", "cannot read")) == "gw.yaml: cannot read"
    assert str(ConfigIssue("gw.yaml", 3, "", "invalid YAML")) == "gw.yaml:3: invalid YAML"


def test_config_error_lists_every_issue_one_per_line() -> None:
    error = ConfigError([ConfigIssue("a.yaml", 1, "x", "one"), ConfigIssue("b.yaml", 2, "", "two")])
    assert str(error).splitlines() == ["a.yaml:1: x: one", "b.yaml:2: two"]


# -- YAML syntax ------------------------------------------------------------------------


def test_malformed_yaml_names_the_line_of_the_problem(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "gateway.yaml",
        """\
        server:
          via: gateway
        routes:
          - path: /a
            proxy: url: http://127.0.0.1:1
        """,
    )
    issue = only_issue(path)
    assert issue.file == str(path)
    assert issue.line == line_of(path, "proxy: url:")
    assert issue.key_path == ""
    assert issue.message.startswith("invalid YAML: ")
    assert str(issue).startswith(f"{path}:{issue.line}: invalid YAML: ")


def test_unclosed_flow_sequence_is_reported_where_yaml_notices_it(tmp_path: Path) -> None:
    path = write(tmp_path, "gateway.yaml", "server:\n  via: [a, b\n")
    issue = only_issue(path)
    assert issue.file == str(path)
    assert issue.line == 3  # end of input, just after the unclosed '['
    assert "invalid YAML" in issue.message


def test_tab_indentation_is_reported_on_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, "gateway.yaml", "server:\n\tvia: x\n")
    issue = only_issue(path)
    assert (issue.file, issue.line) == (str(path), 2)
    assert "invalid YAML" in issue.message


def test_a_file_that_is_not_utf8_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_bytes(b"server:\n  via: \xff\xfe\n")
    issue = only_issue(path)
    assert issue.file == str(path)
    assert "UTF-8" in issue.message


def test_a_top_level_that_is_not_a_mapping_is_refused_at_line_1(tmp_path: Path) -> None:
    path = write(tmp_path, "gateway.yaml", "- just\n- a list\n")
    issue = only_issue(path)
    assert (issue.file, issue.line, issue.key_path) == (str(path), 1, "")
    assert "mapping" in issue.message


# -- unknown and duplicate keys ------------------------------------------------------------


def test_unknown_key_is_named_with_a_did_you_mean_hint_on_its_own_line(tmp_path: Path) -> None:
    path = write_routes(
        tmp_path,
        """\
          - path: /v1/dashboard/{id}
            fanout:
              budgte: 50ms
              backends:
                user: {url: "http://127.0.0.1:9101/users/{id}"}
        """,
    )
    issue = only_issue(path)
    assert issue.file == str(path)
    assert issue.line == line_of(path, "budgte:")
    assert issue.key_path == "routes[0].fanout.budgte"
    assert "unknown key 'budgte'" in issue.message
    assert "did you mean 'budget'" in issue.message
    assert str(issue) == f"{path}:{issue.line}: routes[0].fanout.budgte: {issue.message}"


def test_unknown_key_with_nothing_close_has_no_hint(tmp_path: Path) -> None:
    path = write(tmp_path, "gateway.yaml", "server:\n  zzzzqq: 1\n")
    issue = only_issue(path)
    assert (issue.line, issue.key_path) == (2, "server.zzzzqq")
    assert issue.message == "unknown key 'zzzzqq'"


def test_unknown_key_hint_suggests_the_close_key_of_that_section(tmp_path: Path) -> None:
    path = write(tmp_path, "gateway.yaml", "server:\n  listen:\n    prot: 8080\n")
    issue = only_issue(path)
    assert (issue.line, issue.key_path) == (3, "server.listen.prot")
    assert "did you mean 'port'" in issue.message


def test_unknown_key_hint_never_suggests_a_key_that_is_invalid_there(tmp_path: Path) -> None:
    # `budget` is a key of a fan-out, not of an upstream: suggesting it under an
    # upstream sends the reader from one unknown key to another.
    path = write(
        tmp_path,
        "gateway.yaml",
        """\
        upstreams:
          users:
            targets: [http://127.0.0.1:9101]
            budgte: 50ms
        """,
    )
    issue = only_issue(path)
    assert (issue.line, issue.key_path) == (4, "upstreams.users.budgte")
    assert "unknown key 'budgte'" in issue.message
    assert "'budget'" not in issue.message


def test_duplicate_key_is_reported_at_the_second_occurrence(tmp_path: Path) -> None:
    path = write_routes(
        tmp_path,
        """\
          - path: /a
            path: /b
            proxy: {upstream: users}
        """,
    )
    issue = only_issue(path)
    assert issue.file == str(path)
    assert issue.line == line_of(path, "path: /b")
    assert issue.key_path == "routes[0].path"
    assert issue.message == "duplicate key"


def test_every_duplicate_key_in_a_file_is_reported(tmp_path: Path) -> None:
    path = write(tmp_path, "gateway.yaml", "include: []\ninclude: []\nroutes: []\nroutes: []\n")
    issues = issues_of(path)
    assert [(issue.line, issue.key_path, issue.message) for issue in issues] == [
        (2, "include", "duplicate key"),
        (4, "routes", "duplicate key"),
    ]


# -- routes: shape ------------------------------------------------------------------------


def test_route_without_proxy_or_fanout_is_refused_at_the_route(tmp_path: Path) -> None:
    path = write_routes(
        tmp_path,
        """\
          - path: /ok
            proxy: {upstream: users}
          - path: /nowhere
            methods: [GET]
        """,
    )
    issue = only_issue(path)
    assert issue.line == line_of(path, "path: /nowhere")
    assert issue.key_path == "routes[1]"
    assert "needs an upstream" in issue.message


def test_route_with_both_proxy_and_fanout_is_refused(tmp_path: Path) -> None:
    path = write_routes(
        tmp_path,
        """\
          - path: /both
            proxy: {upstream: users}
            fanout:
              backends:
                a: {url: "http://127.0.0.1:9101/a"}
        """,
    )
    issue = only_issue(path)
    assert issue.line == line_of(path, "path: /both")
    assert issue.key_path == "routes[0]"
    assert "not both" in issue.message


def test_proxy_without_upstream_or_url_is_refused_at_the_proxy(tmp_path: Path) -> None:
    path = write_routes(
        tmp_path,
        """\
          - path: /a
            proxy:
              timeout: 1s
        """,
    )
    issue = only_issue(path)
    assert (issue.line, issue.key_path) == (line_of(path, "proxy:"), "routes[0].proxy")
    assert "exactly one of" in issue.message


def test_missing_required_key_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "gateway.yaml", "upstreams:\n  users:\n    pool: {}\n")
    issue = only_issue(path)
    assert (issue.line, issue.key_path) == (2, "upstreams.users.targets")
    assert issue.message == "missing required key 'targets'"


@pytest.mark.parametrize(
    ("budget", "shown"),
    [
        ("50", "50"),
        ('"50 ms"', "'50 ms'"),
        ("fast", "'fast'"),
        ("true", "True"),
        ("-5ms", "'-5ms'"),
        ("50MS", "'50MS'"),
        ("1e3ms", "'1e3ms'"),
    ],
)
def test_budget_that_is_not_a_duration_is_refused(tmp_path: Path, budget: str, shown: str) -> None:
    path = write_routes(
        tmp_path,
        f"""\
          - path: /d/{{id}}
            fanout:
              budget: {budget}
              backends:
                user: {{url: "http://127.0.0.1:9101/users/{{id}}"}}
        """,
    )
    issue = only_issue(path)
    assert issue.file == str(path)
    assert issue.line == line_of(path, "budget:")
    assert issue.key_path == "routes[0].fanout.budget"
    assert issue.message.startswith(f"not a duration: {shown} ")
    assert "50ms" in issue.message  # the message shows how to write one


def test_backend_timeout_that_is_not_a_duration_names_the_backend(tmp_path: Path) -> None:
    path = write_routes(
        tmp_path,
        """\
          - path: /d
            fanout:
              backends:
                user:
                  url: http://127.0.0.1:9101/users
                  timeout: 40
        """,
    )
    issue = only_issue(path)
    assert issue.line == line_of(path, "timeout: 40")
    assert issue.key_path == "routes[0].fanout.backends.user.timeout"
    assert "not a duration" in issue.message


@pytest.mark.parametrize("size", ["1XB", "1.5KiB", "abc", "10kib", "true"])
def test_size_that_is_not_a_size_is_refused(tmp_path: Path, size: str) -> None:
    path = write(tmp_path, "gateway.yaml", f"server:\n  limits:\n    max_body_size: {size}\n")
    issue = only_issue(path)
    assert (issue.file, issue.line) == (str(path), 3)
    assert issue.key_path == "server.limits.max_body_size"
    assert issue.message.startswith("not a size")


def test_negative_size_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "gateway.yaml", "server:\n  limits:\n    max_header_size: -1\n")
    issue = only_issue(path)
    assert (issue.line, issue.key_path) == (3, "server.limits.max_header_size")
    assert "negative" in issue.message


def test_port_out_of_range_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "gateway.yaml", "server:\n  listen:\n    port: 70000\n")
    issue = only_issue(path)
    assert (issue.line, issue.key_path) == (3, "server.listen.port")
    assert "65535" in issue.message


def test_unknown_method_is_refused_and_the_known_ones_listed(tmp_path: Path) -> None:
    path = write_routes(
        tmp_path,
        """\
          - path: /a
            methods: [GET, FETCH]
            proxy: {upstream: users}
        """,
    )
    issue = only_issue(path)
    assert issue.line == line_of(path, "methods:")
    assert issue.key_path == "routes[0].methods"
    assert "['FETCH']" in issue.message
    assert "'GET'" in issue.message
    assert "'PATCH'" in issue.message


def test_method_listed_twice_in_any_case_is_refused(tmp_path: Path) -> None:
    path = write_routes(
        tmp_path,
        """\
          - path: /a
            methods: [GET, get]
            proxy: {upstream: users}
        """,
    )
    issue = only_issue(path)
    assert (issue.key_path, issue.message) == ("routes[0].methods", "a method is listed twice")


def test_backend_name_that_is_not_a_name_is_refused(tmp_path: Path) -> None:
    path = write_routes(
        tmp_path,
        """\
          - path: /d
            fanout:
              backends:
                1st: {url: "http://127.0.0.1:9101/a"}
        """,
    )
    issue = only_issue(path)
    assert (issue.line, issue.key_path) == (line_of(path, "backends:"), "routes[0].fanout.backends")
    assert "'1st'" in issue.message


def test_fanout_without_backends_is_refused(tmp_path: Path) -> None:
    path = write_routes(
        tmp_path,
        """\
          - path: /d
            fanout:
              backends: {}
        """,
    )
    issue = only_issue(path)
    assert (issue.line, issue.key_path) == (line_of(path, "backends:"), "routes[0].fanout.backends")


# -- routes: names that must resolve ------------------------------------------------------


def test_unknown_upstream_is_refused_and_the_known_ones_listed(tmp_path: Path) -> None:
    path = write_routes(
        tmp_path,
        """\
          - path: /a
            proxy:
              upstream: userz
        """,
    )
    issue = only_issue(path)
    assert issue.file == str(path)
    assert issue.line == line_of(path, "upstream: userz")
    assert issue.key_path == "routes[0].proxy.upstream"
    assert issue.message == "no upstream named 'userz' (known: orders, users)"


def test_unknown_upstream_when_none_is_defined_says_so(tmp_path: Path) -> None:
    path = write(tmp_path, "gateway.yaml", "routes:\n  - path: /a\n    proxy: {upstream: users}\n")
    issue = only_issue(path)
    assert issue.key_path == "routes[0].proxy.upstream"
    assert "none defined" in issue.message


def test_proxy_path_placeholder_missing_from_the_route_path_is_refused(tmp_path: Path) -> None:
    path = write_routes(
        tmp_path,
        """\
          - path: /v1/users/{id}
            proxy:
              upstream: users
              path: /users/{uid}
        """,
    )
    issue = only_issue(path)
    assert issue.line == line_of(path, "path: /users/{uid}")
    assert issue.key_path == "routes[0].proxy.path"
    assert issue.message == "uses {uid} but the route path has {id}"


def test_backend_url_placeholder_missing_from_a_route_without_params_is_refused(
    tmp_path: Path,
) -> None:
    path = write_routes(
        tmp_path,
        """\
          - path: /d
            fanout:
              backends:
                orders:
                  url: http://127.0.0.1:9102/orders?user={id}
        """,
    )
    issue = only_issue(path)
    assert issue.line == line_of(path, "url: http://127.0.0.1:9102")
    assert issue.key_path == "routes[0].fanout.backends.orders.url"
    assert issue.message == "uses {id} but the route path has no parameters"


def test_tail_parameter_may_be_used_in_a_backend_url(tmp_path: Path) -> None:
    path = write_routes(
        tmp_path,
        """\
          - path: /files/{rest:path}
            fanout:
              backends:
                files: {url: "http://127.0.0.1:9102/f/{rest}"}
        """,
    )
    assert load_config(path).config.routes[0].path == "/files/{rest:path}"


@pytest.mark.parametrize(
    ("template", "words"),
    [
        ("/a/{id", "bad parameter '{id'"),
        ("/a/x{id}", "bad parameter 'x{id}'"),
        ("/a/{1x}", "bad parameter '{1x}'"),
        ("/a/{rest:path}/b", "{rest:path} must be the last segment"),
        ("/a/{id}/b/{id}", "parameter {id} appears twice"),
        ("/a//b", "empty segment"),
        ("/a/../b", "dot segment"),
    ],
)
def test_bad_route_path_template_is_refused_at_the_path(
    tmp_path: Path, template: str, words: str
) -> None:
    path = write_routes(
        tmp_path,
        f"""\
          - path: /fine
            proxy: {{upstream: users}}
          - path: '{template}'
            proxy: {{upstream: users}}
        """,
    )
    issue = only_issue(path)
    assert issue.file == str(path)
    assert issue.line == line_of(path, f"path: '{template}'")
    assert issue.key_path == "routes[1].path"
    assert words in issue.message


def test_route_path_not_starting_with_a_slash_is_refused(tmp_path: Path) -> None:
    path = write_routes(tmp_path, "  - path: a/b\n    proxy: {upstream: users}\n")
    issue = only_issue(path)
    assert (issue.line, issue.key_path) == (line_of(path, "path: a/b"), "routes[0].path")
    assert "starts with '/'" in issue.message


def test_same_method_on_same_path_shape_is_refused_naming_the_first(tmp_path: Path) -> None:
    path = write_routes(
        tmp_path,
        """\
          - path: /u/{a}
            proxy: {upstream: users}
          - path: /other
            proxy: {upstream: users}
          - path: /u/{b}
            proxy: {upstream: orders}
        """,
    )
    issue = only_issue(path)
    assert issue.file == str(path)
    assert issue.line == line_of(path, "path: /u/{b}")
    assert issue.key_path == "routes[2].path"
    assert "GET /u/{b} is already routed" in issue.message
    assert f"(first at {path}:{line_of(path, 'path: /u/{a}')})" in issue.message


def test_overlapping_method_lists_on_one_shape_are_refused_for_the_shared_method(
    tmp_path: Path,
) -> None:
    path = write_routes(
        tmp_path,
        """\
          - path: /u/{a}
            methods: [GET, POST]
            proxy: {upstream: users}
          - path: /u/{b}
            methods: [PUT, POST]
            proxy: {upstream: users}
        """,
    )
    issue = only_issue(path)
    assert issue.key_path == "routes[1].path"
    assert issue.message.startswith("POST /u/{b} is already routed")


def test_same_path_with_different_methods_is_accepted(tmp_path: Path) -> None:
    path = write_routes(
        tmp_path,
        """\
          - path: /u/{a}
            methods: [GET]
            proxy: {upstream: users}
          - path: /u/{b}
            methods: [delete]
            proxy: {upstream: users}
        """,
    )
    routes = load_config(path).config.routes
    assert [route.methods for route in routes] == [("GET",), ("DELETE",)]


def test_a_param_and_a_tail_on_the_same_prefix_are_different_routes(tmp_path: Path) -> None:
    path = write_routes(
        tmp_path,
        """\
          - path: /u/{a}
            proxy: {upstream: users}
          - path: /u/{a:path}
            proxy: {upstream: users}
        """,
    )
    assert len(load_config(path).config.routes) == 2


def test_a_config_that_loads_can_always_be_routed(tmp_path: Path) -> None:
    # GET implies HEAD in the router, so a later explicit HEAD route on the same path
    # collides there. Either the loader refuses it (with file and line) or the router
    # accepts it; a config that `gateway check` calls OK must not crash the server
    # with a ValueError at start or reload.
    path = write_routes(
        tmp_path,
        """\
          - path: /h
            methods: [GET]
            proxy: {upstream: users}
          - path: /h
            methods: [HEAD]
            proxy: {upstream: orders}
        """,
    )
    try:
        loaded = load_config(path)
    except ConfigError as exc:
        issue = exc.issues[0]
        assert (issue.line, issue.key_path) == (line_of(path, "path: /h", 2), "routes[1].path")
        assert "HEAD" in issue.message
        return
    router: Router[int] = Router()
    for index, route in enumerate(loaded.config.routes):
        router.add(compile_template(route.path), route.methods, index)
    assert router.match("HEAD", "/h")[0] == 1


def test_duplicate_route_name_is_refused_at_the_second_name(tmp_path: Path) -> None:
    path = write_routes(
        tmp_path,
        """\
          - name: user
            path: /a
            proxy: {upstream: users}
          - name: user
            path: /b
            proxy: {upstream: users}
        """,
    )
    issue = only_issue(path)
    assert issue.line == line_of(path, "name: user", 2)
    assert issue.key_path == "routes[1].name"
    assert issue.message == (
        f"route name 'user' is used twice (first at {path}:{line_of(path, 'name: user', 1)})"
    )


# -- upstream targets ----------------------------------------------------------------------


def test_target_url_with_a_path_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "gateway.yaml", "upstreams:\n  users:\n    targets: [http://h:1/api]\n")
    issue = only_issue(path)
    assert (issue.file, issue.line) == (str(path), 3)
    assert issue.key_path == "upstreams.users.targets"
    assert "without a path" in issue.message
    assert "'http://h:1/api'" in issue.message


def test_target_url_with_a_path_and_a_trailing_slash_is_refused(tmp_path: Path) -> None:
    # The proxy sends requests to target + path, so an accepted `/api/` would silently
    # prefix every upstream path with `/api`.
    path = write(
        tmp_path, "gateway.yaml", "upstreams:\n  users:\n    targets: ['http://h:1/api/']\n"
    )
    issue = only_issue(path)
    assert (issue.line, issue.key_path) == (3, "upstreams.users.targets")
    assert "without a path" in issue.message


def test_target_url_with_only_a_trailing_slash_is_an_origin(tmp_path: Path) -> None:
    path = write(tmp_path, "gateway.yaml", "upstreams:\n  users:\n    targets: ['http://h:1/']\n")
    assert load_config(path).config.upstreams["users"].targets == ("http://h:1",)


@pytest.mark.parametrize("target", ["ftp://h:1", "http://h:1?x=1", "h:1", "http:// h"])
def test_target_that_is_not_an_http_url_is_refused_at_its_index(
    tmp_path: Path, target: str
) -> None:
    path = write(
        tmp_path,
        "gateway.yaml",
        f"upstreams:\n  users:\n    targets:\n      - http://ok:1\n      - '{target}'\n",
    )
    issue = only_issue(path)
    assert (issue.line, issue.key_path) == (5, "upstreams.users.targets[1]")
    assert issue.message == f"not an http(s) URL: {target!r}"


# -- included files -----------------------------------------------------------------------

MAIN_WITH_ROUTES = (
    UPSTREAMS
    + """\
routes:
  - path: /main/a
    proxy: {upstream: users}
  - path: /main/b
    proxy: {upstream: users}
  - path: /main/c
    proxy: {upstream: users}
include: [routes.yaml]
"""
)


def test_error_in_included_file_names_that_file_its_line_and_local_key_path(
    tmp_path: Path,
) -> None:
    main = write(tmp_path, "gateway.yaml", MAIN_WITH_ROUTES)
    routes = write(
        tmp_path,
        "routes.yaml",
        """\
        routes:
          - path: /inc/a
            proxy: {upstream: users}
          - path: /inc/b/{id}
            fanout:
              budget: fast
              backends:
                user: {url: "http://127.0.0.1:9101/users/{id}"}
        """,
    )
    issue = only_issue(main)
    assert issue.file == str(routes)
    assert issue.line == line_of(routes, "budget: fast")
    assert issue.key_path == "routes[1].fanout.budget"
    assert str(issue).startswith(f"{routes}:{issue.line}: routes[1].fanout.budget: ")


def test_unknown_key_in_included_file_is_local_to_that_file(tmp_path: Path) -> None:
    main = write(tmp_path, "gateway.yaml", MAIN_WITH_ROUTES)
    routes = write(
        tmp_path,
        "routes.yaml",
        """\
        routes:
          - path: /inc/a
            proxy: {upstream: users}
          - path: /inc/b
            fanout:
              budgte: 5ms
              backends:
                user: {url: "http://127.0.0.1:9101/users"}
        """,
    )
    issue = only_issue(main)
    assert (issue.file, issue.line) == (str(routes), line_of(routes, "budgte:"))
    assert issue.key_path == "routes[1].fanout.budgte"
    assert "did you mean 'budget'" in issue.message


def test_cross_check_error_in_included_file_is_local_to_that_file(tmp_path: Path) -> None:
    main = write(tmp_path, "gateway.yaml", MAIN_WITH_ROUTES)
    routes = write(
        tmp_path,
        "routes.yaml",
        """\
        routes:
          - path: /inc/a
            proxy: {upstream: users}
          - path: /inc/b
            proxy:
              upstream: nope
        """,
    )
    issue = only_issue(main)
    assert (issue.file, issue.line) == (str(routes), line_of(routes, "upstream: nope"))
    assert issue.key_path == "routes[1].proxy.upstream"
    assert "known: orders, users" in issue.message


def test_duplicate_key_in_included_file_is_reported_there(tmp_path: Path) -> None:
    main = write(tmp_path, "gateway.yaml", MAIN_WITH_ROUTES)
    routes = write(
        tmp_path,
        "routes.yaml",
        """\
        routes:
          - path: /inc/a
            proxy: {upstream: users}
            proxy: {upstream: orders}
        """,
    )
    issue = only_issue(main)
    assert (issue.file, issue.line) == (str(routes), line_of(routes, "upstream: orders"))
    assert (issue.key_path, issue.message) == ("routes[0].proxy", "duplicate key")


def test_malformed_yaml_in_included_file_names_that_file(tmp_path: Path) -> None:
    main = write(tmp_path, "gateway.yaml", MAIN_WITH_ROUTES)
    routes = write(tmp_path, "routes.yaml", "routes:\n  - path: /x\n    proxy: a: b\n")
    issue = only_issue(main)
    assert (issue.file, issue.line) == (str(routes), 3)
    assert "invalid YAML" in issue.message


def test_route_in_included_file_clashing_with_main_names_the_first_in_main(
    tmp_path: Path,
) -> None:
    main = write(tmp_path, "gateway.yaml", MAIN_WITH_ROUTES)
    routes = write(
        tmp_path, "routes.yaml", "routes:\n  - path: /main/b\n    proxy: {url: 'http://h'}\n"
    )
    issue = only_issue(main)
    assert (issue.file, issue.line, issue.key_path) == (str(routes), 2, "routes[0].path")
    assert f"(first at {main}:{line_of(main, 'path: /main/b')})" in issue.message


def test_error_in_included_upstream_is_local_to_that_file(tmp_path: Path) -> None:
    main = write(tmp_path, "gateway.yaml", MAIN_WITH_ROUTES)
    routes = write(tmp_path, "routes.yaml", "upstreams:\n  billing:\n    targets: [http://h:1/x]\n")
    issue = only_issue(main)
    assert (issue.file, issue.line) == (str(routes), 3)
    assert issue.key_path == "upstreams.billing.targets"


def test_upstream_defined_in_both_files_is_refused_in_the_included_one(tmp_path: Path) -> None:
    main = write(tmp_path, "gateway.yaml", MAIN_WITH_ROUTES)
    routes = write(tmp_path, "routes.yaml", "upstreams:\n  users:\n    targets: [http://h:1]\n")
    issue = only_issue(main)
    assert (issue.file, issue.line, issue.key_path) == (str(routes), 2, "upstreams.users")
    assert "already defined" in issue.message


def test_included_routes_and_upstreams_are_merged_after_the_main_ones(tmp_path: Path) -> None:
    main = write(tmp_path, "gateway.yaml", MAIN_WITH_ROUTES)
    routes = write(
        tmp_path,
        "routes.yaml",
        """\
        upstreams:
          billing:
            targets: [http://127.0.0.1:9109]
        routes:
          - path: /inc/bills
            proxy: {upstream: billing}
        """,
    )
    loaded = load_config(main)
    assert [route.path for route in loaded.config.routes] == [
        "/main/a",
        "/main/b",
        "/main/c",
        "/inc/bills",
    ]
    assert sorted(loaded.config.upstreams) == ["billing", "orders", "users"]
    assert loaded.files == (main.resolve(), routes.resolve())


def test_included_file_with_another_top_level_key_is_refused(tmp_path: Path) -> None:
    main = write(tmp_path, "gateway.yaml", MAIN_WITH_ROUTES)
    routes = write(tmp_path, "routes.yaml", "routes: []\nserver:\n  via: x\n")
    issue = only_issue(main)
    assert (issue.file, issue.line, issue.key_path) == (str(routes), 2, "server")
    assert "holds only ['upstreams', 'routes']" in issue.message
    assert f"included from {main}:{line_of(main, 'include:')}" in issue.message


def test_included_routes_must_be_a_list_as_in_the_main_file(tmp_path: Path) -> None:
    # In gateway.yaml `routes:` written as a mapping is "Input should be a valid list";
    # the same mistake in an included file must not be read as a one-route list.
    main = write(tmp_path, "gateway.yaml", "include: [routes.yaml]\n")
    routes = write(
        tmp_path,
        "routes.yaml",
        """\
        routes:
          path: /x
          proxy: {url: "http://127.0.0.1:9101"}
        """,
    )
    issue = only_issue(main)
    assert (issue.file, issue.line, issue.key_path) == (str(routes), 1, "routes")
    assert "list" in issue.message


def test_included_file_that_is_not_a_mapping_is_refused(tmp_path: Path) -> None:
    main = write(tmp_path, "gateway.yaml", "include: [routes.yaml]\n")
    routes = write(tmp_path, "routes.yaml", "- path: /x\n")
    issue = only_issue(main)
    assert (issue.file, issue.line) == (str(routes), 1)
    assert "mapping" in issue.message


def test_missing_included_file_is_named(tmp_path: Path) -> None:
    main = write(tmp_path, "gateway.yaml", "include: [routes.yaml]\n")
    issue = only_issue(main)
    assert issue.file == str(tmp_path / "routes.yaml")
    assert issue.line is None
    assert issue.message.startswith("cannot read")
    assert str(issue).startswith(f"{tmp_path / 'routes.yaml'}: cannot read")


def test_missing_main_file_is_named(tmp_path: Path) -> None:
    issue = only_issue(tmp_path / "absent.yaml")
    assert issue.file == str(tmp_path / "absent.yaml")
    assert issue.message.startswith("cannot read")


def test_include_that_is_not_a_list_is_refused(tmp_path: Path) -> None:
    main = write(tmp_path, "gateway.yaml", "server: {}\ninclude: routes.yaml\n")
    issue = only_issue(main)
    assert (issue.file, issue.line, issue.key_path) == (str(main), 2, "include")


def test_empty_included_file_adds_nothing_but_is_watched(tmp_path: Path) -> None:
    main = write(tmp_path, "gateway.yaml", MAIN_WITH_ROUTES)
    routes = write(tmp_path, "routes.yaml", "# routes will go here\n")
    loaded = load_config(main)
    assert len(loaded.config.routes) == 3
    assert routes.resolve() in loaded.files


def test_empty_main_file_loads_as_all_defaults(tmp_path: Path) -> None:
    loaded = load_config(write(tmp_path, "gateway.yaml", ""))
    assert loaded.config.routes == ()
    assert loaded.config.upstreams == {}
    assert loaded.config.server.listen.port == 8080


# -- several errors at once ----------------------------------------------------------------


def test_every_validation_error_is_reported_in_file_order(tmp_path: Path) -> None:
    path = write_routes(
        tmp_path,
        """\
          - path: /a
            methods: [FETCH]
            proxy: {upstream: users}
          - path: /b
          - path: /c
            fanout:
              budget: 50
              backends:
                a: {url: "http://127.0.0.1:9101/a"}
        """,
    )
    issues = issues_of(path)
    assert [(issue.line, issue.key_path) for issue in issues] == [
        (line_of(path, "methods: [FETCH]"), "routes[0].methods"),
        (line_of(path, "path: /b"), "routes[1]"),
        (line_of(path, "budget: 50"), "routes[2].fanout.budget"),
    ]
    assert all(issue.file == str(path) for issue in issues)


def test_every_cross_check_error_is_reported(tmp_path: Path) -> None:
    path = write_routes(
        tmp_path,
        """\
          - path: /a
            proxy: {upstream: nope}
          - path: /a
            proxy: {upstream: users}
          - path: /b/{id
            proxy: {upstream: users}
          - path: /c
            proxy:
              upstream: users
              path: /c/{id}
        """,
    )
    issues = issues_of(path)
    assert [issue.key_path for issue in issues] == [
        "routes[0].proxy.upstream",
        "routes[1].path",
        "routes[2].path",
        "routes[3].proxy.path",
    ]


def test_errors_in_the_main_and_the_included_file_are_all_reported(tmp_path: Path) -> None:
    main = write(
        tmp_path,
        "gateway.yaml",
        """\
        server:
          listen: {port: 99999}
        include: [routes.yaml]
        routes:
          - path: /main
        """,
    )
    routes = write(
        tmp_path,
        "routes.yaml",
        """\
        routes:
          - path: /inc
            proxy: {url: "http://h", timeout: soon}
        """,
    )
    issues = issues_of(main)
    found = {(issue.file, issue.line, issue.key_path) for issue in issues}
    assert found == {
        (str(main), 2, "server.listen.port"),
        (str(main), 5, "routes[0]"),
        (str(routes), 3, "routes[0].proxy.timeout"),
    }


# -- happy paths ---------------------------------------------------------------------------


def test_defaults_are_applied(tmp_path: Path) -> None:
    path = write_routes(
        tmp_path,
        """\
          - path: /p
            proxy: {upstream: users}
          - path: /d
            fanout:
              backends:
                a: {url: "http://127.0.0.1:9101/a"}
        """,
    )
    config = load_config(path).config
    assert (config.server.listen.host, config.server.listen.port) == ("127.0.0.1", 8080)
    limits = config.server.limits
    assert limits.max_body_size == 1024 * 1024
    assert limits.max_header_size == 8 * 1024
    assert limits.max_headers == 100
    assert limits.max_request_line == 8 * 1024
    assert config.server.shutdown_timeout == 10.0
    assert config.server.trust_forwarded is False
    proxy_route, fanout_route = config.routes
    assert proxy_route.methods == ("GET",)
    assert proxy_route.proxy is not None
    assert proxy_route.proxy.timeout == 30.0
    assert fanout_route.fanout is not None
    assert fanout_route.fanout.budget == 0.05
    assert fanout_route.fanout.partial_in_body is False
    backend = fanout_route.fanout.backends["a"]
    assert (backend.method, backend.timeout, backend.required) == ("GET", None, False)
    pool = config.upstreams["users"].pool
    assert (pool.max_connections, pool.keepalive, pool.connect_timeout) == (100, 30.0, 1.0)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250us", 250e-6),
        ("50ms", 0.05),
        ("0.5ms", 0.0005),
        ("2s", 2.0),
        ("1.5s", 1.5),
        ("2m", 120.0),
        ("1h", 3600.0),
    ],
)
def test_durations_are_read_in_seconds(tmp_path: Path, text: str, seconds: float) -> None:
    path = write_routes(
        tmp_path,
        f"""\
          - path: /d
            fanout:
              budget: {text}
              backends:
                a: {{url: "http://127.0.0.1:9101/a", timeout: {text}}}
        """,
    )
    fanout = load_config(path).config.routes[0].fanout
    assert fanout is not None
    assert fanout.budget == pytest.approx(seconds)
    assert fanout.backends["a"].timeout == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("512KiB", 512 * 1024),
        ("1MiB", 1024 * 1024),
        ("1GiB", 1024**3),
        ("2KB", 2000),
        ("3MB", 3_000_000),
        ("10B", 10),
        ("4096", 4096),
        ("0", 0),
    ],
)
def test_sizes_are_read_in_bytes(tmp_path: Path, text: str, size: int) -> None:
    path = write(tmp_path, "gateway.yaml", f"server:\n  limits:\n    max_body_size: {text}\n")
    assert load_config(path).config.server.limits.max_body_size == size


def test_methods_are_upper_cased(tmp_path: Path) -> None:
    path = write_routes(
        tmp_path, "  - path: /a\n    methods: [get, Post]\n    proxy: {upstream: users}\n"
    )
    assert load_config(path).config.routes[0].methods == ("GET", "POST")


def test_fallback_absent_null_and_valued_are_told_apart(tmp_path: Path) -> None:
    path = write_routes(
        tmp_path,
        """\
          - path: /d
            fanout:
              backends:
                absent: {url: "http://127.0.0.1:9101/a"}
                null_one: {url: "http://127.0.0.1:9101/b", fallback: null}
                items: {url: "http://127.0.0.1:9101/c", fallback: {items: []}}
                zero: {url: "http://127.0.0.1:9101/d", fallback: 0}
        """,
    )
    fanout = load_config(path).config.routes[0].fanout
    assert fanout is not None
    got = {name: (b.has_fallback, b.fallback) for name, b in fanout.backends.items()}
    assert got == {
        "absent": (False, None),
        "null_one": (True, None),
        "items": (True, {"items": []}),
        "zero": (True, 0),
    }
    assert list(fanout.backends) == ["absent", "null_one", "items", "zero"]


def test_config_objects_are_frozen(tmp_path: Path) -> None:
    path = write_routes(
        tmp_path,
        """\
          - path: /d
            fanout:
              backends:
                a: {url: "http://127.0.0.1:9101/a"}
        """,
    )
    loaded = load_config(path)
    config = loaded.config
    route = config.routes[0]
    assert route.fanout is not None
    with pytest.raises(ValidationError):
        config.server.listen.port = 1  # type: ignore[misc]
    with pytest.raises(ValidationError):
        route.path = "/elsewhere"  # type: ignore[misc]
    with pytest.raises(ValidationError):
        route.fanout.budget = 1.0  # type: ignore[misc]
    with pytest.raises(ValidationError):
        route.fanout.backends["a"].required = True  # type: ignore[misc]
    with pytest.raises(ValidationError):
        config.upstreams["users"].host_header = "client"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        loaded.config = config  # type: ignore[misc]
    assert config.server.listen.port == 8080
    assert route.path == "/d"


def test_shipped_config_loads(tmp_path: Path) -> None:
    shipped = Path(__file__).parents[2] / "config" / "gateway.yaml"
    loaded = load_config(shipped)
    assert loaded.config.routes, "the shipped config has routes"
    assert loaded.files[0] == shipped.resolve()


def test_proxy_url_takes_no_placeholders(tmp_path: Path) -> None:
    path = write_routes(
        tmp_path,
        """\
          - path: /x/{id}
            proxy: {url: "http://h:1/x/{id}"}
        """,
    )
    issue = only_issue(path)
    assert issue.key_path == "routes[0].proxy.url"
    assert "takes no placeholders" in issue.message


def test_a_refused_only_target_is_reported_once(tmp_path: Path) -> None:
    path = write(
        tmp_path, "gateway.yaml", "upstreams:\n  users:\n    targets: ['http://bad url']\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert [issue.key_path for issue in caught.value.issues] == ["upstreams.users.targets[0]"]
