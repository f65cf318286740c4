"""Drive an ASGI app in-process for one request whose body is already read, and hand back
its messages in batches, so a replica can stream a response through Ray.

Consecutive body chunks are joined into one message: under load a replica sends one Ray
object per batch, not one per token, and the client still gets every byte in order.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from starlette.types import ASGIApp, Message

# The parts of an ASGI HTTP scope that travel between processes (plain data only).
SCOPE_KEYS = (
    "type",
    "asgi",
    "http_version",
    "method",
    "scheme",
    "path",
    "raw_path",
    "root_path",
    "query_string",
    "headers",
    "client",
    "server",
)
_END = object()
DISCONNECT_GRACE_S = 0.5


def portable_scope(scope: dict[str, Any]) -> dict[str, Any]:
    """An HTTP scope without the server's own objects (app, state, extensions...)."""
    out = {k: scope[k] for k in SCOPE_KEYS if k in scope}
    out["headers"] = [(bytes(k), bytes(v)) for k, v in scope.get("headers", ())]
    return out


def coalesce(messages: list[Message]) -> list[Message]:
    """Join runs of ``http.response.body`` messages into one (the last one's more_body)."""
    out: list[Message] = []
    for m in messages:
        prev = out[-1] if out else None
        if (
            prev is not None
            and m["type"] == "http.response.body"
            and prev["type"] == "http.response.body"
        ):
            out[-1] = {
                "type": "http.response.body",
                "body": prev.get("body", b"") + m.get("body", b""),
                "more_body": m.get("more_body", False),
            }
        else:
            out.append(m)
    return out


def add_header(message: Message, name: bytes, value: bytes) -> Message:
    """``message`` (http.response.start) with one more header."""
    return {**message, "headers": [*message.get("headers", []), (name, value)]}


async def drive(
    app: ASGIApp,
    scope: dict[str, Any],
    body: bytes,
    headers: list[tuple[bytes, bytes]] = (),  # type: ignore[assignment]
) -> AsyncIterator[list[Message]]:
    """Run ``app`` on one HTTP request; yield its messages in batches until it is done.

    The app's first receive() gets the whole body; later ones wait until the caller stops
    iterating (the client left), then say ``http.disconnect``. ``headers`` are added to the
    response's start message. Closing the iterator early cancels the app.
    """
    queue: asyncio.Queue[Any] = asyncio.Queue()
    left = asyncio.Event()
    body_sent = False

    async def receive() -> Message:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await left.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start" and headers:
            for name, value in headers:
                message = add_header(message, name, value)
        queue.put_nowait(message)

    async def run() -> None:
        try:
            await app(scope, receive, send)
        finally:
            queue.put_nowait(_END)

    task = asyncio.create_task(run())
    try:
        done = False
        while not done:
            batch = [await queue.get()]
            while not queue.empty():
                batch.append(queue.get_nowait())
            if batch[-1] is _END:
                batch.pop()
                done = True
            if batch:
                yield coalesce(batch)
        await task  # the app's own exception, if any, after its messages
    finally:
        left.set()  # the app sees http.disconnect and may end on its own...
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(asyncio.shield(task), DISCONNECT_GRACE_S)
        if not task.done():  # ...or is cancelled, which frees its engine slot as well
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
