"""/v1/responses: OpenAI's Responses API, converted onto the chat completions path.

The input items (and those of ``previous_response_id``'s conversation) become chat messages,
function tools become chat tools, ``text.format`` becomes ``response_format``; the chat job's
parsed output (content, reasoning, calls) is written back as Responses output items.
Stored responses (``store``, the default) can be read back, listed by input item, and
deleted while the server runs.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from ferrousforge.api import chat, routes
from ferrousforge.api.openapi import ERROR_RESPONSES, streaming
from ferrousforge.api.response_store import Item, ResponseStore
from ferrousforge.api.responses_output import Turn, respond
from ferrousforge.api.responses_schema import (
    FormatJSONObject,
    FormatJSONSchema,
    ResponsesRequest,
)
from ferrousforge.api.schemas import ChatCompletionRequest, SamplingFields
from ferrousforge.errors import ResponseNotFoundError, StoredResponseNotFoundError

router = APIRouter()

# Sampling fields the chat request takes as they are (the rest are renamed or refused).
_SAMPLING = set(SamplingFields.model_fields) - {
    "max_tokens",
    "max_completion_tokens",
    "n",
    "stream",
    "stream_options",
}


def store_of(request: Request) -> ResponseStore:
    """The app's store of past responses, made on first use."""
    store = getattr(request.app.state, "responses", None)
    if store is None:
        store = request.app.state.responses = ResponseStore()
    return store


@router.post("/v1/responses", responses=streaming("A Response, or its SSE events"))
async def create_response(body: ResponsesRequest, request: Request) -> Response:
    st = routes.state(request)
    items = conversation(body, store_of(request))
    req = chat_request(body, items)
    job = await routes.start_job(
        request,
        req.model,
        req.keep_alive_s,
        lambda mid, lm, loop: chat.start(
            req, st.pool.backend, lm, mid, st.settings, st.pool.spec(mid), loop
        ),
    )
    turn = Turn(body, items, job, store_of(request) if body.store else None)
    return await routes.respond_job(job, respond(turn, request), body.stream)


def _unknown(response_id: str) -> StoredResponseNotFoundError:
    return StoredResponseNotFoundError(
        f"no response '{response_id}' is stored (responses are kept in memory while the "
        "server runs, the most recent ones, and only those created with store: true)"
    )


@router.get("/v1/responses/{response_id}", responses=ERROR_RESPONSES)
async def get_response(response_id: str, request: Request) -> JSONResponse:
    """A stored response, as it was returned when it completed."""
    response = store_of(request).response(response_id)
    if response is None:
        raise _unknown(response_id)
    return JSONResponse(response)


@router.delete("/v1/responses/{response_id}", responses=ERROR_RESPONSES)
async def delete_response(response_id: str, request: Request) -> JSONResponse:
    """Forget a stored response: it can no longer be read or continued."""
    if not store_of(request).delete(response_id):
        raise _unknown(response_id)
    return JSONResponse({"id": response_id, "object": "response", "deleted": True})


@router.get("/v1/responses/{response_id}/input_items", responses=ERROR_RESPONSES)
async def list_input_items(
    response_id: str,
    request: Request,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    order: Literal["asc", "desc"] = "desc",
    after: str | None = None,
) -> JSONResponse:
    """The items a stored response answered (earlier turns' included), a page at a time, as
    OpenAI's list: newest first unless ``order=asc``, ``after`` an item id."""
    if any(k.startswith("include") for k in request.query_params):
        raise ValueError("include: extra data on input items is not supported")
    items = store_of(request).input_items(response_id)
    if items is None:
        raise _unknown(response_id)
    if order == "desc":
        items.reverse()
    if after is not None:
        ids = [i["id"] for i in items]
        if after not in ids:
            raise ValueError(f"after: no input item '{after}' in response '{response_id}'")
        items = items[ids.index(after) + 1 :]
    page = [_listed(i) for i in items[:limit]]
    return JSONResponse(
        {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(items) > limit,
        }
    )


def _listed(item: Item) -> Item:
    """An input item as OpenAI lists it: a message's text as a list of content parts."""
    content = item.get("content")
    if item.get("type", "message") != "message" or not isinstance(content, str):
        return item
    part = "output_text" if item.get("role") == "assistant" else "input_text"
    return {**item, "type": "message", "content": [{"type": part, "text": content}]}


