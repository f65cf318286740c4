"""llama-server's token counts of a request's prompt, without generating:
POST /v1/chat/completions/input_tokens and POST /v1/responses/input_tokens (also without
/v1), each ``{"input_tokens": N}`` exactly as the generation route would count it."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request

from ferrousforge.api import chat, routes
from ferrousforge.api.openapi import ERROR_RESPONSES
from ferrousforge.api.responses import chat_request, conversation, store_of
from ferrousforge.api.responses_schema import ResponsesRequest
from ferrousforge.api.schemas import ChatCompletionRequest

router = APIRouter()


async def _count(request: Request, req: ChatCompletionRequest) -> dict:
    st = routes.state(request)
    async with routes.model_for(request, req.model) as (mid, lm):
        model = st.pool.spec(mid)

        def count() -> int:
            spec = chat.tool_spec(req, st.settings, model)
            return len(chat.chat_prompt(req, st.pool.backend, lm, model, spec)[1].ids)

        return {"input_tokens": await asyncio.to_thread(count)}


@router.post("/v1/chat/completions/input_tokens", responses=ERROR_RESPONSES)
async def chat_input_tokens(body: ChatCompletionRequest, request: Request) -> dict:
    """The prompt tokens of a chat completion request (template, tools and all)."""
    return await _count(request, body)


@router.post("/v1/responses/input_tokens", responses=ERROR_RESPONSES)
async def responses_input_tokens(body: ResponsesRequest, request: Request) -> dict:
    """The prompt tokens of a Responses request (``previous_response_id`` included)."""
    return await _count(request, chat_request(body, conversation(body, store_of(request))))
