"""Single HTTP requests made before and after measuring: probes, GETs and POSTs."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from bench.errors import BenchError


def probe(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str]]:
    """One GET before measuring, so a misconfigured server (404s are fast) is caught."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            response.read()
            return response.status, dict(response.headers.items())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers.items())
    except OSError as exc:
        raise BenchError(f"probe of {url} failed: {exc}") from exc


def expect_status(
    url: str, what: str, status: int, headers: dict[str, str] | None = None
) -> dict[str, str]:
    got, answer = probe(url, headers)
    if got != status:
        raise BenchError(f"{what}: GET {url} answered {got}, expected {status}")
    return answer


def expect_ok(url: str, what: str, headers: dict[str, str] | None = None) -> dict[str, str]:
    return expect_status(url, what, 200, headers)


def post(
    url: str, body: bytes, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One JSON POST: status, headers, body (error statuses too)."""
    request = urllib.request.Request(
        url,
        data=body,
        headers={"Content-Type": "application/json", **(headers or {})},
        method="POST",
    )
    return _send(request)


def fetch(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One GET: status, headers, body (304 and error statuses too)."""
    return _send(urllib.request.Request(url, headers=headers or {}))


def _send(request: urllib.request.Request) -> tuple[int, dict[str, str], bytes]:
    """``request``'s answer: status, headers, body (error statuses too)."""
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, dict(response.headers.items()), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers.items()), exc.read()
    except OSError as exc:
        raise BenchError(f"{request.get_method()} {request.full_url} failed: {exc}") from exc


def upstream_count(origin: str) -> int:
    """Requests bench/counting_upstream.py has answered so far (its /count is not one)."""
    status, _, raw = fetch(origin + "/count")
    try:
        count = json.loads(raw).get("requests") if status == 200 else None
    except ValueError:
        count = None
    if not isinstance(count, int):
        raise BenchError(f"the counting upstream answered {status}: {raw[:200]!r}")
    return count
