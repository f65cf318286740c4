"""The HTTP endpoints: thin functions that look up the model and hand off."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

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
    ModelActionRequest,
    TokenizeRequest,
)
from ferrousforge.errors import ModelNotReadyError, NotSupportedError
from ferrousforge.inference.backends.llama_cpp.backend import LoadedModel
from ferrousforge.models.pool import ModelPool, ModelStatus
from ferrousforge.settings import ServerSettings

router = APIRouter()
J = TypeVar("J", bound=completions.Job)


@dataclass(slots=True)
class ServerState:
    settings: ServerSettings
    pool: ModelPool
    started: int
    load_error: str | None = None
    ready: bool = False  # the models loaded at startup are loaded (or failed)


def state(request: Request) -> ServerState:
    return request.app.state.ff


@contextlib.asynccontextmanager
async def model_for(
    request: Request, name: str | None, keep_alive: float | None = None, embeddings: bool = False
) -> AsyncIterator[tuple[str, LoadedModel]]:
    """``async with model_for(request, body.model) as (id, lm)``: the model a request names,
    loaded if it was not (404 for an unknown name), kept loaded until the block is left; a
    request handed to the engine inside the block keeps it loaded until it ends.
    ``embeddings``: the request embeds (its embedding context counts in the budget)."""
    st = state(request)
    if st.load_error:
        raise ModelNotReadyError(st.load_error)
    async with st.pool.use(name, keep_alive, embeddings) as (mid, lm):
        yield mid, lm


@router.post("/v1/completions", responses=streaming("A completion, or its SSE chunks"))
async def create_completion(body: CompletionRequest, request: Request) -> Response:
    st = state(request)
    job = await start_job(
        request,
        body.model,
        body.keep_alive_s,
        lambda mid, lm, loop: completions.start(body, st.pool.backend, lm, mid, st.settings, loop),
    )
    return await respond_job(job, completions.respond(body, job, request), body.stream)


@router.post("/v1/chat/completions", responses=streaming("A chat completion, or its SSE chunks"))
async def create_chat_completion(body: ChatCompletionRequest, request: Request) -> Response:
    st = state(request)
    job = await start_job(
        request,
        body.model,
        body.keep_alive_s,
        lambda mid, lm, loop: chat.start(
            body, st.pool.backend, lm, mid, st.settings, st.pool.spec(mid), loop
        ),
    )
    return await respond_job(job, chat.respond(body, job, request), body.stream)


async def start_job(
    request: Request,
    name: str | None,
    keep_alive: float | None,
    start: Callable[[str, LoadedModel, asyncio.AbstractEventLoop], J],
) -> J:
    """Build and submit a generation job on the model ``name`` (loading it if needed); the
    job holds the model until it ends (``Job.abort``, which every response path calls)."""
    st = state(request)
    if st.load_error:
        raise ModelNotReadyError(st.load_error)
    mid, lm = await st.pool.acquire(name, keep_alive)
    try:
        if lm.config.embedding_only:
            raise NotSupportedError(
                f"model '{mid}' serves embeddings only (--embedding, or embedding = true in "
                "the config file): serve it without that to generate"
            )
        job = await completions.prepare(lambda loop: start(mid, lm, loop))
    except BaseException:
        st.pool.release(mid)  # a job built after a cancel is aborted without a release
        raise
    job.release = lambda: st.pool.release(mid)
    return job


async def respond_job(
    job: completions.Job, response: Awaitable[Response], stream: bool
) -> Response:
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
    entry = st.pool.entry(mid)
    card = {
        "id": mid,
        "object": "model",
        "created": st.started,
        "owned_by": "ferrousforge",
        "status": entry.status.value,
        "aliases": list(entry.spec.aliases),  # as llama-server: every name of the model
        "tags": list(entry.spec.tags),
    }
    lm = entry.lm
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
    """Every model the server can serve, loaded or not, with its status."""
    st = state(request)
    return {"object": "list", "data": [_model_card(st, mid) for mid in st.pool.entries]}


@router.get("/v1/models/{model_id:path}", responses=ERROR_RESPONSES)
async def get_model(model_id: str, request: Request) -> dict:
    st = state(request)
    return _model_card(st, st.pool.entry(model_id).id)


@router.post("/models/load", responses=ERROR_RESPONSES)
async def load_model(body: ModelActionRequest, request: Request) -> dict:
    """Load a model now (llama-server's router route); answers once it is loaded."""
    mid = await state(request).pool.load(body.model)
    return {"success": True, "model": mid, "status": ModelStatus.LOADED.value}


@router.post("/models/unload", responses=ERROR_RESPONSES)
async def unload_model(body: ModelActionRequest, request: Request) -> dict:
    """Unload a model once its running requests end (new ones wait, then load it again)."""
    pool = state(request).pool
    await pool.unload(body.model)
    return {"success": True, "model": pool.entry(body.model).id, "status": "unloaded"}


def _authorized(st: ServerState, request: Request) -> bool:
    keys = st.settings.api_key
    key = presented_key(request.scope)
    return not keys or (
        key is not None and any(hmac.compare_digest(key.encode(), k.encode()) for k in keys)
    )


def _unavailable(message: str) -> dict:
    return {"code": 503, "message": message, "type": "unavailable_error"}


@router.get("/health", responses=HEALTH_RESPONSES)
@router.get("/v1/health", responses=HEALTH_RESPONSES, include_in_schema=False)
async def health(request: Request) -> Response:
    """Readiness, open to all, in llama-server's bodies: 200 ``{"status": "ok"}``, 503 with
    ``error`` while loading or after a failed load. The details (each model's status, the
    reason for an "error": file path, llama.cpp's log) are shown only to a client with a
    valid API key when keys are set; the log always has them."""
    st = state(request)
    shown = _authorized(st, request)
    if st.load_error:
        body = {"status": "error", "error": _unavailable("Model failed to load")}
        if shown:
            body["message"] = st.load_error
        return JSONResponse(body, status_code=503)
    if not st.ready:
        return JSONResponse(
            {"status": "loading", "error": _unavailable("Loading model")}, status_code=503
        )
    body = {"status": "ok"}
    if shown:
        body["models"] = [
            {"id": e.id, "status": e.status.value, **({"error": e.error} if e.error else {})}
            for e in st.pool.entries.values()
        ]
    return JSONResponse(body)


@router.get("/metrics", response_class=PlainTextResponse, responses=JSON_ERROR_RESPONSES)
async def metrics(request: Request) -> Response:
    """Prometheus text format (not JSON)."""
    if not state(request).settings.metrics:
        raise NotSupportedError("metrics are off: start the server without --no-metrics")
    st = state(request)
    res = PlainTextResponse(render_metrics(st.pool), media_type="text/plain; version=0.0.4")
    # llama-server's header, in its spelling: Starlette lowercases the names it is given, and
    # clients that copy headers into a plain dict (llama-server's tests) look for this case
    # (kept on the wire by uvicorn's h11 protocol; httptools lowercases every name).
    res.raw_headers.append((b"Process-Start-Time-Unix", str(st.started).encode()))
    return res


@router.post("/tokenize", responses=ERROR_RESPONSES)
async def tokenize(body: TokenizeRequest, request: Request) -> dict:
    """Token ids of a text or of a chat, exactly as generation counts them."""
    st = state(request)
    backend = st.pool.backend
    async with model_for(request, body.model) as (mid, lm):

        def ids_of() -> list[int]:
            if body.messages is not None:
                return chat.prompt_of(body.messages, backend, lm, st.pool.spec(mid)).ids
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
    async with model_for(request, body.model) as (_, lm):
        lm.vocab.check_ids(body.tokens, "tokens")
        text = await asyncio.to_thread(lm.vocab.detokenize, body.tokens)
    return {"content": text, "prompt": text}


@router.get("/tokenizer_info", responses=ERROR_RESPONSES)
async def tokenizer_info(request: Request, model: str | None = None) -> dict:
    st = state(request)
    async with model_for(request, model) as (mid, lm):
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
            "chat_template": st.pool.spec(mid).chat_template or lm.model.chat_template,
            "tokenizer_model": lm.info.metadata.get("tokenizer.ggml.model"),
        }
