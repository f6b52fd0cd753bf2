"""``assemble``: fan-out outcomes into one JSON answer, spliced from the raw bytes."""

from __future__ import annotations

import orjson
import pytest

from gateway.upstream.assemble import (
    Assembled,
    Outcome,
    Part,
    Reason,
    assemble,
    make_part,
    partial_header,
)


def part(name: str, required: bool = False, **fallback: object) -> Part:
    has = "fallback" in fallback
    return make_part(name, required, fallback.get("fallback"), has)


def ok(name: str, body: bytes) -> Outcome:
    return Outcome(name=name, body=body, reason=None, detail="", elapsed=0.01)


def missing(name: str, reason: Reason | None, detail: str = "") -> Outcome:
    return Outcome(name=name, body=None, reason=reason, detail=detail, elapsed=0.05)


PARTS = [part("user", required=True), part("orders", fallback={"items": []}), part("inventory")]


def test_make_part_encodes_key_and_fallback_once() -> None:
    made = make_part("orders", False, {"items": []}, True)
    assert made == Part(name="orders", required=False, fallback=b'{"items":[]}', key=b'"orders":')


def test_make_part_without_fallback_uses_null_even_if_a_value_is_passed() -> None:
    assert make_part("a", False, {"ignored": True}, False).fallback == b"null"


def test_make_part_with_explicit_null_fallback_encodes_null() -> None:
    assert make_part("a", False, None, True).fallback == b"null"


def test_make_part_escapes_the_name_as_json() -> None:
    assert orjson.loads(b"{" + make_part('we"ird', False, None, False).key + b"1}") == {'we"ird': 1}


def test_all_parts_present_answers_200_with_each_body_as_sent() -> None:
    user = b'{"id": 7, "name": "Ada"}'
    orders = b'{"items":[{"id":1}]}'
    inventory = b"[1, 2, 3]"
    result = assemble(
        PARTS, [ok("user", user), ok("orders", orders), ok("inventory", inventory)], True
    )
    assert result.status == 200
    assert result.missing == ()
    assert result.failed is None
    assert orjson.loads(result.body) == {
        "user": {"id": 7, "name": "Ada"},
        "orders": {"items": [{"id": 1}]},
        "inventory": [1, 2, 3],
    }
    # Spliced, not re-encoded: the upstream's own bytes (spaces included) are in the body.
    assert user in result.body
    assert inventory in result.body
    assert b"_partial" not in result.body


def test_members_follow_config_order() -> None:
    result = assemble(PARTS, [ok("user", b"1"), ok("orders", b"2"), ok("inventory", b"3")], False)
    assert list(orjson.loads(result.body)) == ["user", "orders", "inventory"]


def test_missing_optional_part_becomes_its_fallback_or_null() -> None:
    result = assemble(
        PARTS,
        [ok("user", b'{"id":7}'), missing("orders", "timeout"), missing("inventory", "status")],
        False,
    )
    assert result.status == 200
    assert result.failed is None
    assert orjson.loads(result.body) == {
        "user": {"id": 7},
        "orders": {"items": []},
        "inventory": None,
    }


def test_missing_lists_name_and_reason_in_config_order() -> None:
    parts = [part("a"), part("b"), part("c"), part("d")]
    result = assemble(
        parts,
        [missing("a", "status"), ok("b", b"1"), missing("c", "timeout"), missing("d", "cancelled")],
        False,
    )
    assert result.missing == (("a", "status"), ("c", "timeout"), ("d", "cancelled"))


def test_missing_without_a_reason_counts_as_error() -> None:
    result = assemble([part("a")], [missing("a", None)], False)
    assert result.missing == (("a", "error"),)


def test_partial_listing_is_in_the_body_only_when_the_route_asks() -> None:
    outcomes = [ok("user", b"{}"), missing("orders", "timeout"), missing("inventory", "status")]
    without = assemble(PARTS, outcomes, partial_in_body=False)
    with_it = assemble(PARTS, outcomes, partial_in_body=True)
    assert "_partial" not in orjson.loads(without.body)
    assert orjson.loads(with_it.body)["_partial"] == [
        {"part": "orders", "reason": "timeout"},
        {"part": "inventory", "reason": "status"},
    ]
    assert without.missing == with_it.missing


def test_partial_listing_is_absent_when_nothing_is_missing_even_if_asked() -> None:
    result = assemble([part("a")], [ok("a", b"1")], partial_in_body=True)
    assert orjson.loads(result.body) == {"a": 1}


@pytest.mark.parametrize(
    ("reason", "status"),
    [("timeout", 504), ("error", 502), ("status", 502), ("cancelled", 502), (None, 502)],
)
def test_missing_required_part_fails_the_answer(reason: Reason | None, status: int) -> None:
    result = assemble(
        PARTS,
        [missing("user", reason, "upstream said no"), ok("orders", b"1"), ok("inventory", b"2")],
        True,
    )
    assert result.status == status
    assert result.failed == ("user", reason or "error", "upstream said no")
    assert result.body == b""
    assert result.missing == ()


def test_first_missing_required_part_in_config_order_is_named() -> None:
    parts = [part("opt"), part("first", required=True), part("second", required=True)]
    result = assemble(
        parts,
        [missing("opt", "timeout"), missing("first", "status"), missing("second", "timeout")],
        False,
    )
    assert result == Assembled(status=502, body=b"", missing=(), failed=("first", "status", ""))


def test_required_part_present_does_not_fail() -> None:
    result = assemble(
        PARTS, [ok("user", b"{}"), missing("orders", "error"), ok("inventory", b"0")], False
    )
    assert result.status == 200
    assert result.missing == (("orders", "error"),)


def test_outcomes_must_match_parts_one_to_one() -> None:
    with pytest.raises(ValueError):
        assemble(PARTS, [ok("user", b"{}")], False)


def test_partial_header_lists_parts_with_reasons() -> None:
    assert (
        partial_header([("orders", "timeout"), ("inventory", "status")])
        == "orders;reason=timeout, inventory;reason=status"
    )


def test_partial_header_of_one_part_has_no_separator() -> None:
    assert partial_header([("orders", "cancelled")]) == "orders;reason=cancelled"


def test_partial_header_of_nothing_is_empty() -> None:
    assert partial_header([]) == ""


def test_partial_header_matches_what_assemble_reports() -> None:
    result = assemble(
        PARTS,
        [ok("user", b"{}"), missing("orders", "timeout"), missing("inventory", "status")],
        False,
    )
    assert partial_header(result.missing) == "orders;reason=timeout, inventory;reason=status"
