"""Reading a request body whole, but never more than a limit."""

from __future__ import annotations

from aiohttp import web


class BodyTooLarge(Exception):
    """The body (declared or as counted while it arrived) is over the limit."""


async def read_bounded(request: web.BaseRequest, limit: int) -> bytes:
    """The whole body; ``BodyTooLarge`` as soon as it is known to exceed ``limit``.

    A declared length is checked before anything is read; an undeclared (chunked) one
    is counted as it arrives, so an oversized body is never held whole (one that has
    arrived whole already sits in aiohttp's buffer, which stops reading past its high
    water mark, 128 KiB by default).
    """
    if request.content_length is not None and request.content_length > limit:
        raise BodyTooLarge
    arrived = read_arrived(request, limit)
    if arrived is not None:
        return arrived
    content = request.content
    chunks: list[bytes] = []
    size = 0
    # read(n) returns what has arrived (up to n), not n bytes: loop to the end.
    while chunk := await content.read(limit + 1 - size):
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
    return b"".join(chunks)


def read_arrived(request: web.BaseRequest, limit: int) -> bytes | None:
    """The whole body if all of it has arrived already, as a small body does with its
    headers; else None, and nothing is read. ``BodyTooLarge`` over ``limit``.

    No coroutine: a caller on the request path tries this first and awaits
    ``read_bounded`` only when it returns None.
    """
    content = request.content
    if not content.is_eof():
        return None
    # One call for the buffer, rather than awaiting read() until it returns b"".
    body = content.read_nowait()
    if len(body) > limit:
        raise BodyTooLarge
    return body
