"""Anthropic's Messages API (POST /v1/messages, /v1/messages/count_tokens) on the chat path.

A request becomes a ChatCompletionRequest (system -> a system message, ``tool_use`` blocks ->
assistant ``tool_calls``, ``tool_result`` blocks -> ``tool`` messages, ``tool_choice`` any ->
required) and runs as a chat completion; the chat parser's events come back as Anthropic's
content blocks (text, tool_use, and thinking when the request enabled it).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError

from ferrousforge.api import chat, routes
from ferrousforge.api.chat import ChatJob
from ferrousforge.api.errors import anthropic_error, error_response
from ferrousforge.api.messages_schemas import (
    CountTokensRequest,
    MessagesRequest,
    TextBlock,
    ToolChoiceAny,
    ToolChoiceNone,
    ToolChoiceTool,
    ToolResultBlock,
    ToolUseBlock,
)
from ferrousforge.api.schemas import ChatCompletionRequest
from ferrousforge.api.sse import named_event, sse_response
from ferrousforge.api.streams import ClientDisconnected, collect, merge, unless_disconnected
from ferrousforge.chat.parser import CallDelta, ContentDelta, Event, ReasoningDelta
from ferrousforge.chat.tools import ToolCall

router = APIRouter()


class AnthropicErrorDetail(BaseModel):
    type: str
    message: str


class AnthropicErrorResponse(BaseModel):
    """Anthropic's error shape, used for every error status of these routes."""

    type: Literal["error"]
    error: AnthropicErrorDetail


_ERRORS = {
    400: "invalid_request_error: a field out of bounds, unsupported content (images...)",
    401: "authentication_error: missing or wrong API key (x-api-key or Bearer)",
    404: "not_found_error: unknown model",
    413: "request_too_large: body larger than --max-body-bytes",
    500: "api_error: internal error",
    503: "api_error: the model is loading or failed to load (Retry-After header)",
    529: "overloaded_error: all slots busy and the queue full (Retry-After header)",
}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": AnthropicErrorResponse, "description": text}
    for status, text in _ERRORS.items()
}
_EVENTS = {
    "text/event-stream": {
        "schema": {
            "type": "object",
            "required": ["event", "data"],
            "properties": {"event": {"type": "string"}, "data": {"type": "string"}},
        }
    }
}
STREAMING_RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERROR_RESPONSES,
    200: {
        "description": "A message, or its server-sent events (message_start ... message_stop)",
        "content": {"application/json": {"schema": {"type": "object"}}, **_EVENTS},
    },
}


# ---- request: Anthropic -> chat ------------------------------------------------------------


def _text(blocks: list[Any]) -> str:
    return "".join(b.text for b in blocks if isinstance(b, TextBlock))


def _result_text(block: ToolResultBlock) -> str:
    content = block.content
    text = content if isinstance(content, str) else "\n".join(b.text for b in content or [])
    return f"Error: {text}" if block.is_error else text


def _user_messages(content: list[Any]) -> list[dict[str, Any]]:
    """Tool results become tool messages; text between them, user messages (in order)."""
    out: list[dict[str, Any]] = []
    pending: list[str] = []
    for b in content:
        if isinstance(b, ToolResultBlock):
            if pending:
                out.append({"role": "user", "content": "".join(pending)})
                pending = []
            out.append({"role": "tool", "tool_call_id": b.tool_use_id, "content": _result_text(b)})
        elif isinstance(b, TextBlock):
            pending.append(b.text)
        elif isinstance(b, ToolUseBlock):
            raise ValueError("messages: tool_use blocks belong in assistant turns")
    if pending or not out:
        out.append({"role": "user", "content": "".join(pending)})
    return out


def _assistant_message(content: list[Any]) -> dict[str, Any]:
    """Text and calls; thinking handed back is not shown to the model again."""
    msg: dict[str, Any] = {"role": "assistant", "content": _text(content)}
    calls = [
        {
            "id": b.id,
            "type": "function",
            "function": {"name": b.name, "arguments": json.dumps(b.input, ensure_ascii=False)},
        }
        for b in content
        if isinstance(b, ToolUseBlock)
    ]
    if any(isinstance(b, ToolResultBlock) for b in content):
        raise ValueError("messages: tool_result blocks belong in user turns")
    if calls:
        msg["tool_calls"] = calls
    return msg


