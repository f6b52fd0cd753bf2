"""The admin API's OpenAPI document: public paths, references, field rules. (That it
describes the operations the app registers is checked on a running gateway, in
``tests/integration/test_admin_api.py``.)"""

from __future__ import annotations

import re

import pytest

from gateway.admin import fields
from gateway.admin.app import PUBLIC_PATHS
from gateway.admin.openapi import DOCUMENT


def test_only_the_probes_and_the_dashboard_page_are_public() -> None:
    public = {
        path
        for path, operations in DOCUMENT["paths"].items()
        for operation in operations.values()
        if operation.get("security") == []
    }
    assert public == PUBLIC_PATHS == {"/", "/healthz", "/readyz"}
    for path, operations in DOCUMENT["paths"].items():
        for operation in operations.values():
            assert ("401" in operation["responses"]) == (path not in PUBLIC_PATHS), path


def test_every_ref_resolves() -> None:
    text = repr(DOCUMENT)
    for kind, name in re.findall(r"#/components/(\w+)/(\w+)", text):
        assert name in DOCUMENT["components"][kind], name


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("acme", True),
        ("a@b.example", True),
        ("x" * 128, True),
        ("x" * 129, False),
        ("", False),
        ("a b", False),
        ("a\nb", False),
        ("caf\u00e9", False),
    ],
)
def test_identifier_rule_is_one_for_python_and_the_document(value: str, valid: bool) -> None:
    # The document's pattern, read as ECMA-262 reads it: anchored, ASCII classes.
    assert bool(re.fullmatch(fields.IDENTIFIER[1:-1], value, re.ASCII)) is valid
    body = {"consumer": value}
    if valid:
        assert fields.identifier(body, "consumer", required=True) == value
    else:
        with pytest.raises(Exception, match="consumer"):
            fields.identifier(body, "consumer", required=True)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("90d", 90 * 86400.0),
        ("1.5s", 1.5),
        ("250ms", 0.25),
        (0, 0.0),
        (3600, 3600.0),
        (fields.MAX_SECONDS, float(fields.MAX_SECONDS)),
        (fields.MAX_SECONDS + 1, None),
        (-1, None),
        (True, None),
        ("5", None),
        (" 5s", None),
        ("\u0665s", None),  # an Arabic-Indic digit: \d in Python, not in JSON Schema
        ("1" * 10 + "d", None),
    ],
)
def test_duration_rule(value: object, seconds: float | None) -> None:
    if seconds is None:
        with pytest.raises(Exception, match="ttl"):
            fields.duration({"ttl": value}, "ttl", None)
    else:
        assert fields.duration({"ttl": value}, "ttl", None) == seconds
