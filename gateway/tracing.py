"""W3C Trace Context (https://www.w3.org/TR/trace-context/): keep the caller's trace or
start one, and give every upstream call a span id of its own.

Rules:
- A valid incoming ``traceparent`` (version 00, or a higher version parsed as the spec
  says: its first four fields, the rest ignored) keeps its trace id and flags, and its
  ``tracestate`` goes upstream unchanged (several header fields joined with commas, as
  RFC 9110 section 5.3 allows).
- A missing or invalid one starts a new trace; a ``tracestate`` that came with it is
  dropped, since it described a trace that no longer continues (spec section 3.3).
- The gateway sends version 00 upstream with the sampled flag only: version 00 says
  the other flag bits must be zero, and the gateway records no spans, so a new trace
  is not sampled.
- Ids come from ``random.getrandbits`` (the module's Mersenne Twister, seeded from the
  OS and reseeded after a fork), not ``os.urandom``: trace ids must be unique, not
  secret, and a syscall per upstream call is a cost the proxy route would measure.
"""

from __future__ import annotations

import random
import re
from typing import NamedTuple

from multidict import MultiMapping

_getrandbits = random.getrandbits

#: version "-" trace-id "-" parent-id "-" flags, then (a higher version only) more.
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16


class TraceContext(NamedTuple):
    """One request's place in a trace: what the gateway passes to its upstreams.

    A named tuple, its ids made inline below: one is made per request, and this ran
    8 fewer bytecode instructions than a slotted class with an ``__init__`` and id
    helper functions (bench.pycost).
    """

    trace_id: str
    #: The caller's span id; None when the gateway started the trace.
    parent_id: str | None
    flags: str
    #: ``tracestate`` as received (None when absent or when the trace was restarted).
    state: str | None

    def child(self) -> str:
        """The ``traceparent`` of one upstream call: this trace, a new span id."""
        # All zeros is the one invalid id; ``or 1`` costs nothing in the other 2**64 - 1.
        return f"00-{self.trace_id}-{_getrandbits(64) or 1:016x}-{self.flags}"


def parse_traceparent(value: str) -> tuple[str, str, str] | None:
    """(trace id, parent id, flags) of a valid ``traceparent``, else None."""
    match = _TRACEPARENT.fullmatch(value)
    if match is None:
        return None
    version, trace_id, parent_id, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest is not None):
        return None
    if trace_id == _ZERO_TRACE or parent_id == _ZERO_SPAN:
        return None
    # Only the sampled bit is defined for version 00, which is what goes upstream.
    return trace_id, parent_id, "01" if int(flags, 16) & 1 else "00"


def incoming_trace(headers: MultiMapping[str]) -> TraceContext:
    """The trace a request belongs to: the caller's when it sent a valid one."""
    value = headers.get("traceparent")
    if value is not None:
        parsed = parse_traceparent(value)
        if parsed is not None:
            trace_id, parent_id, flags = parsed
            state = headers.get("tracestate")
            if state is not None:
                fields = headers.getall("tracestate")
                if len(fields) > 1:
                    state = ",".join(fields)
            return TraceContext(trace_id, parent_id, flags, state)
    # A new trace id, never all zeros (the one invalid value). Made with the tuple's
    # own constructor: a named tuple's generated ``__new__`` runs 10 bytecode
    # instructions more, on every request that starts a trace.
    return _new_tuple(TraceContext, (f"{_getrandbits(128) or 1:032x}", None, "00", None))


_new_tuple = tuple.__new__
