"""Which headers cross the gateway, each way."""

from __future__ import annotations

from multidict import CIMultiDict, CIMultiDictProxy

from gateway.upstream.headers import (
    downstream_response_headers,
    request_drop_set,
    upstream_request_headers,
)


def incoming(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


def up(
    *pairs: tuple[str, str],
    trust: bool = False,
    client_ip: str = "10.0.0.7",
    style: tuple[bool, bool] = (True, True),
) -> CIMultiDict[str]:
    return upstream_request_headers(
        incoming(*pairs),
        drop=request_drop_set(frozenset({"X-Tenant-Id"}), trust),
        trust_forwarded=trust,
        x_forwarded=style[0],
        forwarded=style[1],
        client_ip=client_ip,
        scheme="https",
        via="1.1 gw",
    )


def test_forwarded_quotes_a_host_with_a_port_and_an_ipv6_client() -> None:
    headers = up(("Host", "api.example:8443"), client_ip="::1")
    assert headers["Forwarded"] == 'for="[::1]";proto=https;host="api.example:8443"'
    assert headers["X-Forwarded-Host"] == "api.example:8443"


def test_forwarded_plain_host_is_a_token() -> None:
    assert up(("Host", "api.example"))["Forwarded"] == "for=10.0.0.7;proto=https;host=api.example"


def test_untrusted_forwarding_headers_are_replaced() -> None:
    headers = up(
        ("X-Forwarded-For", "1.2.3.4"), ("X-Forwarded-Proto", "http"), ("Forwarded", "for=x")
    )
    assert headers.getall("X-Forwarded-For") == ["10.0.0.7"]
    assert headers.getall("X-Forwarded-Proto") == ["https"]
    assert headers.getall("Forwarded") == ["for=10.0.0.7;proto=https"]


def test_trusted_forwarding_headers_are_extended() -> None:
    headers = up(("X-Forwarded-For", "1.2.3.4"), ("Forwarded", "for=1.2.3.4"), trust=True)
    assert headers["X-Forwarded-For"] == "1.2.3.4, 10.0.0.7"
    assert headers["Forwarded"] == "for=1.2.3.4, for=10.0.0.7;proto=https"


def test_headers_named_by_connection_are_dropped_both_ways() -> None:
    headers = up(("Connection", "X-Hop, close"), ("X-Hop", "1"), ("X-Keep", "2"))
    assert "X-Hop" not in headers
    assert "Connection" not in headers
    assert headers["X-Keep"] == "2"
    down = downstream_response_headers(
        incoming(("Connection", "x-hop"), ("X-Hop", "1"), ("Content-Length", "3"), ("ETag", '"a"')),
        via="1.1 gw",
    )
    assert dict(down) == {"ETag": '"a"', "Via": "1.1 gw"}


def test_via_is_extended_and_repeated_headers_are_kept() -> None:
    headers = up(("Via", "1.0 edge"), ("Accept", "a"), ("Accept", "b"))
    assert headers["Via"] == "1.0 edge, 1.1 gw"
    assert headers.getall("Accept") == ["a", "b"]


def test_forwarding_header_styles() -> None:
    only_x = up(("Host", "h"), style=(True, False))
    assert "Forwarded" not in only_x
    assert only_x["X-Forwarded-For"] == "10.0.0.7"
    only_rfc = up(("Host", "h"), style=(False, True))
    assert "X-Forwarded-For" not in only_rfc
    assert "X-Forwarded-Proto" not in only_rfc
    assert only_rfc["Forwarded"] == "for=10.0.0.7;proto=https;host=h"


def test_configured_identity_headers_are_stripped_from_clients() -> None:
    headers = up(("X-Tenant-Id", "forged"), ("X-Consumer-Id", "forged"), ("X-Other", "ok"))
    assert "X-Tenant-Id" not in headers
    assert "X-Consumer-Id" not in headers
    assert headers["X-Other"] == "ok"
