"""RFC 9111 decisions of the response cache, rule by rule (pure functions, no I/O)."""

from __future__ import annotations

from email.utils import formatdate

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.policies.cache.spec import (
    CACHEABLE_BY_DEFAULT,
    directives,
    freshness_lifetime,
    initial_age,
    stale_window,
    storable,
    vary_names,
)

T0 = 1_700_000_000.0


def http_date(at: float) -> str:
    return formatdate(at, usegmt=True)


def headers(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


def is_storable(
    status: int = 200,
    request_cc: str = "",
    response_cc: str = "",
    response_headers: tuple[tuple[str, str], ...] = (),
    authorization: bool = False,
    ttl: bool = True,
) -> bool:
    return storable(
        status,
        directives(request_cc),
        directives(response_cc),
        headers(*response_headers),
        authorization,
        ttl,
    )


# -- directives ------------------------------------------------------------------------


def test_directive_names_are_case_insensitive_and_values_kept() -> None:
    assert directives("Max-Age=60, NO-STORE, Private") == {
        "max-age": "60",
        "no-store": None,
        "private": None,
    }


def test_directive_values_may_be_quoted_and_spaced() -> None:
    assert directives(' max-age = "60" ,s-maxage="5",  no-cache="X-Foo"') == {
        "max-age": "60",
        "s-maxage": "5",
        "no-cache": "X-Foo",
    }


def test_empty_directives() -> None:
    assert directives(None) == {}
    assert directives("") == {}
    assert directives(" , ,") == {}


def test_a_quoted_value_may_hold_commas() -> None:
    # RFC 9111 section 5.2: a directive's argument is a token or a quoted-string, and a
    # quoted-string may contain commas (e.g. a field list).
    assert directives('no-cache="Set-Cookie, X-Foo", max-age=5') == {
        "no-cache": "Set-Cookie, X-Foo",
        "max-age": "5",
    }


# -- storable ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_cc", "response_cc"),
    [
        ("no-store", "max-age=60"),
        ("No-Store", "public, max-age=60"),
        ("", "no-store"),
        ("", "no-store, max-age=60"),
        ("", "private"),
        ("", "private, max-age=60"),
        ("", 'private="X-Secret", s-maxage=60'),
    ],
)
def test_no_store_and_private_forbid_storing(request_cc: str, response_cc: str) -> None:
    assert not is_storable(request_cc=request_cc, response_cc=response_cc)


@pytest.mark.parametrize("name", ["Set-Cookie", "set-cookie"])
def test_set_cookie_forbids_storing(name: str) -> None:
    assert not is_storable(response_cc="public, max-age=60", response_headers=((name, "a=b"),))
    assert is_storable(response_cc="public, max-age=60")


@pytest.mark.parametrize(
    ("response_cc", "expected"),
    [
        ("", False),
        ("max-age=60", False),
        ("no-cache", False),
        ("public", True),
        ("public, max-age=60", True),
        ("s-maxage=60", True),
        ("must-revalidate", True),
        ("must-revalidate, max-age=60", True),
    ],
)
def test_a_request_with_authorization_needs_the_response_s_permission(
    response_cc: str, expected: bool
) -> None:
    assert is_storable(response_cc=response_cc, authorization=True) is expected
    # The same response to a request without credentials is storable (ttl given).
    assert is_storable(response_cc=response_cc, authorization=False)


@pytest.mark.parametrize("status", sorted(CACHEABLE_BY_DEFAULT))
def test_statuses_cacheable_by_default_need_a_ttl_or_explicit_freshness(status: int) -> None:
    assert is_storable(status, ttl=True)
    assert not is_storable(status, ttl=False)
    assert is_storable(status, response_cc="max-age=60", ttl=False)
    # no-cache: stored (with a zero lifetime) to be revalidated before each use.
    assert is_storable(status, response_cc="no-cache", ttl=False)


@pytest.mark.parametrize("status", [201, 202, 302, 303, 307, 400, 403, 500, 502, 503, 504])
def test_other_statuses_need_explicit_freshness(status: int) -> None:
    assert not is_storable(status, ttl=True)
    assert not is_storable(status, response_cc="no-cache", ttl=True)
    assert is_storable(status, response_cc="max-age=60", ttl=False)
    assert is_storable(status, response_cc="s-maxage=60", ttl=False)
    assert is_storable(status, response_cc="public", ttl=False)
    assert is_storable(status, response_headers=(("Expires", http_date(T0 + 60)),), ttl=False)


def test_a_partial_content_response_is_not_stored() -> None:
    # RFC 9111 section 3: a 206 may be stored only by a cache that understands ranges;
    # this one keys entries without the Range, so a 206 would be served as the whole.
    assert not is_storable(206, response_cc="max-age=60")
    assert not is_storable(206, response_cc="public, max-age=60")


# -- freshness ---------------------------------------------------------------------------


