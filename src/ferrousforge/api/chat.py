"""POST /v1/chat/completions: messages through the model's chat template, choices out."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from ferrousforge.api.build_info import SYSTEM_FINGERPRINT
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
    TextFormat,
)
from ferrousforge.api.sse import event, sse_response
from ferrousforge.api.streams import ClientDisconnected, collect, merge, unless_disconnected
from ferrousforge.api.timings import combined_timings, timings
from ferrousforge.chat.parser import CallDelta, ContentDelta, Event, ParsedMessage, ReasoningDelta
from ferrousforge.chat.plan import ChatPlan, ChatSpec
from ferrousforge.chat.tools import parse_tool_choice, read_tools
from ferrousforge.inference.backend import BackendInput
from ferrousforge.inference.backends.llama_cpp.backend import LlamaCppBackend, LoadedModel
from ferrousforge.models.registry import ModelSpec
from ferrousforge.settings import ServerSettings


def message_dicts(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    """Messages as the template expects them; text parts joined into one string, one per
    line (as llama-server joins them), legacy ``function_call`` / ``function`` messages as
    ``tool_calls`` / ``tool`` ones."""
    out = []
    for m in messages:
        d = m.model_dump(exclude_none=True)
        if isinstance(m.content, list):
            d["content"] = "\n".join(part.text for part in m.content)
        d.setdefault("content", "")
        call = d.pop("function_call", None)
        if m.role == "assistant" and isinstance(call, dict) and "tool_calls" not in d:
            d["tool_calls"] = [{"id": f"call_{len(out)}", "type": "function", "function": call}]
        if m.role == "function":
            prev = out[-1] if out else {}
            ids = [c.get("id") for c in prev.get("tool_calls") or [] if isinstance(c, dict)]
            d = {"role": "tool", "name": m.name, "content": d["content"]}
            if ids:
                d["tool_call_id"] = ids[0]
        out.append(d)
    return out


def grammar_for(
    fmt: ResponseFormat | None, json_schema: dict[str, Any] | None = None
) -> str | None:
    """The grammar that makes output match response_format, or llama-server's top-level
    ``json_schema`` (None for plain text)."""
    plain = fmt is None or isinstance(fmt, TextFormat)
    if json_schema is not None and (
        plain or (isinstance(fmt, JSONObjectFormat) and not fmt.schema_)
    ):
        return schema_to_gbnf(json_schema) if json_schema else json_object_gbnf()
    if isinstance(fmt, JSONSchemaFormat):
        return schema_to_gbnf(fmt.json_schema.schema_)
    if isinstance(fmt, JSONObjectFormat):
        return schema_to_gbnf(fmt.schema_) if fmt.schema_ else json_object_gbnf()
    return None


def prompt_of(
    req_messages: list[ChatMessage],
    backend: LlamaCppBackend,
    lm: LoadedModel,
    model: ModelSpec,
) -> Prompt:
    """The rendered conversation and its ids: what generation and /tokenize both count."""
    chat = BackendInput.Chat(
        message_dicts(req_messages), chat_template=model.chat_template, jinja=model.jinja
    )
    text = backend.render_chat(lm.handle, chat)
    return Prompt(text, backend.tokenize(lm.handle, text))


@dataclass(slots=True)
class ChatJob(Job):
    """A chat Job with its plan (how to read the output) and whether it used ``functions``."""

    chat: ChatPlan | None = None
    legacy: bool = False
    verbose: bool = False  # the answer carries llama-server's __verbose


def tool_spec(req: ChatCompletionRequest, settings: ServerSettings, model: ModelSpec) -> ChatSpec:
    """Tools, tool choice and reasoning settings of a request (ValueError naming the field)."""
    legacy = req.functions is not None
    if legacy:
        tools = read_tools(req.functions, "functions")
        choice = parse_tool_choice(req.function_call, tools, "function_call")
    else:
        tools = read_tools(req.tools)
        choice = parse_tool_choice(req.tool_choice, tools)
    constrained = req.grammar is not None or req.json_schema is not None
    if choice.mode != "none" and (constrained or not _is_text(req.response_format)):
        what = "grammar" if req.grammar is not None else "response_format"
        what = "json_schema" if req.json_schema is not None else what
        raise ValueError(f"{what}: cannot be combined with tools unless tool_choice is 'none'")
    reasoning = (req.reasoning_format or settings.reasoning_format) != "none"
    return ChatSpec(
        tools=tools,
        choice=choice,
        parallel=req.parallel_tool_calls and not legacy,  # legacy answers hold one call
        template_kwargs=req.chat_template_kwargs,
        reasoning=reasoning,
        tool_format=model.tool_format or settings.tool_format,
    )


def _is_text(fmt: ResponseFormat | None) -> bool:
    return fmt is None or isinstance(fmt, TextFormat)


def continuation(req: ChatCompletionRequest) -> tuple[bool, bool]:
    """(add_generation_prompt, continue_final_message) as llama-server settles them: a last
    assistant message is continued unless the request says otherwise (ValueError for what
    contradicts itself)."""
    msgs = req.messages
    cont = req.continue_final_message
    add_generation = req.add_generation_prompt
    if cont is None and msgs[-1].role == "assistant":
        if len(msgs) >= 2 and msgs[-2].role == "assistant":
            raise ValueError("messages: cannot have 2 or more assistant messages at the end")
        add_generation, cont = False, True
    elif cont and add_generation:
        raise ValueError(
            "continue_final_message: cannot be true with add_generation_prompt true "
            "(set add_generation_prompt to false)"
        )
    if cont and msgs[-1].role == "assistant" and getattr(msgs[-1], "tool_calls", None):
        raise ValueError("messages: cannot continue an assistant message that has tool calls")
    return add_generation, bool(cont)


def chat_prompt(
    req: ChatCompletionRequest,
    backend: LlamaCppBackend,
    lm: LoadedModel,
    model: ModelSpec,
    spec: ChatSpec,
) -> tuple[ChatPlan, Prompt]:
    """The request rendered with its tools, and its token ids: what generation counts (and
    what the Messages API's count_tokens answers)."""
    plan = chat_plan(req, backend, lm, model, spec)
    return plan, Prompt(plan.prompt, backend.tokenize(lm.handle, plan.prompt))


def chat_plan(
    req: ChatCompletionRequest,
    backend: LlamaCppBackend,
    lm: LoadedModel,
    model: ModelSpec,
    spec: ChatSpec,
) -> ChatPlan:
    """The request rendered with its tools (what POST /apply-template answers)."""
    add_generation, cont = continuation(req)
    chat = BackendInput.Chat(
        message_dicts(req.messages),
        chat_template=model.chat_template,
        add_generation_prompt=add_generation,
        continue_final_message=cont,
        jinja=model.jinja,
    )
    return backend.plan_chat(lm.handle, chat, spec)


def start(
    req: ChatCompletionRequest,
    backend: LlamaCppBackend,
    lm: LoadedModel,
    model_id: str,
    settings: ServerSettings,
    model: ModelSpec,
    loop: asyncio.AbstractEventLoop,
) -> ChatJob:
    """Render, tokenize and submit a request (blocking: run it through ``prepare``)."""
    # An n that can never fit is the answer whatever the template makes of the conversation
    # (a model without one would otherwise say only that): check it before rendering.
    check_capacity(lm, 1, req.n)
    spec = tool_spec(req, settings, model)
    if req.json_schema is not None and req.grammar is not None:
        raise ValueError("json_schema: cannot be combined with grammar")
    grammar = grammar_for(req.response_format, req.json_schema)
    plan, prompt = chat_prompt(req, backend, lm, model, spec)
    top = req.top_logprobs if req.top_logprobs is not None else 0

    def plan_for(p: Prompt) -> GenerationPlan:
        mt = max_tokens_for(
            req,
            default=None,
            prompt_len=len(p.ids),
            n_ctx=seq_context(lm),
            ceiling=settings.max_tokens_limit,
        )
        gen = plan_generation(
            req,
            max_tokens=mt,
            grammar=grammar,
            logprobs=top if req.logprobs else None,
            defaults=settings.sampling_defaults,
        )
        gen.options = plan.options(gen.options)
        return gen

    streams, gen = submit(backend, lm, [prompt], plan_for, req.n, loop)
    verbose = req.verbose if req.verbose is not None else settings.log_level == "debug"
    return ChatJob(
        model_id,
        lm,
        [prompt],
        streams,
        gen,
        req.n,
        chat=plan,
        legacy=req.functions is not None,
        verbose=verbose,
    )


def _message(job: ChatJob, msg: ParsedMessage) -> dict[str, Any]:
    out: dict[str, Any] = {"role": "assistant", "content": msg.content, "refusal": None}
    if msg.reasoning is not None:
        out["reasoning_content"] = msg.reasoning
    if msg.tool_calls:
        if not msg.content:
            out["content"] = None  # as OpenAI: a message that only calls has null content
        if job.legacy:
            call = msg.tool_calls[0]
            out["function_call"] = {"name": call.name, "arguments": call.arguments}
        else:
            out["tool_calls"] = [c.as_openai() for c in msg.tool_calls]
    return out


def _finish(job: ChatJob, reason: str | None, called: bool) -> str | None:
    if called and reason == "stop":
        return "function_call" if job.legacy else "tool_calls"
    return reason


async def respond(req: ChatCompletionRequest, job: ChatJob, request: Request) -> Response:
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
        msg = job.chat.parse(ch.text) if job.chat else ParsedMessage(ch.text, None, [])
        body_choices.append(
            {
                "index": i,
                "message": _message(job, msg),
                "logprobs": chat_logprobs(job.lm.vocab, ch.logprobs) if req.logprobs else None,
                "finish_reason": _finish(job, ch.final.finish_reason, bool(msg.tool_calls)),
            }
        )
        completion += ch.final.completion_tokens
    cached = choices[0].final.cached_tokens if choices[0].final else 0
    body = {
        "id": cid,
        "object": "chat.completion",
        "created": created,
        "model": job.model_id,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": body_choices,
        "usage": usage(len(job.prompts[0].ids), completion, cached),
        "timings": combined_timings([ch.final for ch in choices if ch.final], len(choices)),
    }
    if job.verbose:
        body["__verbose"] = _verbose(job, choices[0].text, completion, cached)
    return JSONResponse(body)


def _verbose(job: ChatJob, text: str, completion: int, cached: int) -> dict[str, Any]:
    """llama-server's debugging fields: the prompt as the model read it (special tokens
    written out) and the raw output, before tool calls or reasoning were parsed out."""
    prompt = job.prompts[0]
    return {
        "prompt": job.lm.vocab.detokenize(prompt.ids, special=True),
        "content": text,
        "model": job.model_id,
        "tokens_evaluated": len(prompt.ids),
        "tokens_predicted": completion,
        "tokens_cached": cached,
    }


def _deltas(job: ChatJob, events: list[Event]) -> list[dict[str, Any]]:
    """OpenAI stream deltas for parser events: a call is a first delta with its id and name,
    then its arguments."""
    out: list[dict[str, Any]] = []
    for e in events:
        if isinstance(e, ContentDelta):
            if out and set(out[-1]) == {"content"}:
                out[-1]["content"] += e.text
            else:
                out.append({"content": e.text})
        elif isinstance(e, ReasoningDelta):
            if out and set(out[-1]) == {"reasoning_content"}:
                out[-1]["reasoning_content"] += e.text
            else:
                out.append({"reasoning_content": e.text})
        elif job.legacy:
            out.append({"function_call": {"name": e.call.name, "arguments": ""}})
            out.append({"function_call": {"arguments": e.call.arguments}})
        else:
            head = {"index": e.index, "id": e.call.id, "type": "function"}
            fn = {"name": e.call.name, "arguments": ""}
            out.append({"tool_calls": [{**head, "function": fn}]})
            out.append(
                {"tool_calls": [{"index": e.index, "function": {"arguments": e.call.arguments}}]}
            )
    return out


async def _events(
    req: ChatCompletionRequest, job: ChatJob, cid: str, created: int
) -> AsyncIterator[bytes]:
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    base: dict[str, Any] = {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": job.model_id,
        "system_fingerprint": SYSTEM_FINGERPRINT,
    }
    if include_usage:
        base["usage"] = None

    def chunk(
        i: int, delta: dict[str, Any], lps=None, finish: str | None = None, **extra: Any
    ) -> bytes:
        choice = {"index": i, "delta": delta, "logprobs": lps, "finish_reason": finish}
        return event({**base, "choices": [choice], **extra})

    for i in range(len(job.streams)):  # the first chunk of each choice carries the role
        yield chunk(i, {"role": "assistant", "content": None})
    parsers = [job.chat.parser() if job.chat else None for _ in job.streams]
    called = [False] * len(job.streams)
    texts = [""] * len(job.streams)  # raw output, for __verbose
    completion, cached = 0, 0
    async for i, out in merge(job.streams):
        texts[i] += out.text
        lps = chat_logprobs(job.lm.vocab, out.logprobs) if req.logprobs and out.logprobs else None
        parser = parsers[i]
        if parser is None:
            deltas = [{"content": out.text}] if out.text else []
        else:
            events = parser.feed(out.text) if out.text else []
            if out.finish_reason is not None:
                events += parser.finish()
            called[i] = called[i] or any(isinstance(e, CallDelta) for e in events)
            deltas = _deltas(job, events)
        if lps and not deltas:
            deltas = [{}]  # log-probabilities of tokens still held back by the parser
        for k, delta in enumerate(deltas):
            yield chunk(i, delta, lps if k == 0 else None)
        if out.finish_reason is not None:
            extra: dict[str, Any] = {"timings": timings(out)}  # llama-server's figures
            if job.verbose:
                extra["__verbose"] = _verbose(
                    job, texts[i], out.completion_tokens, out.cached_tokens
                )
            yield chunk(i, {}, None, _finish(job, out.finish_reason, called[i]), **extra)
            completion += out.completion_tokens
            cached = out.cached_tokens if i == 0 else cached
    if include_usage:
        yield event(
            {**base, "choices": [], "usage": usage(len(job.prompts[0].ids), completion, cached)}
        )
