"""One access log line per request: valid JSON whatever the request's strings hold."""

from __future__ import annotations

import orjson

from gateway.observability import access_line


def test_awkward_strings_are_escaped_and_numbers_kept() -> None:
    path = '/v1/q"u\\o\nte/\u00e9\U0001f600'
    line = access_line(
        1_764_547_200.1234,
        "req-1",
        "GET",
        path,
        None,
        404,
        0.0012345,
        [('a"b', 0.0005, "timeout"), ("c", 0.25, "ok")],
        None,
    )
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1
    record = orjson.loads(line)
    assert record == {
        "ts": 1_764_547_200.123,
        "request_id": "req-1",
        "method": "GET",
        "path": path,
        "route": None,
        "status": 404,
        "duration_ms": 1.235,  # 1.2345 ms: thousandths, rounded half up
        "upstreams": [
            {"name": 'a"b', "duration_ms": 0.5, "outcome": "timeout"},
            {"name": "c", "duration_ms": 250.0, "outcome": "ok"},
        ],
    }


def test_the_trace_id_is_there_when_the_request_had_one() -> None:
    trace = "0af7651916cd43dd8448eb211c80319c"
    record = orjson.loads(access_line(0.0, "r", "POST", "/", "x", 200, 0.0, None, trace))
    assert record["trace_id"] == trace
    assert "upstreams" not in record
    # Next to the request id, where a reader of the raw line looks for it.
    assert list(record)[:3] == ["ts", "request_id", "trace_id"]
