"""llama-server's chat routes beside /v1/chat/completions: the prompt a request renders to
(POST /apply-template) and its token count (POST /v1/chat/completions/input_tokens)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request

from ferrousforge.api import chat
from ferrousforge.api.openapi import ERROR_RESPONSES
from ferrousforge.api.routes import model_for, state
from ferrousforge.api.schemas import ChatCompletionRequest

router = APIRouter()


@router.post("/apply-template", responses=ERROR_RESPONSES)
async def apply_template(body: ChatCompletionRequest, request: Request) -> dict:
    """``{"prompt": ...}``: the chat completion request's messages (with its tools,
    ``add_generation_prompt``, ``continue_final_message`` and ``chat_template_kwargs``)
    through the chat template, exactly as /v1/chat/completions renders them."""
    st = state(request)
    async with model_for(request, body.model) as (mid, lm):
        model = st.pool.spec(mid)

        def render() -> str:
            spec = chat.tool_spec(body, st.settings, model)
            return chat.chat_plan(body, st.pool.backend, lm, model, spec).prompt

        return {"prompt": await asyncio.to_thread(render)}


@router.post("/v1/chat/completions/input_tokens", responses=ERROR_RESPONSES)
async def count_input_tokens(body: ChatCompletionRequest, request: Request) -> dict:
    """``{"input_tokens": N}``: the prompt tokens /v1/chat/completions would read."""
    st = state(request)
    async with model_for(request, body.model) as (mid, lm):
        model = st.pool.spec(mid)

        def count() -> int:
            spec = chat.tool_spec(body, st.settings, model)
            return len(chat.chat_prompt(body, st.pool.backend, lm, model, spec)[1].ids)

        return {"input_tokens": await asyncio.to_thread(count)}