def conversation(body: ResponsesRequest, store: ResponseStore) -> list[Item]:
    """The items the model answers: the previous response's conversation, then ``input``."""
    items: list[Item] = []
    if body.previous_response_id is not None:
        earlier = store.get(body.previous_response_id)
        if earlier is None:
            raise ResponseNotFoundError(
                f"previous_response_id: no response '{body.previous_response_id}' is stored "
                "(responses are kept in memory while the server runs, the most recent "
                f"{store.capacity}, and only those created with store: true)"
            )
        items = earlier
    if isinstance(body.input, str):
        items.append({"type": "message", "role": "user", "content": body.input})
    elif body.input is not None:
        items += [i.model_dump(exclude_none=True) for i in body.input]
    return items


def _text(content: str | list[Any]) -> str:
    if isinstance(content, str):
        return content
    return "".join(p["text"] if p["type"] != "refusal" else p["refusal"] for p in content)


def chat_messages(instructions: str | None, items: list[Item]) -> list[dict[str, Any]]:
    """Chat messages for the items; consecutive calls join the assistant message before them,
    as the chat template expects one assistant turn holding its text and its calls."""
    messages: list[dict[str, Any]] = []
    if instructions:
        messages.append({"role": "system", "content": instructions})
    names: dict[str, str] = {}  # call_id -> function name, for templates that show it
    for item in items:
        kind = item["type"]
        if kind == "message":
            messages.append({"role": item["role"], "content": _text(item["content"])})
        elif kind == "function_call":
            call = {
                "id": item["call_id"],
                "type": "function",
                "function": {"name": item["name"], "arguments": item["arguments"]},
            }
            names[item["call_id"]] = item["name"]
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
        elif kind == "function_call_output":
            call_id = item["call_id"]
            msg = {"role": "tool", "tool_call_id": call_id, "content": _text(item["output"])}
            if call_id in names:
                msg["name"] = names[call_id]
            messages.append(msg)
        # reasoning items: left out, as templates drop earlier turns' reasoning
    if not messages:
        raise ValueError("input: give at least one message (or instructions)")
    return messages


def chat_tools(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    """Responses' flat function tools -> chat's ``{"type": "function", "function": {...}}``."""
    if tools is None:
        return None
    out = []
    for i, tool in enumerate(tools):
        kind = tool.get("type")
        if kind != "function":
            raise ValueError(
                f"tools[{i}].type: {kind!r} is not supported; only function tools are "
                "(built-in tools such as web_search run at OpenAI, not here)"
            )
        unknown = set(tool) - {"type", "name", "description", "parameters", "strict"}
        if unknown:
            raise ValueError(f"tools[{i}]: unknown fields {sorted(unknown)}")
        out.append({"type": "function", "function": {k: v for k, v in tool.items() if k != "type"}})
    return out


def chat_tool_choice(choice: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
    """``{"type": "function", "name": ...}`` -> chat's named choice; the strings are the same."""
    if not isinstance(choice, dict):
        return choice
    if choice.get("type") != "function" or not isinstance(choice.get("name"), str):
        raise ValueError(
            'tool_choice: "auto", "none", "required" or {"type": "function", "name": ...} '
            "(hosted tools and allowed_tools are not supported)"
        )
    return {"type": "function", "function": {"name": choice["name"]}}


def _response_format(body: ResponsesRequest) -> dict[str, Any] | None:
    fmt = body.text.format if body.text else None
    if isinstance(fmt, FormatJSONSchema):
        spec = fmt.model_dump(exclude={"type"}, exclude_none=True, by_alias=True)
        return {"type": "json_schema", "json_schema": spec}
    if isinstance(fmt, FormatJSONObject):
        return {"type": "json_object"}
    return None


def chat_request(body: ResponsesRequest, items: list[Item]) -> ChatCompletionRequest:
    """The chat completions request that answers a Responses request."""
    fmt = _response_format(body)
    if fmt is not None and body.tools and body.tool_choice != "none":
        raise ValueError("text.format: cannot be combined with tools unless tool_choice is 'none'")
    fields = body.model_dump(include=_SAMPLING, exclude_none=True, by_alias=True)
    fields.update(
        messages=chat_messages(body.instructions, items),
        max_tokens=body.max_output_tokens,
        stream=body.stream,
        tools=chat_tools(body.tools),
        tool_choice=chat_tool_choice(body.tool_choice),
        parallel_tool_calls=body.parallel_tool_calls,
        response_format=fmt,
        chat_template_kwargs=body.chat_template_kwargs,
        reasoning_format=body.reasoning_format,
    )
    try:
        return ChatCompletionRequest.model_validate(fields)
    except ValidationError as e:  # checked already, so rare: say which field, as a 400 does
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "input"
        raise ValueError(f"{where}: {first['msg']}") from None
