"""POST /v1/completions: prompts (text or token ids) in, choices out, whole or streamed."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from ferrousforge.api.logprobs import legacy_logprobs
from ferrousforge.api.options import (
    GenerationPlan,
    max_tokens_for,
    plan_generation,
    seq_context,
)
from ferrousforge.api.schemas import CompletionRequest
from ferrousforge.api.sse import event, sse_response
from ferrousforge.api.streams import ClientDisconnected, collect, merge, unless_disconnected
from ferrousforge.api.timings import combined_timings, timings
from ferrousforge.engine.engine import RequestStream
from ferrousforge.inference.backends.llama_cpp.backend import LlamaCppBackend, LoadedModel
from ferrousforge.settings import ServerSettings


@dataclass(slots=True)
class Prompt:
    text: str  # what echo returns
    ids: list[int]


@dataclass(slots=True)
class Job:
    """Everything submitted for one request: choice i is streams[i], from prompts[i // n]."""

    model_id: str
    lm: LoadedModel
    prompts: list[Prompt]
    streams: list[RequestStream]
    plan: GenerationPlan
    n: int
    # Called once when the job ends: gives back the model lease (the response still reads
    # the model's vocabulary after the engine is done, so it must stay loaded until then).
    release: Callable[[], None] | None = field(default=None, kw_only=True)

    def prompt_of(self, choice: int) -> Prompt:
        return self.prompts[choice // self.n]

    def abort(self) -> None:
        """Free every slot still held (a no-op for finished streams), then the model."""
        for s in self.streams:
            s.abort()
        release, self.release = self.release, None
        if release is not None:
            release()


def usage(prompt_tokens: int, completion_tokens: int, cached: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def read_prompts(
    backend: LlamaCppBackend, lm: LoadedModel, prompt: str | list[str] | list[int] | list[list[int]]
) -> list[Prompt]:
    """Text, texts, token ids or lists of token ids -> tokenized prompts."""
    if isinstance(prompt, str):
        prompt = [prompt]
    if not prompt:
        raise ValueError("prompt: must not be empty")
    if all(isinstance(p, int) for p in prompt):
        prompt = [prompt]  # type: ignore[list-item]
    out = []
    for p in prompt:
        if isinstance(p, str):
            out.append(Prompt(p, backend.tokenize(lm.handle, p)))
        else:
            ids = list(p)
            lm.vocab.check_ids(ids, "prompt")
            out.append(Prompt(lm.vocab.detokenize(ids), ids))
    return out


def check_capacity(lm: LoadedModel, n_prompts: int, n: int) -> None:
    """More sequences than slots plus queue can never be admitted: 400, not a 503 to retry."""
    limit = lm.engine.runner.n_slots + lm.engine.max_waiting
    if n_prompts * n > limit:
        asked = f"{n_prompts} prompts x n={n}" if n_prompts > 1 else f"n={n}"
        raise ValueError(
            f"n: {asked} asks for {n_prompts * n} sequences; this server takes at most {limit} "
            f"at once (parallel {lm.engine.runner.n_slots} + max_waiting {lm.engine.max_waiting})"
        )


def submit(
    backend: LlamaCppBackend,
    lm: LoadedModel,
    prompts: list[Prompt],
    plan_for,
    n: int,
    loop: asyncio.AbstractEventLoop,
) -> tuple[list[RequestStream], GenerationPlan]:
    """Submit every prompt's n choices; on any failure abort what was already queued."""
    check_capacity(lm, len(prompts), n)
    streams: list[RequestStream] = []
    plan = None
    try:
        for p in prompts:
            plan = plan_for(p)
            streams.extend(backend.submit(lm.handle, p.ids, plan.options, n=n, loop=loop))
    except BaseException:
        for s in streams:
            s.abort()
        raise
    assert plan is not None
    return streams, plan


async def prepare(start: Callable[[asyncio.AbstractEventLoop], Job]) -> Job:
    """Run ``start`` (template, tokenizer, grammar, sampler chains) in a worker thread.

    An expensive setup then delays only its own request, not the event loop. If the caller
    is cancelled meanwhile, the job is aborted as soon as the thread has built it.
    """
    loop = asyncio.get_running_loop()
    built = loop.run_in_executor(None, start, loop)
    try:
        return await asyncio.shield(built)
    except asyncio.CancelledError:
        built.add_done_callback(_abort_when_built)
        raise


def _abort_when_built(built: asyncio.Future[Job]) -> None:
    if not built.cancelled() and built.exception() is None:
        built.result().abort()


def start(
    req: CompletionRequest,
    backend: LlamaCppBackend,
    lm: LoadedModel,
    model_id: str,
    settings: ServerSettings,
    loop: asyncio.AbstractEventLoop,
) -> Job:
    """Tokenize and submit a request (blocking: run it through ``prepare``)."""
    if req.best_of is not None and req.best_of != req.n:
        raise ValueError("best_of: only best_of == n is supported")
    prompts = read_prompts(backend, lm, req.prompt)
    echo_lps = req.echo and req.logprobs is not None

    def plan_for(p: Prompt) -> GenerationPlan:
        mt = max_tokens_for(
            req,
            default=16,
            prompt_len=len(p.ids),
            n_ctx=seq_context(lm),
            ceiling=settings.max_tokens_limit,
        )
        return plan_generation(
            req,
            max_tokens=mt,
            logprobs=req.logprobs,
            echo_logprobs=echo_lps,
            defaults=settings.sampling_defaults,
        )

    streams, plan = submit(backend, lm, prompts, plan_for, req.n, loop)
    return Job(model_id, lm, prompts, streams, plan, req.n)


async def respond(req: CompletionRequest, job: Job, request: Request) -> Response:
    cid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
    if req.stream:
        return sse_response(_events(req, job, cid, created), on_close=job.abort)
    try:
        choices = await unless_disconnected(request, lambda: collect(job.streams))
    except ClientDisconnected:
        return Response(status_code=499)
    body_choices, completion, cached = [], 0, 0
    for i, ch in enumerate(choices):
        p = job.prompt_of(i)
        assert ch.final is not None
        text = (p.text if req.echo else "") + ch.text
        lps = None
        if req.logprobs is not None:
            lps = legacy_logprobs(
                job.lm.vocab,
                ch.logprobs,
                0 if req.echo else len(p.text),
                p.ids if req.echo else None,
                ch.prompt_logprobs,
            )
        body_choices.append(
            {"index": i, "text": text, "logprobs": lps, "finish_reason": ch.final.finish_reason}
        )
        completion += ch.final.completion_tokens
        if i % job.n == 0:
            cached += ch.final.cached_tokens
    prompt_tokens = sum(len(p.ids) for p in job.prompts)
    return JSONResponse(
        {
            "id": cid,
            "object": "text_completion",
            "created": created,
            "model": job.model_id,
            "system_fingerprint": None,
            "choices": body_choices,
            "usage": usage(prompt_tokens, completion, cached),
            "timings": combined_timings([ch.final for ch in choices if ch.final], job.n),
        }
    )


async def _events(req: CompletionRequest, job: Job, cid: str, created: int) -> AsyncIterator[bytes]:
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    base = {
        "id": cid,
        "object": "text_completion",
        "created": created,
        "model": job.model_id,
        "system_fingerprint": None,
    }
    if include_usage:
        base["usage"] = None
    offsets = [0 if req.echo else len(job.prompt_of(i).text) for i in range(len(job.streams))]
    echoed = [not req.echo] * len(job.streams)
    # Prompt log-probabilities may come over several prefill chunks: echo them all at once.
    prompt_lps: list[list] = [[] for _ in job.streams]
    completion, cached = 0, 0
    async for i, out in merge(job.streams):
        p = job.prompt_of(i)
        text, prompt_ids = out.text, None
        if not echoed[i]:
            prompt_lps[i].extend(out.prompt_logprobs or [])
            if not out.token_ids and out.finish_reason is None:
                continue
            text, prompt_ids, echoed[i] = p.text + text, p.ids, True
        lps = None
        if req.logprobs is not None:
            lps = legacy_logprobs(
                job.lm.vocab, out.logprobs or [], offsets[i], prompt_ids, prompt_lps[i]
            )
            offsets[i] += sum(len(t) for t in lps["tokens"])
        if not text and not lps and out.finish_reason is None:
            continue
        choice = {"index": i, "text": text, "logprobs": lps, "finish_reason": out.finish_reason}
        if out.finish_reason is not None:  # llama-server's figures on each choice's last chunk
            yield event({**base, "choices": [choice], "timings": timings(out)})
        else:
            yield event({**base, "choices": [choice]})
        if out.finish_reason is not None:
            completion += out.completion_tokens
            cached += out.cached_tokens if i % job.n == 0 else 0
    if include_usage:
        prompt_tokens = sum(len(p.ids) for p in job.prompts)
        yield event({**base, "choices": [], "usage": usage(prompt_tokens, completion, cached)})
