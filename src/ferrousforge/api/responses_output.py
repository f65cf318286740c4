"""A chat job's output as a Responses API Response: output items, whole or as SSE events.

The chat parser's events map onto output items: content onto a ``message`` item with one
``output_text`` part, reasoning onto a ``reasoning`` item, each call onto a ``function_call``
item. A stream opens an item when its first event arrives and closes it when another kind
begins or the output ends, with the Responses event types and a ``sequence_number``.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from ferrousforge.api.chat import ChatJob
from ferrousforge.api.errors import error_response
from ferrousforge.api.response_store import Item, ResponseStore
from ferrousforge.api.responses_schema import ResponsesRequest
from ferrousforge.api.sse import event, sse_response
from ferrousforge.api.streams import ClientDisconnected, collect, merge, unless_disconnected
from ferrousforge.chat.parser import CallDelta, ContentDelta, Event, ParsedMessage, ReasoningDelta
from ferrousforge.chat.tools import ToolCall


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


@dataclass(slots=True)
class Turn:
    """One Responses request being answered: what to echo, what to store afterwards."""

    body: ResponsesRequest
    items: list[Item]  # the conversation the model answers (without instructions)
    job: ChatJob
    store: ResponseStore | None  # None: store false
    id: str = field(default_factory=lambda: _id("resp"))
    created_at: int = field(default_factory=lambda: int(time.time()))

    def response(
        self, status: str, output: list[Item], usage: dict | None, error: dict | None = None
    ) -> dict[str, Any]:
        b = self.body
        fmt = b.text.format if b.text and b.text.format else None
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "background": False,
            "error": error,
            "incomplete_details": (
                {"reason": "max_output_tokens"} if status == "incomplete" else None
            ),
            "instructions": b.instructions,
            "max_output_tokens": b.max_output_tokens,
            "max_tool_calls": None,
            "model": self.job.model_id,
            "output": output,
            "parallel_tool_calls": b.parallel_tool_calls,
            "previous_response_id": b.previous_response_id,
            "reasoning": {"effort": None, "summary": None},
            "service_tier": "default",
            "store": b.store,
            "temperature": b.temperature,
            "text": {
                "format": fmt.model_dump(by_alias=True, exclude_none=True)
                if fmt
                else {"type": "text"}
            },
            "tool_choice": b.tool_choice if b.tool_choice is not None else "auto",
            "tools": b.tools or [],
            "top_p": b.top_p,
            "truncation": "disabled",
            "usage": usage,
            "user": b.user,
            "metadata": b.metadata or {},
        }

    def usage(self, output_tokens: int, cached: int) -> dict[str, Any]:
        input_tokens = len(self.job.prompts[0].ids)
        return {
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": cached},
            "output_tokens": output_tokens,
            # Reasoning is not counted apart from the rest of the output.
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input_tokens + output_tokens,
        }

    def remember(self, output: list[Item], response: dict[str, Any]) -> None:
        """Keep the conversation for a later ``previous_response_id``, and the Response for
        ``GET /v1/responses/{id}`` (unless store false)."""
        if self.store is not None:
            self.store.put(self.id, self.items, output, response)


def _status(finish_reason: str | None) -> str:
    return "incomplete" if finish_reason == "length" else "completed"


def message_item(text: str, status: str) -> Item:
    part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    return {
        "id": _id("msg"),
        "type": "message",
        "role": "assistant",
        "status": status,
        "content": [part],
    }


def reasoning_item(text: str, status: str) -> Item:
    return {
        "id": _id("rs"),
        "type": "reasoning",
        "summary": [],
        "content": [{"type": "reasoning_text", "text": text}],
        "status": status,
    }


def call_item(call: ToolCall) -> Item:
    return {
        "id": _id("fc"),
        "type": "function_call",
        "status": "completed",
        "call_id": call.id,
        "name": call.name,
        "arguments": call.arguments,
    }


def output_items(msg: ParsedMessage, status: str) -> list[Item]:
    """Reasoning, then the message (always one when there are no calls), then the calls."""
    out = []
    if msg.reasoning:
        out.append(reasoning_item(msg.reasoning, status))
    if msg.content or not msg.tool_calls:
        out.append(message_item(msg.content, status))
    out += [call_item(c) for c in msg.tool_calls]
    return out


async def respond(turn: Turn, request: Request) -> Response:
    job = turn.job
    if turn.body.stream:
        return sse_response(_events(turn), on_close=job.abort, done=False)
    try:
        choices = await unless_disconnected(request, lambda: collect(job.streams))
    except ClientDisconnected:
        return Response(status_code=499)
    final = choices[0].final
    assert final is not None
    text = choices[0].text
    msg = job.chat.parse(text) if job.chat else ParsedMessage(text, None, [])
    status = _status(final.finish_reason)
    output = output_items(msg, status)
    usage = turn.usage(final.completion_tokens, final.cached_tokens)
    response = turn.response(status, output, usage)
    turn.remember(output, response)
    return JSONResponse(response)


class _EventWriter:
    """Numbers the events and keeps the output item being streamed open until the next."""

    def __init__(self, turn: Turn) -> None:
        self.turn = turn
        self.seq = 0
        self.output: list[Item] = []
        self.item: Item | None = None  # the open item; its text so far is in self.text
        self.text = ""

    def emit(self, kind: str, **data: Any) -> bytes:
        data = {"type": kind, "sequence_number": self.seq, **data}
        self.seq += 1
        return b"event: " + kind.encode() + b"\n" + event(data)

    def open(self, item: Item) -> list[bytes]:
        self.item, self.text = item, ""
        at = {"output_index": len(self.output)}
        part = item["content"][0] if item["type"] != "function_call" else None
        if part is not None:
            item["content"] = []  # the part is added by its own event
        out = [self.emit("response.output_item.added", item=item, **at)]
        if part is not None:
            out.append(
                self.emit(
                    "response.content_part.added",
                    item_id=item["id"],
                    content_index=0,
                    part=part,
                    **at,
                )
            )
        return out

    def close(self, status: str = "completed") -> list[bytes]:
        item = self.item
        if item is None:
            return []
        self.item = None
        at = {"item_id": item["id"], "output_index": len(self.output)}
        text = {"content_index": 0, "text": self.text}
        out = []
        if item["type"] == "function_call":
            args = item["arguments"]
            out.append(self.emit("response.function_call_arguments.done", arguments=args, **at))
        elif item["type"] == "reasoning":
            part: Item = {"type": "reasoning_text", "text": self.text}
            out.append(self.emit("response.reasoning_text.done", **text, **at))
            out.append(self.emit("response.content_part.done", content_index=0, part=part, **at))
            item["content"] = [part]
        else:
            part = {"type": "output_text", "text": self.text, "annotations": [], "logprobs": []}
            out.append(self.emit("response.output_text.done", **text, logprobs=[], **at))
            out.append(self.emit("response.content_part.done", content_index=0, part=part, **at))
            item["content"] = [part]
        item["status"] = status
        out.append(
            self.emit("response.output_item.done", output_index=at["output_index"], item=item)
        )
        self.output.append(item)
        return out

    def text_delta(self, kind: str, text: str) -> list[bytes]:
        """Content (``kind`` "message") or reasoning text, in an item of that kind."""
        out = []
        if self.item is None or self.item["type"] != kind:
            out += self.close()
            out += self.open(
                message_item("", "in_progress")
                if kind == "message"
                else reasoning_item("", "in_progress")
            )
        assert self.item is not None
        self.text += text
        at = {"item_id": self.item["id"], "output_index": len(self.output), "content_index": 0}
        if kind == "message":
            out.append(self.emit("response.output_text.delta", delta=text, logprobs=[], **at))
        else:
            out.append(self.emit("response.reasoning_text.delta", delta=text, **at))
        return out

    def call(self, call: ToolCall) -> list[bytes]:
        out = self.close()
        item = {**call_item(call), "status": "in_progress", "arguments": ""}
        out += self.open(item)
        item["arguments"] = call.arguments
        out.append(
            self.emit(
                "response.function_call_arguments.delta",
                item_id=item["id"],
                output_index=len(self.output),
                delta=call.arguments,
            )
        )
        return out

    def feed(self, events: list[Event]) -> list[bytes]:
        out: list[bytes] = []
        for e in events:
            if isinstance(e, ContentDelta):
                out += self.text_delta("message", e.text)
            elif isinstance(e, ReasoningDelta):
                out += self.text_delta("reasoning", e.text)
            elif isinstance(e, CallDelta):
                out += self.call(e.call)
        return out


async def _events(turn: Turn) -> AsyncIterator[bytes]:
    w = _EventWriter(turn)
    job = turn.job
    yield w.emit("response.created", response=turn.response("in_progress", [], None))
    yield w.emit("response.in_progress", response=turn.response("in_progress", [], None))
    try:
        parser = job.chat.parser() if job.chat else None
        async for _, out in merge(job.streams):
            if parser is None:
                events: list[Event] = [ContentDelta(out.text)] if out.text else []
            else:
                events = parser.feed(out.text) if out.text else []
                if out.finish_reason is not None:
                    events += parser.finish()
            for chunk in w.feed(events):
                yield chunk
            if out.finish_reason is None:
                continue
            status = _status(out.finish_reason)
            if not w.output and w.item is None:  # no text and no call: an empty message
                for chunk in w.open(message_item("", "in_progress")):
                    yield chunk
            for chunk in w.close(status):
                yield chunk
            usage = turn.usage(out.completion_tokens, out.cached_tokens)
            response = turn.response(status, w.output, usage)
            turn.remember(w.output, response)
            done = "response.completed" if status == "completed" else "response.incomplete"
            yield w.emit(done, response=response)
    except Exception as exc:  # after the headers an error travels as events
        err = json.loads(error_response(exc).body)["error"]
        yield w.emit("error", code=err["code"], message=err["message"], param=err["param"])
        failed = {"code": "server_error", "message": err["message"]}
        yield w.emit("response.failed", response=turn.response("failed", w.output, None, failed))
