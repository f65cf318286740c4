"""The HTTP endpoints: thin functions that look up the model and hand off."""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Awaitable
from dataclasses import dataclass

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from ferrousforge.api import chat, completions
from ferrousforge.api.auth import presented_key
from ferrousforge.api.metrics import render_metrics
from ferrousforge.api.openapi import (
    ERROR_RESPONSES,
    HEALTH_RESPONSES,
    JSON_ERROR_RESPONSES,
    streaming,
)
from ferrousforge.api.options import seq_context
from ferrousforge.api.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    TokenizeRequest,
)
from ferrousforge.errors import ModelNotReadyError
from ferrousforge.inference.backends.llama_cpp.backend import LoadedModel
from ferrousforge.models.registry import ModelRegistry
from ferrousforge.settings import ServerSettings

router = APIRouter()


@dataclass(slots=True)
class ServerState:
    settings: ServerSettings
    registry: ModelRegistry
    started: int
    load_error: str | None = None


def state(request: Request) -> ServerState:
    return request.app.state.ff


def model_for(request: Request, name: str | None) -> tuple[str, LoadedModel]:
    """(id, loaded model) for a request's 'model' field; 404 for an unknown name."""
    st = state(request)
    spec = st.registry.spec(name if name is not None else st.registry.default_id)
    if spec.id not in st.registry.loaded:
        raise ModelNotReadyError(st.load_error or f"model '{spec.id}' is still loading")
    return spec.id, st.registry.get(spec.id)


@router.post("/v1/completions", responses=streaming("A completion, or its SSE chunks"))
async def create_completion(body: CompletionRequest, request: Request) -> Response:
    st = state(request)
    mid, lm = model_for(request, body.model)
    job = await completions.prepare(
        lambda loop: completions.start(body, st.registry.backend, lm, mid, st.settings, loop)
    )
    return await _respond(job, completions.respond(body, job, request), body.stream)


@router.post("/v1/chat/completions", responses=streaming("A chat completion, or its SSE chunks"))
async def create_chat_completion(body: ChatCompletionRequest, request: Request) -> Response:
    st = state(request)
    mid, lm = model_for(request, body.model)
    spec = st.registry.spec(mid)
    job = await completions.prepare(
        lambda loop: chat.start(body, st.registry.backend, lm, mid, st.settings, spec, loop)
    )
    return await _respond(job, chat.respond(body, job, request), body.stream)


async def _respond(job: completions.Job, response: Awaitable[Response], stream: bool) -> Response:
    """Whatever happens, the job's slots are freed: now, or when a stream's response ends."""
    try:
        return await response
    except BaseException:
        job.abort()
        raise
    finally:
        if not stream:
            job.abort()


def _model_card(st: ServerState, mid: str) -> dict:
    card = {"id": mid, "object": "model", "created": st.started, "owned_by": "ferrousforge"}
    lm = st.registry.loaded.get(mid)
    if lm is not None:
        card["meta"] = {
            "path": str(lm.handle.path),
            "description": lm.model.description,
            "n_ctx": seq_context(lm),  # per request
            "n_ctx_total": lm.n_ctx,
            "n_ctx_train": lm.model.n_ctx_train,
            "n_vocab": lm.vocab.n_tokens,
            "slots": lm.engine.runner.n_slots,
        }
    return card


@router.get("/v1/models", responses=ERROR_RESPONSES)
async def list_models(request: Request) -> dict:
    st = state(request)
    return {"object": "list", "data": [_model_card(st, s.id) for s in st.registry.specs]}


@router.get("/v1/models/{model_id:path}", responses=ERROR_RESPONSES)
async def get_model(model_id: str, request: Request) -> dict:
    st = state(request)
    return _model_card(st, st.registry.spec(model_id).id)


@router.get("/health", responses=HEALTH_RESPONSES)
async def health(request: Request) -> Response:
    """Readiness, open to all. The reason for an "error" (file path, llama.cpp's log) is
    shown only to a client with a valid API key when keys are set; the log always has it."""
    st = state(request)
    if st.load_error:
        body = {"status": "error"}
        keys = st.settings.api_key
        key = presented_key(request.scope)
        if not keys or (
            key is not None and any(hmac.compare_digest(key.encode(), k.encode()) for k in keys)
        ):
            body["message"] = st.load_error
        return JSONResponse(body, status_code=503)
    if not st.registry.ready:
        return JSONResponse({"status": "loading"}, status_code=503)
    return JSONResponse({"status": "ok"})


@router.get("/metrics", response_class=PlainTextResponse, responses=JSON_ERROR_RESPONSES)
async def metrics(request: Request) -> Response:
    """Prometheus text format (not JSON)."""
    return PlainTextResponse(
        render_metrics(dict(state(request).registry.loaded)), media_type="text/plain; version=0.0.4"
    )


@router.post("/tokenize", responses=ERROR_RESPONSES)
async def tokenize(body: TokenizeRequest, request: Request) -> dict:
    """Token ids of a text or of a chat, exactly as generation counts them."""
    st = state(request)
    mid, lm = model_for(request, body.model)
    backend = st.registry.backend

    def ids_of() -> list[int]:
        if body.messages is not None:
            template = st.registry.spec(mid).chat_template
            return chat.prompt_of(body.messages, backend, lm, template).ids
        text = body.content if body.content is not None else body.prompt
        if text is None:
            return []  # nothing to tokenize, as llama-server answers
        return backend.tokenize(lm.handle, text, add_special=body.adds_special)

    ids = await asyncio.to_thread(ids_of)
    tokens: list = ids
    if body.with_pieces:
        tokens = [{"id": t, "piece": lm.vocab.token_text(t)} for t in ids]
    return {"tokens": tokens, "count": len(ids), "max_model_len": seq_context(lm)}


@router.post("/detokenize", responses=ERROR_RESPONSES)
async def detokenize(body: DetokenizeRequest, request: Request) -> dict:
    _, lm = model_for(request, body.model)
    lm.vocab.check_ids(body.tokens, "tokens")
    text = await asyncio.to_thread(lm.vocab.detokenize, body.tokens)
    return {"content": text, "prompt": text}


@router.get("/tokenizer_info", responses=ERROR_RESPONSES)
async def tokenizer_info(request: Request, model: str | None = None) -> dict:
    mid, lm = model_for(request, model)
    v = lm.vocab

    def text(t: int) -> str | None:
        return v.token_text(t) if t >= 0 else None

    return {
        "model": mid,
        "vocab_size": v.n_tokens,
        "bos_token": text(v.bos),
        "bos_token_id": v.bos if v.bos >= 0 else None,
        "eos_token": text(v.eos),
        "eos_token_id": v.eos if v.eos >= 0 else None,
        "eog_token_ids": sorted(v.eog_ids),
        "add_bos_token": v.add_bos,
        "model_max_length": seq_context(lm),
        "chat_template": state(request).registry.spec(mid).chat_template or lm.model.chat_template,
        "tokenizer_model": lm.info.metadata.get("tokenizer.ggml.model"),
    }
