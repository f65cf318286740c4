"""Reading engine streams for the API: fan-in of several choices, and client disconnects."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from starlette.requests import Request

from ferrousforge.engine.engine import RequestOutput, RequestStream
from ferrousforge.engine.runner import LogprobEntry

log = logging.getLogger(__name__)
T = TypeVar("T")
_DISCONNECT_POLL_S = 0.25


class ClientDisconnected(Exception):
    """The client went away before the response was ready."""


async def merge(
    streams: list[RequestStream],
) -> AsyncIterator[tuple[int, RequestOutput]]:
    """(choice index, output) from all streams as they arrive; aborts every stream on exit."""
    if len(streams) == 1:  # the common case needs no fan-in task per token
        try:
            async for out in streams[0]:
                yield 0, out
        finally:
            streams[0].abort()
        return
    queue: asyncio.Queue[tuple[int, RequestOutput | None, BaseException | None]] = asyncio.Queue()

    async def pump(i: int, stream: RequestStream) -> None:
        try:
            async for out in stream:
                queue.put_nowait((i, out, None))
        except asyncio.CancelledError:
            return
        except Exception as e:  # handed to the consumer, which raises it
            queue.put_nowait((i, None, e))
            return
        queue.put_nowait((i, None, None))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        left = len(streams)
        while left:
            i, out, error = await queue.get()
            if error is not None:
                raise error
            if out is None:
                left -= 1
                continue
            yield i, out
    finally:
        for t in tasks:
            t.cancel()
        for s in streams:
            s.abort()  # frees the slot if the client left or an error cut the stream


@dataclass(slots=True)
class Choice:
    """One finished choice, accumulated from its stream."""

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[LogprobEntry] = field(default_factory=list)
    prompt_logprobs: list[LogprobEntry] = field(default_factory=list)
    final: RequestOutput | None = None

    def add(self, out: RequestOutput) -> None:
        self.text += out.text
        self.token_ids.extend(out.token_ids)
        self.logprobs.extend(out.logprobs or [])
        self.prompt_logprobs.extend(out.prompt_logprobs or [])
        if out.finish_reason is not None:
            self.final = out


async def collect(streams: list[RequestStream]) -> list[Choice]:
    """Drain every stream; one Choice per stream, in order."""
    choices = [Choice() for _ in streams]
    async for i, out in merge(streams):
        choices[i].add(out)
    return choices


async def unless_disconnected(request: Request, work: Callable[[], Awaitable[T]]) -> T:
    """Run ``work``; cancel it (freeing its slots) if the client disconnects meanwhile."""
    task = asyncio.ensure_future(work())
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=_DISCONNECT_POLL_S)
            if done:
                return task.result()
            if await request.is_disconnected():
                log.info("client disconnected: cancelling its generation")
                raise ClientDisconnected
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