def _chat_messages(body: CountTokensRequest) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if body.system:
        system = body.system if isinstance(body.system, str) else _text(body.system)
        out.append({"role": "system", "content": system})
    for m in body.messages:
        if isinstance(m.content, str):
            out.append({"role": m.role, "content": m.content})
        elif m.role == "user":
            out += _user_messages(m.content)
        else:
            out.append(_assistant_message(m.content))
    if body.messages[-1].role == "assistant":
        raise ValueError(
            "messages: a last assistant turn to continue (prefill) is not supported; "
            "end with a user turn"
        )
    return out


def _tool_fields(body: CountTokensRequest) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    if body.tools:
        fields["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": t.name,
                    **({"description": t.description} if t.description is not None else {}),
                    "parameters": t.input_schema,
                },
            }
            for t in body.tools
        ]
    choice = body.tool_choice
    if choice is not None:
        if isinstance(choice, ToolChoiceTool):
            fields["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
        elif isinstance(choice, ToolChoiceAny):
            fields["tool_choice"] = "required"
        else:
            fields["tool_choice"] = choice.type
        if not isinstance(choice, ToolChoiceNone):
            fields["parallel_tool_calls"] = not choice.disable_parallel_tool_use
    return fields


def to_chat(body: CountTokensRequest) -> ChatCompletionRequest:
    """The chat completion a Messages request runs as (ValueError naming the field)."""
    fields: dict[str, Any] = {"model": body.model, "messages": _chat_messages(body)}
    fields |= _tool_fields(body)
    if isinstance(body, MessagesRequest):
        fields |= {
            k: v
            for k, v in {
                "max_tokens": body.max_tokens,
                "stop": body.stop_sequences,
                "temperature": body.temperature,
                "top_p": body.top_p,
                "top_k": body.top_k,
                "stream": body.stream,
                "keep_alive": body.keep_alive,
            }.items()
            if v is not None
        }
        fmt = body.output_config.format if body.output_config else None
        if fmt is not None:
            schema = {"name": "output", "schema": fmt.schema_}
            fields["response_format"] = {"type": "json_schema", "json_schema": schema}
    try:
        return ChatCompletionRequest.model_validate(fields)
    except ValidationError as e:  # the same 400 a request body's own errors get
        raise RequestValidationError(e.errors()) from None


# ---- response: chat parser events -> Anthropic blocks ----------------------------------------


def _tool_use(call: ToolCall) -> dict[str, Any]:
    return {
        "type": "tool_use",
        "id": "toolu_" + call.id.removeprefix("call_"),
        "name": call.name,
        "input": json.loads(call.arguments),
    }


def _stop(
    job: ChatJob, body: MessagesRequest, finish: str | None, called: bool
) -> tuple[str, str | None]:
    """(stop_reason, stop_sequence) of a finished choice."""
    if called:
        return "tool_use", None
    if finish == "length":
        return "max_tokens", None
    matched = job.streams[0].seq.stop_reason
    if finish == "stop" and matched is not None and matched in (body.stop_sequences or []):
        return "stop_sequence", matched
    return "end_turn", None


def _usage(job: ChatJob, output: int, cached: int) -> dict[str, int]:
    """Anthropic counts the prompt as input_tokens + cache_read_input_tokens."""
    prompt = len(job.prompts[0].ids)
    return {
        "input_tokens": prompt - cached,
        "output_tokens": output,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
    }


def _message(job: ChatJob, mid: str) -> dict[str, Any]:
    return {"id": mid, "type": "message", "role": "assistant", "model": job.model_id}


async def respond(body: MessagesRequest, job: ChatJob, request: Request) -> Response:
    mid = f"msg_{uuid.uuid4().hex}"
    if body.stream:
        return sse_response(_guarded(_events(body, job, mid)), on_close=job.abort, openai=False)
    try:
        choices = await unless_disconnected(request, lambda: collect(job.streams))
    except ClientDisconnected:
        return Response(status_code=499)
    ch = choices[0]
    assert ch.final is not None and job.chat is not None
    msg = job.chat.parse(ch.text)
    content: list[dict[str, Any]] = []
    if body.thinks and msg.reasoning:
        content.append({"type": "thinking", "thinking": msg.reasoning, "signature": ""})
    if msg.content or not msg.tool_calls:
        content.append({"type": "text", "text": msg.content})
    content += [_tool_use(c) for c in msg.tool_calls]
    reason, sequence = _stop(job, body, ch.final.finish_reason, bool(msg.tool_calls))
    return JSONResponse(
        {
            **_message(job, mid),
            "content": content,
            "stop_reason": reason,
            "stop_sequence": sequence,
            "usage": _usage(job, ch.final.completion_tokens, ch.final.cached_tokens),
        }
    )


def _event(type_: str, **fields: Any) -> bytes:
    """One named event whose data carries its own type, as Anthropic sends them."""
    return named_event(type_, {"type": type_, **fields})


class _Blocks:
    """Parser events -> content_block_start / _delta / _stop events, one open block at a time."""

    def __init__(self, thinks: bool) -> None:
        self.thinks = thinks
        self.index = -1
        self.open: str | None = None  # the type of the block being written

    def _start(self, block: dict[str, Any]) -> list[bytes]:
        out = self.close()
        self.index += 1
        self.open = block["type"]
        return [*out, _event("content_block_start", index=self.index, content_block=block)]

    def _delta(self, delta: dict[str, Any]) -> bytes:
        return _event("content_block_delta", index=self.index, delta=delta)

    def close(self) -> list[bytes]:
        if self.open is None:
            return []
        self.open = None
        return [_event("content_block_stop", index=self.index)]

    def feed(self, e: Event) -> list[bytes]:
        out: list[bytes] = []
        if isinstance(e, ContentDelta):
            if self.open != "text":
                out += self._start({"type": "text", "text": ""})
            out.append(self._delta({"type": "text_delta", "text": e.text}))
        elif isinstance(e, ReasoningDelta):
            if not self.thinks:
                return out  # thinking was not asked for: the reasoning is not shown
            if self.open != "thinking":
                out += self._start({"type": "thinking", "thinking": "", "signature": ""})
            out.append(self._delta({"type": "thinking_delta", "thinking": e.text}))
        elif isinstance(e, CallDelta):
            block = {**_tool_use(e.call), "input": {}}
            out += self._start(block)
            out.append(self._delta({"type": "input_json_delta", "partial_json": e.call.arguments}))
            out += self.close()
        return out

    def finish(self) -> list[bytes]:
        if self.index < 0:  # as the whole answer: an empty text block rather than none
            return [*self._start({"type": "text", "text": ""}), *self.close()]
        return self.close()


async def _events(body: MessagesRequest, job: ChatJob, mid: str) -> AsyncIterator[bytes]:
    start = {
        **_message(job, mid),
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": _usage(job, 0, 0),
    }
    yield _event("message_start", message=start)
    yield _event("ping")
    assert job.chat is not None
    parser = job.chat.parser()
    blocks = _Blocks(body.thinks)
    called = False
    async for _, out in merge(job.streams):
        events = parser.feed(out.text) if out.text else []
        if out.finish_reason is not None:
            events += parser.finish()
        called = called or any(isinstance(e, CallDelta) for e in events)
        for e in events:
            for b in blocks.feed(e):
                yield b
        if out.finish_reason is not None:
            for b in blocks.finish():
                yield b
            reason, sequence = _stop(job, body, out.finish_reason, called)
            delta = {"stop_reason": reason, "stop_sequence": sequence}
            usage = _usage(job, out.completion_tokens, out.cached_tokens)
            yield _event("message_delta", delta=delta, usage=usage)
    yield _event("message_stop")


async def _guarded(events: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """After the headers are sent an error can only travel as Anthropic's ``error`` event."""
    try:
        async for e in events:
            yield e
    except Exception as exc:
        response = error_response(exc)
        err = json.loads(response.body)["error"]
        _, body = anthropic_error(response.status_code, err["message"], err.get("code"))
        yield named_event("error", body)


# ---- routes ----------------------------------------------------------------------------------


@router.post("/v1/messages", responses=STREAMING_RESPONSES)
async def create_message(body: MessagesRequest, request: Request) -> Response:
    """Anthropic's Messages API: one assistant turn, whole or as server-sent events."""
    st = routes.state(request)
    req = to_chat(body)
    job = await routes.start_job(
        request,
        req.model,
        req.keep_alive_s,
        lambda mid, lm, loop: chat.start(
            req, st.pool.backend, lm, mid, st.settings, st.pool.spec(mid), loop
        ),
    )
    return await routes.respond_job(job, respond(body, job, request), body.stream)


@router.post("/v1/messages/count_tokens", responses=ERROR_RESPONSES)
async def count_tokens(body: CountTokensRequest, request: Request) -> dict:
    """``{"input_tokens": N}``: the prompt's tokens exactly as /v1/messages counts them."""
    st = routes.state(request)
    req = to_chat(body)
    async with routes.model_for(request, req.model) as (mid, lm):
        model = st.pool.spec(mid)

        def count() -> int:
            spec = chat.tool_spec(req, st.settings, model)
            return len(chat.chat_prompt(req, st.pool.backend, lm, model, spec)[1].ids)

        return {"input_tokens": await asyncio.to_thread(count)}