def freshness(
    cc: str, *pairs: tuple[str, str], ttl: float = 7.0, received_at: float = T0 + 5
) -> float:
    return freshness_lifetime(directives(cc), headers(*pairs), ttl, received_at)


def test_freshness_precedence() -> None:
    dated = (("Date", http_date(T0)), ("Expires", http_date(T0 + 300)))
    assert freshness("s-maxage=10, max-age=20", *dated) == 10.0
    assert freshness("max-age=20, s-maxage=10", *dated) == 10.0
    assert freshness("max-age=20", *dated) == 20.0
    assert freshness("", *dated) == 300.0
    assert freshness("public") == 7.0
    assert freshness("") == 7.0
    assert freshness("", ttl=0.0) == 0.0


def test_zero_max_age_is_not_a_missing_one() -> None:
    assert freshness("max-age=0", ("Expires", http_date(T0 + 300))) == 0.0
    assert freshness("s-maxage=0, max-age=60") == 0.0


def test_invalid_ages_fall_through_to_the_next_source() -> None:
    assert freshness("s-maxage=abc, max-age=20") == 20.0
    assert freshness("max-age=-5") == 7.0
    assert freshness("max-age=1.5") == 7.0


def test_expires_in_the_past_is_no_freshness() -> None:
    assert freshness("", ("Date", http_date(T0)), ("Expires", http_date(T0 - 60))) == 0.0
    assert freshness("", ("Date", http_date(T0)), ("Expires", http_date(T0))) == 0.0


def test_expires_without_date_counts_from_when_it_was_received() -> None:
    # RFC 9110 section 6.6.1: a missing Date is the time the message was received.
    assert freshness("", ("Expires", http_date(T0 + 300)), received_at=T0 + 100) == 200.0
    assert freshness("", ("Expires", http_date(T0 + 300)), received_at=T0 + 400) == 0.0
    # A Date that is there but unreadable is no date to count from.
    assert freshness("", ("Date", "garbled"), ("Expires", http_date(T0 + 300))) == 0.0


def test_an_invalid_expires_means_already_expired() -> None:
    # RFC 9111 section 5.3: "a cache recipient MUST interpret invalid date formats,
    # especially the value '0', as representing a time in the past".
    assert freshness("", ("Date", http_date(T0)), ("Expires", "0"), ttl=60.0) == 0.0
    assert freshness("", ("Date", http_date(T0)), ("Expires", "never"), ttl=60.0) == 0.0


def test_a_non_ascii_digit_is_an_invalid_age_not_a_crash() -> None:
    # ``"²".isdigit()`` is True but ``float("²")`` raises: an upstream's malformed
    # header must be ignored like any other invalid value.
    assert freshness("max-age=\u00b2") == 7.0
    assert initial_age(headers(("Age", "\u00b2"))) == 0.0
    assert stale_window(directives("stale-if-error=\u00b2"), "stale-if-error") == 0.0


def test_initial_age() -> None:
    assert initial_age(headers(("Age", "42"))) == 42.0
    assert initial_age(headers()) == 0.0
    assert initial_age(headers(("Age", "soon"))) == 0.0


# -- vary --------------------------------------------------------------------------------


def test_vary_names_are_lower_cased_sorted_and_unique() -> None:
    varied = headers(("Vary", "Accept-Language, accept"), ("vary", "X-Tenant,ACCEPT, ,"))
    assert vary_names(varied) == ("accept", "accept-language", "x-tenant")


def test_no_vary_is_the_empty_tuple() -> None:
    assert vary_names(headers()) == ()
    assert vary_names(headers(("Vary", ""))) == ()


@pytest.mark.parametrize("values", [("*",), ("Accept, *",), ("Accept", " * ")])
def test_vary_star_never_matches(values: tuple[str, ...]) -> None:
    assert vary_names(headers(*(("Vary", value) for value in values))) is None


# -- stale windows -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["stale-while-revalidate", "stale-if-error"])
def test_stale_windows(name: str) -> None:
    assert stale_window(directives(f"max-age=10, {name}=30"), name) == 30.0
    assert stale_window(directives(f"max-age=10, {name.upper()}=30"), name) == 30.0
    assert stale_window(directives("max-age=10"), name) == 0.0
    assert stale_window(directives(f"{name}=soon"), name) == 0.0
    other = "stale-if-error" if name == "stale-while-revalidate" else "stale-while-revalidate"
    assert stale_window(directives(f"{other}=30"), name) == 0.0


@pytest.mark.parametrize(
    "forbidding", ["must-revalidate", "proxy-revalidate", "no-cache", "s-maxage=10"]
)
def test_revalidation_directives_close_the_stale_windows(forbidding: str) -> None:
    # s-maxage: "incorporates the semantics of the proxy-revalidate response directive"
    # for a shared cache (RFC 9111 section 5.2.2.10).
    cc = directives(f"max-age=10, {forbidding}, stale-while-revalidate=30, stale-if-error=30")
    assert stale_window(cc, "stale-while-revalidate") == 0.0
    assert stale_window(cc, "stale-if-error") == 0.0
