"""POST /v1/chat/completions: messages through the model's chat template, choices out."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from ferrousforge.api.completions import Job, Prompt, check_capacity, submit, usage
from ferrousforge.api.json_schema import json_object_gbnf, schema_to_gbnf
from ferrousforge.api.logprobs import chat_logprobs
from ferrousforge.api.options import (
    GenerationPlan,
    max_tokens_for,
    plan_generation,
    seq_context,
)
from ferrousforge.api.schemas import (
    ChatCompletionRequest,
    ChatMessage,
    JSONObjectFormat,
    JSONSchemaFormat,
    ResponseFormat,
)
from ferrousforge.api.sse import event, sse_response
from ferrousforge.api.streams import ClientDisconnected, collect, merge, unless_disconnected
from ferrousforge.inference.backend import BackendInput
from ferrousforge.inference.backends.llama_cpp.backend import LlamaCppBackend, LoadedModel
from ferrousforge.settings import ServerSettings


def message_dicts(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    """Messages as the template expects them; text parts joined into one string."""
    out = []
    for m in messages:
        d = m.model_dump(exclude_none=True)
        if isinstance(m.content, list):
            d["content"] = "".join(part.text for part in m.content)
        d.setdefault("content", "")
        out.append(d)
    return out


def grammar_for(fmt: ResponseFormat | None) -> str | None:
    """The grammar that makes output match response_format (None for plain text)."""
    if isinstance(fmt, JSONSchemaFormat):
        return schema_to_gbnf(fmt.json_schema.schema_)
    if isinstance(fmt, JSONObjectFormat):
        return schema_to_gbnf(fmt.schema_) if fmt.schema_ else json_object_gbnf()
    return None


def prompt_of(
    req_messages: list[ChatMessage],
    backend: LlamaCppBackend,
    lm: LoadedModel,
    chat_template: str | None,
) -> Prompt:
    """The rendered conversation and its ids: what generation and /tokenize both count."""
    chat = BackendInput.Chat(message_dicts(req_messages), chat_template=chat_template)
    text = backend.render_chat(lm.handle, chat)
    return Prompt(text, backend.tokenize(lm.handle, text))


def start(
    req: ChatCompletionRequest,
    backend: LlamaCppBackend,
    lm: LoadedModel,
    model_id: str,
    settings: ServerSettings,
    chat_template: str | None,
    loop: asyncio.AbstractEventLoop,
) -> Job:
    """Render, tokenize and submit a request (blocking: run it through ``prepare``)."""
    if req.tools and req.tool_choice != "none":
        raise ValueError("tools: function calling is not supported")
    # An n that can never fit is the answer whatever the template makes of the conversation
    # (a model without one would otherwise say only that): check it before rendering.
    check_capacity(lm, 1, req.n)
    grammar = grammar_for(req.response_format)
    prompt = prompt_of(req.messages, backend, lm, chat_template)
    top = req.top_logprobs if req.top_logprobs is not None else 0

    def plan_for(p: Prompt) -> GenerationPlan:
        mt = max_tokens_for(
            req,
            default=None,
            prompt_len=len(p.ids),
            n_ctx=seq_context(lm),
            ceiling=settings.max_tokens_limit,
        )
        return plan_generation(
            req, max_tokens=mt, grammar=grammar, logprobs=top if req.logprobs else None
        )

    streams, plan = submit(backend, lm, [prompt], plan_for, req.n, loop)
    return Job(model_id, lm, [prompt], streams, plan, req.n)


async def respond(req: ChatCompletionRequest, job: Job, request: Request) -> Response:
    cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    if req.stream:
        return sse_response(_events(req, job, cid, created), on_close=job.abort)
    try:
        choices = await unless_disconnected(request, lambda: collect(job.streams))
    except ClientDisconnected:
        return Response(status_code=499)
    body_choices, completion = [], 0
    for i, ch in enumerate(choices):
        assert ch.final is not None
        body_choices.append(
            {
                "index": i,
                "message": {"role": "assistant", "content": ch.text, "refusal": None},
                "logprobs": chat_logprobs(job.lm.vocab, ch.logprobs) if req.logprobs else None,
                "finish_reason": ch.final.finish_reason,
            }
        )
        completion += ch.final.completion_tokens
    cached = choices[0].final.cached_tokens if choices[0].final else 0
    return JSONResponse(
        {
            "id": cid,
            "object": "chat.completion",
            "created": created,
            "model": job.model_id,
            "system_fingerprint": None,
            "choices": body_choices,
            "usage": usage(len(job.prompts[0].ids), completion, cached),
        }
    )


async def _events(
    req: ChatCompletionRequest, job: Job, cid: str, created: int
) -> AsyncIterator[str]:
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    base: dict[str, Any] = {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": job.model_id,
        "system_fingerprint": None,
    }
    if include_usage:
        base["usage"] = None
    for i in range(len(job.streams)):  # OpenAI's first chunk of each choice carries the role
        yield event(
            {
                **base,
                "choices": [
                    {
                        "index": i,
                        "delta": {"role": "assistant", "content": ""},
                        "logprobs": None,
                        "finish_reason": None,
                    }
                ],
            }
        )
    completion, cached = 0, 0
    async for i, out in merge(job.streams):
        lps = chat_logprobs(job.lm.vocab, out.logprobs) if req.logprobs and out.logprobs else None
        if out.text or lps:
            yield event(
                {
                    **base,
                    "choices": [
                        {
                            "index": i,
                            "delta": {"content": out.text},
                            "logprobs": lps,
                            "finish_reason": None,
                        }
                    ],
                }
            )
        if out.finish_reason is not None:
            yield event(
                {
                    **base,
                    "choices": [
                        {
                            "index": i,
                            "delta": {},
                            "logprobs": None,
                            "finish_reason": out.finish_reason,
                        }
                    ],
                }
            )
            completion += out.completion_tokens
            cached = out.cached_tokens if i == 0 else cached
    if include_usage:
        yield event(
            {**base, "choices": [], "usage": usage(len(job.prompts[0].ids), completion, cached)}
        )
