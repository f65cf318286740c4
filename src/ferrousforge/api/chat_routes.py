"""llama-server's chat route beside /v1/chat/completions: the prompt a request renders to
(POST /apply-template); its token count is in api/input_tokens.py."""

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
