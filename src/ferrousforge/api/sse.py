"""Server-sent events exactly as OpenAI streams them: ``data: {json}`` lines, then [DONE]."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator

from fastapi.responses import StreamingResponse

from ferrousforge.api.errors import error_response

log = logging.getLogger(__name__)

DONE = "data: [DONE]\n\n"


def event(data: dict) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n"


async def _guarded(events: AsyncIterator[str]) -> AsyncIterator[str]:
    """After the headers are sent an error can only travel as an event; then [DONE]."""
    try:
        async for e in events:
            yield e
    except Exception as exc:
        body = json.loads(error_response(exc).body)
        yield event(body)
    yield DONE


def sse_response(events: AsyncIterator[str]) -> StreamingResponse:
    """Stream ``events``; a client disconnect cancels the generator, whose cleanup aborts."""
    return StreamingResponse(
        _guarded(events),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
