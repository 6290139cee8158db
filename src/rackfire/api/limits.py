"""A size limit on every request body, enforced while it is read: a Content-Length over the
limit is answered 413 before any of the body is read, and a chunked body is cut off (and
answered 413) as soon as it passes the limit, so a huge body never sits in memory."""

from __future__ import annotations

import json
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rackfire.errors import TooLarge

JSON_LIMIT = 2 << 20  # a stack file, a selector, host facts: far below this


class _Exceeded(Exception):
    pass


class BodyLimit:
    """ASGI middleware; `limit_of(path)` is the limit of a request's body in bytes."""

    def __init__(self, app: ASGIApp, limit_of: Callable[[str], int]) -> None:
        self.app = app
        self.limit_of = limit_of

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_of(scope["path"])
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > limit:
            await _refuse(send, limit)
            return
        received = 0
        exceeded = started = False

        async def counted() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True
                    raise _Exceeded
            return message

        async def sending(message: Message) -> None:
            nonlocal started
            if exceeded and not started:
                return  # whatever the route made of the cut body: the 413 is sent instead
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted, sending)
        except Exception:
            if not exceeded or started:
                raise
        if exceeded and not started:
            await _refuse(send, limit)


async def _refuse(send: Send, limit: int) -> None:
    err = TooLarge(f"the request body is larger than {size_text(limit)}",
                   hint="an image tarball or an app source is uploaded on its own route; "
                        "leave build output and data out of an app dir")
    body = json.dumps({"error": err.to_dict()}).encode()
    await send({"type": "http.response.start", "status": err.http_status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def size_text(limit: int) -> str:
    return f"{limit >> 30} GiB" if limit >= 1 << 30 else f"{limit >> 20} MiB"
