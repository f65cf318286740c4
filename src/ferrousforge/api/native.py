"""llama-server's native completion API: POST /completion (and /infill), converted onto the
same engine path as /v1/completions, answered in llama-server's shapes."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from ferrousforge.api import completions, infill
from ferrousforge.api.completions import Job, Prompt
from ferrousforge.api.json_schema import schema_to_gbnf
from ferrousforge.api.native_schemas import InfillRequest, NativeCompletionRequest
from ferrousforge.api.openapi import streaming
from ferrousforge.api.options import max_tokens_for, plan_generation, seq_context
from ferrousforge.api.request import InferenceOptions
from ferrousforge.api.routes import respond_job, start_job, state
from ferrousforge.api.sse import event, sse_response
from ferrousforge.api.streams import Choice, ClientDisconnected, merge, unless_disconnected
from ferrousforge.api.timings import timings
from ferrousforge.engine.engine import RequestOutput, RequestStream
from ferrousforge.engine.runner import LogprobEntry
from ferrousforge.inference.backends.llama_cpp.backend import LlamaCppBackend, LoadedModel
from ferrousforge.settings import ServerSettings

router = APIRouter()

LLAMA_DEFAULT_SEED = 0xFFFFFFFF  # what llama-server reports for "a random seed"

# The sampler chain's order (after logit_bias): llama.cpp's default order, less top_n_sigma,
# which is off unless set (and refused when set). A ``samplers`` list may leave some out.
CHAIN = ("penalties", "dry", "top_k", "typ_p", "top_p", "min_p", "xtc", "temperature")
_ALIASES = {
    "top-k": "top_k",
    "top-p": "top_p",
    "nucleus": "top_p",
    "typical_p": "typ_p",
    "typical": "typ_p",
    "typ": "typ_p",
    "min-p": "min_p",
    "temp": "temperature",
    "top_n_sigma": "top_n_sigma",
}
_CHARS = {
    "e": "penalties",
    "d": "dry",
    "k": "top_k",
    "y": "typ_p",
    "p": "top_p",
    "m": "min_p",
    "x": "xtc",
    "t": "temperature",
    "s": "top_n_sigma",
}
# The option values that take a sampler out of the chain.
_OFF: dict[str, dict[str, Any]] = {
    "penalties": {"repeat_penalty": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0},
    "dry": {"dry_multiplier": 0.0},
    "top_k": {"top_k": 0},
    "typ_p": {"typical_p": 1.0},
    "top_p": {"top_p": 1.0},
    "min_p": {"min_p": 0.0},
    "xtc": {"xtc_probability": 0.0},
}


def sampler_chain(samplers: list[str] | str | None) -> list[str]:
    """The chain a ``samplers`` field asks for: names (or llama.cpp's one-letter codes) in the
    chain's own order; any other order or sampler is a ValueError naming the field."""
    if samplers is None:
        return list(CHAIN)
    if isinstance(samplers, str):
        names = [_CHARS.get(c, c) for c in samplers]
    else:
        names = [_ALIASES.get(n.lower(), n.lower()) for n in samplers]
    names = [n for n in names if n != "top_n_sigma"]  # off: top_n_sigma is refused when set
    unknown = [n for n in names if n not in CHAIN]
    if unknown:
        raise ValueError(f"samplers: {unknown[0]!r} is not supported here (known: {CHAIN})")
    if names != sorted(names, key=CHAIN.index) or len(set(names)) != len(names):
        raise ValueError(f"samplers: only this order can be honoured: {list(CHAIN)}")
    if "temperature" not in names:
        raise ValueError("samplers: the chain must end with temperature here")
    return names


def parse_logit_bias(raw: list | dict | None, vocab, tokenize) -> dict[int, float]:
    """llama-server's logit_bias: [[id or text, bias or false], ...] or {"id or text": bias};
    a text biases each of its tokens, ``false`` bans (-inf)."""
    if not raw:
        return {}
    pairs = raw.items() if isinstance(raw, dict) else raw
    out: dict[int, float] = {}
    for pair in pairs:
        if not isinstance(pair, list | tuple) or len(pair) != 2:
            raise ValueError("logit_bias: each entry must be [token id or text, bias]")
        key, bias = pair
        if bias is False:
            bias = -math.inf
        elif isinstance(bias, bool) or not isinstance(bias, int | float):
            raise ValueError("logit_bias: a bias must be a number or false")
        if isinstance(key, str) and key.isdigit():
            key = int(key)
        if isinstance(key, int) and not isinstance(key, bool):
            vocab.check_ids([key], "logit_bias")
            out[key] = float(bias)
        elif isinstance(key, str):
            for t in tokenize(key):
                out[t] = float(bias)
        else:
            raise ValueError("logit_bias: a key must be a token id or a text")
    return out


def _subprompt(backend: LlamaCppBackend, lm: LoadedModel, p: Any) -> Prompt:
    """One prompt: a text, token ids, a list mixing both, or {"prompt_string": text}."""
    if isinstance(p, dict):
        if "prompt_string" not in p:
            raise ValueError('prompt: an object prompt needs "prompt_string"')
        if p.get("multimodal_data"):
            raise ValueError("prompt: multimodal_data: this model takes text only")
        p = p["prompt_string"]
    if isinstance(p, str):
        p = [p]
    if not isinstance(p, list) or not all(
        isinstance(x, str) or (isinstance(x, int) and not isinstance(x, bool)) for x in p
    ):
        raise ValueError(
            "prompt: each prompt must be a string, token ids, a list of both, or an object "
            'with "prompt_string"'
        )
    ids: list[int] = []
    for i, x in enumerate(p):
        if isinstance(x, str):  # BOS (where the model adds one) only at the very start
            ids.extend(backend.tokenize(lm.handle, x, add_special=i == 0))
        else:
            ids.append(x)
    if not ids:
        raise ValueError("prompt: must not be empty")
    lm.vocab.check_ids(ids, "prompt")
    return Prompt(lm.vocab.detokenize(ids, special=True), ids)


def read_native_prompts(backend: LlamaCppBackend, lm: LoadedModel, prompt: Any) -> list[Prompt]:
    """llama-server's rules: a list holding any integer is one prompt (token ids, maybe mixed
    with texts); any other list is one prompt per element."""
    if isinstance(prompt, list) and not any(
        isinstance(x, int) and not isinstance(x, bool) for x in prompt
    ):
        if not prompt:
            raise ValueError("prompt: must not be empty")
        return [_subprompt(backend, lm, p) for p in prompt]
    return [_subprompt(backend, lm, prompt)]


@dataclass(slots=True)
class NativeJob(Job):
    """A completion job that keeps each prompt's options (generation_settings shows them)."""

    options: list[InferenceOptions] = field(default_factory=list, kw_only=True)
    # The slot each prompt ran in (the engine forgets it once the sequence ends).
    slots: dict[int, int] = field(default_factory=dict, kw_only=True)

    def slot_of(self, i: int) -> int:
        slot = self.streams[i].seq.slot
        if slot is not None:
            self.slots[i] = slot
        return self.slots.get(i, -1)


def _asked_tokens(req: NativeCompletionRequest) -> int | None:
    asked = req.n_predict if req.n_predict is not None else req.max_tokens
    return None if asked is None or asked < 0 else asked


def start(
    req: NativeCompletionRequest,
    backend: LlamaCppBackend,
    lm: LoadedModel,
    model_id: str,
    settings: ServerSettings,
    loop: asyncio.AbstractEventLoop,
    prompts: list[Prompt] | None = None,
) -> Job:
    """Tokenize and submit (blocking: run it through ``completions.prepare``)."""
    if prompts is None:
        prompts = read_native_prompts(backend, lm, req.prompt)
    n_slots = lm.engine.runner.n_slots
    if req.id_slot >= n_slots:
        raise ValueError(f"id_slot: must be -1 (any) or below {n_slots}, the number of slots")
    chain = sampler_chain(req.samplers)
    off = {k: v for name in CHAIN if name not in chain for k, v in _OFF.get(name, {}).items()}
    bias = parse_logit_bias(
        req.logit_bias, lm.vocab, lambda t: backend.tokenize(lm.handle, t, add_special=False)
    )
    grammar = None
    if req.json_schema is not None:
        grammar = schema_to_gbnf(req.json_schema)
    defaults = dict(settings.sampling_defaults)
    fields = req.model_copy(update={"logit_bias": None})
    if req.seed == -1:
        fields.seed = None
        defaults.pop("seed", None)
    asked = SimpleNamespace(max_completion_tokens=None, max_tokens=_asked_tokens(req))

    def plan_for(p: Prompt):
        room = seq_context(lm) - len(p.ids)
        if asked.max_tokens is not None and room > 0:
            # llama-server: the request's n_predict wins over --n-predict (only its default);
            # past the context it stops there ("limit", truncated)
            mt = min(asked.max_tokens, room)
        else:
            mt = max_tokens_for(
                asked,
                default=None,
                prompt_len=len(p.ids),
                n_ctx=seq_context(lm),
                ceiling=settings.max_tokens_limit,
            )
        plan = plan_generation(
            fields,
            max_tokens=mt,
            grammar=grammar,
            logprobs=req.n_probs or None,
            defaults=defaults,
        )
        extra: dict[str, Any] = {**off, "cache_prompt": req.cache_prompt}
        if req.id_slot >= 0:
            extra["slot"] = req.id_slot
        if bias:
            extra["logit_bias"] = bias
        if req.preserved_tokens:
            extra["preserved_tokens"] = list(req.preserved_tokens)
        plan.options = plan.options.replace(**extra)
        return plan

    planned: list[InferenceOptions] = []

    def plan_and_keep(p: Prompt):
        plan = plan_for(p)
        planned.append(plan.options)
        return plan

    streams, plan = completions.submit(backend, lm, prompts, plan_and_keep, 1, loop)
    return NativeJob(model_id, lm, prompts, streams, plan, 1, options=planned)


def _bias_json(bias: float) -> float | None:
    return None if math.isinf(bias) else bias  # llama-server's JSON writes -inf as null


def generation_settings(
    req: NativeCompletionRequest, o: InferenceOptions, settings: ServerSettings, lm
) -> dict[str, Any]:
    """The options one prompt ran with, under llama-server's names."""
    asked = _asked_tokens(req)
    if asked is None:
        asked = -1 if settings.max_tokens_limit < 0 else o.max_tokens
    bias = [{"bias": _bias_json(b), "token": t} for t, b in o.logit_bias.items()]
    if o.ignore_eos:  # llama-server lists the end-of-generation bans too
        bias += [{"bias": None, "token": t} for t in sorted(lm.vocab.eog_ids)]
    return {
        "seed": o.seed if o.seed is not None else LLAMA_DEFAULT_SEED,
        "temperature": o.temperature,
        "dynatemp_range": 0.0,
        "dynatemp_exponent": 1.0,
        "top_k": o.top_k,
        "top_p": o.top_p,
        "min_p": o.min_p,
        "top_n_sigma": -1.0,
        "xtc_probability": o.xtc_probability,
        "xtc_threshold": o.xtc_threshold,
        "typical_p": o.typical_p,
        "repeat_last_n": o.repeat_last_n,
        "repeat_penalty": o.repeat_penalty,
        "presence_penalty": o.presence_penalty,
        "frequency_penalty": o.frequency_penalty,
        "dry_multiplier": o.dry_multiplier,
        "dry_base": o.dry_base,
        "dry_allowed_length": o.dry_allowed_length,
        "dry_penalty_last_n": o.dry_penalty_last_n,
        "dry_sequence_breakers": list(o.dry_sequence_breakers),
        "mirostat": o.mirostat,
        "mirostat_tau": o.mirostat_tau,
        "mirostat_eta": o.mirostat_eta,
        "adaptive_target": -1.0,
        "adaptive_decay": 0.9,
        "stop": list(o.stop),
        "max_tokens": asked,
        "n_predict": asked,
        "n_keep": 0,
        "n_discard": 0,
        "ignore_eos": o.ignore_eos,
        "stream": req.stream,
        "logit_bias": bias,
        "n_probs": req.n_probs,
        "min_keep": 0,
        "grammar": o.grammar or "",
        "grammar_lazy": False,
        "grammar_triggers": [],
        "preserved_tokens": list(o.preserved_tokens),
        "chat_format": "Content-only",
        "reasoning_format": "none",
        "samplers": sampler_chain(req.samplers),
        "speculative.n_max": o.draft_max if o.draft_max is not None else 0,
        "timings_per_token": req.timings_per_token,
        "post_sampling_probs": False,
        "backend_sampling": False,
        "lora": [],
    }


def _token_json(vocab, token: int, logprob: float) -> dict[str, Any]:
    piece = vocab.piece(token, True)
    return {
        "id": token,
        "token": piece.decode("utf-8", errors="ignore"),
        "bytes": list(piece),
        "logprob": logprob,
    }


def probabilities(vocab, entries: list[LogprobEntry]) -> list[dict[str, Any]]:
    """``completion_probabilities``: each token with its log-probability and the top n_probs."""
    return [
        {
            **_token_json(vocab, e.token, e.logprob),
            "top_logprobs": [_token_json(vocab, t, lp) for t, lp in e.top],
        }
        for e in entries
    ]


def _stop_type(stream: RequestStream, final: RequestOutput) -> tuple[str, str]:
    """(stop_type, stopping_word): llama-server's eos / word / limit (none: aborted)."""
    if final.finish_reason == "length":
        return "limit", ""
    if final.finish_reason == "stop":
        word = stream.seq.stop_reason
        return ("word", word) if word else ("eos", "")
    return "none", ""


def _nested(fields: list[str], body: dict[str, Any]) -> dict[str, Any]:
    """llama-server's response_fields: "a/b" picks body["a"]["b"], under the key "a/b"."""
    out = {}
    for path in fields:
        value: Any = body
        for part in path.split("/"):
            if not isinstance(value, dict) or part not in value:
                break
            value = value[part]
        else:
            out[path] = value
    return out


def final_body(
    req: NativeCompletionRequest,
    job: NativeJob,
    i: int,
    final: RequestOutput,
    settings: ServerSettings,
    content: str,
    tokens: list[int],
    probs: list[LogprobEntry] | None,
) -> dict[str, Any]:
    """The last object of a completion (the whole answer unless streamed)."""
    stream, prompt = job.streams[i], job.prompt_of(i)
    stop_type, word = _stop_type(stream, final)
    used = final.prompt_tokens + final.completion_tokens
    body: dict[str, Any] = {
        "index": i,
        "content": content,
        "tokens": tokens,
        "id_slot": job.slot_of(i),
        "stop": True,
        "model": job.model_id,
        "tokens_predicted": final.completion_tokens,
        "tokens_evaluated": final.prompt_tokens,
        "generation_settings": generation_settings(req, job.options[i], settings, job.lm),
        "prompt": prompt.text,
        "has_new_line": "\n" in content,
        # the context was full: the answer was cut there (llama-server without context shift)
        "truncated": stop_type == "limit" and used >= seq_context(job.lm),
        "stop_type": stop_type,
        "stopping_word": word,
        "tokens_cached": used,
        "timings": timings(final),
    }
    if probs:
        body["completion_probabilities"] = probabilities(job.lm.vocab, probs)
    return _nested(req.response_fields, body) if req.response_fields else body


async def respond(
    req: NativeCompletionRequest, job: NativeJob, request: Request, settings: ServerSettings
) -> Response:
    if req.stream:
        return sse_response(_events(req, job, settings), on_close=job.abort, done=False)

    async def gather() -> list[Choice]:
        choices = [Choice() for _ in job.streams]
        async for i, out in merge(job.streams):
            job.slot_of(i)
            choices[i].add(out)
        return choices

    try:
        choices = await unless_disconnected(request, gather)
    except ClientDisconnected:
        return Response(status_code=499)
    bodies = []
    for i, ch in enumerate(choices):
        assert ch.final is not None
        tokens = ch.token_ids if req.return_tokens else []
        bodies.append(
            final_body(req, job, i, ch.final, settings, ch.text, tokens, ch.logprobs or None)
        )
    return JSONResponse(bodies[0] if len(bodies) == 1 else bodies)


async def _events(
    req: NativeCompletionRequest, job: NativeJob, settings: ServerSettings
) -> AsyncIterator[bytes]:
    """One event per token ({content, tokens, stop: false, ...}), then each prompt's final
    object (content and tokens empty: they were streamed)."""
    predicted = [0] * len(job.streams)
    async for i, out in merge(job.streams):
        ids = out.token_ids or []
        lps = out.logprobs or []
        for k, token in enumerate(ids):
            predicted[i] += 1
            last = k == len(ids) - 1
            part: dict[str, Any] = {
                "index": i,
                "content": out.text if last else "",
                "tokens": [token],
                "stop": False,
                "id_slot": job.slot_of(i),
                "tokens_predicted": predicted[i],
                "tokens_evaluated": len(job.prompt_of(i).ids),
            }
            if k < len(lps):
                part["completion_probabilities"] = probabilities(job.lm.vocab, [lps[k]])
            if req.timings_per_token:
                part["timings"] = _running_timings(job.streams[i], predicted[i])
            yield event(part)
        if not ids and out.text and out.finish_reason is None:
            yield event({"index": i, "content": out.text, "tokens": [], "stop": False})
        if out.finish_reason is not None:
            tail = out.text if not ids else ""  # text flushed at the end, with no token
            if tail:
                yield event({"index": i, "content": tail, "tokens": [], "stop": False})
            yield event(final_body(req, job, i, out, settings, "", [], None))


def _running_timings(stream: RequestStream, predicted: int) -> dict[str, float | int]:
    """timings_per_token: the figures so far (read from the sequence the engine updates)."""
    seq = stream.seq
    first = seq.first_token_at or seq.arrival
    so_far = RequestOutput(
        "",
        [],
        prompt_tokens=len(seq.prompt_ids),
        completion_tokens=predicted,
        cached_tokens=seq.n_cached_prompt,
        ttft_s=max(0.0, first - seq.arrival),
        generation_s=max(0.0, (seq.last_token_at or first) - first),
    )
    return timings(so_far)


@router.post("/completion", responses=streaming("A completion, or its SSE events"))
# llama-server serves its native API under /completions too (its OpenAI one is /v1/...)
@router.post("/completions", include_in_schema=False)
async def create_native_completion(body: NativeCompletionRequest, request: Request) -> Response:
    """llama-server's native completion (see docs/server.md)."""
    st = state(request)
    job = await start_job(
        request,
        body.model,
        body.keep_alive_s,
        lambda mid, lm, loop: start(body, st.pool.backend, lm, mid, st.settings, loop),
    )
    return await respond_job(job, respond(body, job, request, st.settings), body.stream)


@router.post("/infill", responses=streaming("A fill-in-the-middle completion, or its events"))
async def create_infill(body: InfillRequest, request: Request) -> Response:
    """Fill in the middle, with the model's FIM tokens (a 400 for a model without them)."""
    st = state(request)
    backend = st.pool.backend

    def start_infill(mid: str, lm: LoadedModel, loop: asyncio.AbstractEventLoop) -> Job:
        def tokenize(text: str) -> list[int]:
            return backend.tokenize(lm.handle, text, add_special=False)

        fim = infill.FimTokens.of(lm.vocab)
        ids = infill.infill_prompt(
            fim,
            tokenize,
            body.input_prefix,
            body.input_suffix,
            [(c.filename, c.text) for c in body.input_extra],
            tokenize(body.prompt) if body.prompt else [],
            infill.Budget(
                n_batch=lm.engine.runner.n_batch,
                n_predict=_asked_tokens(body) or 0,
                n_ctx=seq_context(lm),
            ),
        )
        prompt = Prompt(lm.vocab.detokenize(ids, special=True), ids)
        return start(body, backend, lm, mid, st.settings, loop, prompts=[prompt])

    job = await start_job(request, body.model, body.keep_alive_s, start_infill)
    return await respond_job(job, respond(body, job, request, st.settings), body.stream)
