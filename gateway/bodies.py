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
    content = request.content
    if content.is_eof():
        # All of it has arrived already, as a small body does with its headers: take the
        # buffer in one call rather than awaiting read() until it returns b"".
        body = content.read_nowait()
        if len(body) > limit:
            raise BodyTooLarge
        return body
    chunks: list[bytes] = []
    size = 0
    # read(n) returns what has arrived (up to n), not n bytes: loop to the end.
    while chunk := await content.read(limit + 1 - size):
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
    return b"".join(chunks)
