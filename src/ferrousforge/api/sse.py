"""Server-sent events exactly as OpenAI streams them: ``data: {json}`` lines, then [DONE]."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable

import orjson
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from ferrousforge.api.errors import error_response

log = logging.getLogger(__name__)

DONE = b"data: [DONE]\n\n"


def event(data: dict) -> bytes:
    """One ``data:`` line. orjson: the event loop builds one per token per stream, and each
    microsecond it spends is taken from the decode beside it on the same cores."""
    return b"data: " + orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS) + b"\n\n"


def named_event(name: str, data: dict) -> bytes:
    """An ``event: name`` line, then its ``data:`` line (Anthropic's streams name each event)."""
    return b"event: " + name.encode() + b"\n" + event(data)


async def _guarded(events: AsyncIterator[bytes], done: bool) -> AsyncIterator[bytes]:
    """After the headers are sent an error can only travel as an event; then [DONE]."""
    try:
        async for e in events:
            yield e
    except Exception as exc:
        body = json.loads(error_response(exc).body)
        yield event(body)
    if done:
        yield DONE


class _SSEResponse(StreamingResponse):
    """Calls ``on_close`` however the response ends, even if the body never started."""

    def __init__(self, content: AsyncIterator[bytes], on_close: Callable[[], None]) -> None:
        super().__init__(
            content,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


def sse_response(
    events: AsyncIterator[bytes],
    on_close: Callable[[], None],
    openai: bool = True,
    done: bool = True,
) -> StreamingResponse:
    """Stream ``events``; ``on_close`` frees the request's slots when the response ends.

    ``openai``: an error becomes OpenAI's error event, and with ``done`` (Chat Completions;
    not the Responses API) ``[DONE]`` ends the stream; without ``openai`` the events are
    sent as they are (they end themselves, errors included: Anthropic's Messages)."""
    return _SSEResponse(_guarded(events, done) if openai else events, on_close)
