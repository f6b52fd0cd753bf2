"""The idempotency policy's pure parts: the key's sf-string and the request fingerprint."""

from __future__ import annotations

import hashlib

import orjson
import pytest

from gateway.policies.idempotency.policy import _fingerprint, _is_json, _length_prefixed, parse_key


@pytest.mark.parametrize(
    ("value", "key"),
    [
        ('"8e03978e-40d5"', "8e03978e-40d5"),
        ('  "8e03978e-40d5"  ', "8e03978e-40d5"),  # white space around it
        ('"a b"', "a b"),
        (r'"say \"hi\" \\ bye"', 'say "hi" \\ bye'),  # escapes, unescaped
        ('"' + "k" * 255 + '"', "k" * 255),
        ('""', None),  # empty
        ('"' + "k" * 256 + '"', None),  # too long
        ("8e03978e", None),  # not quoted
        ('"a"b"', None),  # a bare quote inside
        ('"a\\b"', None),  # an escape of anything but " or \
        ('"caf\u00e9"', None),  # not ASCII
        ('"tab\there"', None),  # a control character
    ],
)
def test_keys_are_sf_strings(value: str, key: str | None) -> None:
    assert parse_key(value) == key


def reference_fingerprint(method: str, path: str, query: str, body: bytes) -> str:
    """The fingerprint as the first version computed it (one update per part): records
    already in Redis must still match the same requests."""
    digest = hashlib.sha256()
    for part in (method.encode(), path.encode(), query.encode(), body):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


@pytest.mark.parametrize("query", ["", "a=1&b=2"])
@pytest.mark.parametrize("body", [b"", b"plain text", b'{"b": [2, {"d": 1, "c": 0}], "a": 1}'])
def test_the_fingerprint_is_unchanged(query: str, body: bytes) -> None:
    raw = _fingerprint(_length_prefixed(b"POST"), "/v1/orders", query, False, body)
    assert raw == reference_fingerprint("POST", "/v1/orders", query, body)
    if body.startswith(b"{"):
        canonical = orjson.dumps(orjson.loads(body), option=orjson.OPT_SORT_KEYS)
        json = _fingerprint(_length_prefixed(b"POST"), "/v1/orders", query, True, body)
        assert json == reference_fingerprint("POST", "/v1/orders", query, canonical)


def test_json_bodies_are_canonical_and_others_are_not() -> None:
    def fingerprint(body: bytes, is_json: bool) -> str:
        return _fingerprint(_length_prefixed(b"POST"), "/orders", "", is_json, body)

    assert fingerprint(b'{"a":1,"b":2}', True) == fingerprint(b'{ "b": 2, "a": 1 }', True)
    assert fingerprint(b'{"a":1,"b":2}', False) != fingerprint(b'{ "b": 2, "a": 1 }', False)
    # Declared JSON that does not parse is fingerprinted as its bytes.
    assert fingerprint(b"{a: 1}", True) == fingerprint(b"{a: 1}", False)


@pytest.mark.parametrize(
    ("content_type", "is_json"),
    [
        ("application/json", True),
        ("Application/JSON; charset=utf-8", True),
        ("application/merge-patch+json", True),
        ("application/problem+json; charset=utf-8", True),
        ("text/plain", False),
        ("application/jsonx", False),
        ("not a media type", False),
        (None, False),
    ],
)
def test_json_is_told_by_the_media_type(content_type: str | None, is_json: bool) -> None:
    # Twice: the second answer comes from the memo and must be the same.
    assert _is_json(content_type) is is_json
    assert _is_json(content_type) is is_json
