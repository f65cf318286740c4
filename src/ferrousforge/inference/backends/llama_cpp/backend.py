"""LlamaCppBackend: the InferenceBackend on llama.cpp, with continuous batching."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import itertools
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ferrousforge.api.request import InferenceOptions
from ferrousforge.engine.engine import Engine, RequestOutput, RequestStream
from ferrousforge.engine.prompt_cache import MIB
from ferrousforge.engine.runner import LogprobEntry
from ferrousforge.engine.sequence import SamplingLimits
from ferrousforge.engine.speculation import SpecConfig
from ferrousforge.errors import ModelNotFoundError, RpcUnavailableError
from ferrousforge.inference.backend import (
    Accelerator,
    BackendConfig,
    BackendInput,
    BackendOutput,
    Input,
    ModelHandle,
    Timings,
    TokenLogprob,
    Usage,
)
from ferrousforge.inference.backends.llama_cpp.chat_template import CHATML_TEMPLATE
from ferrousforge.inference.backends.llama_cpp.context import LlamaContext
from ferrousforge.inference.backends.llama_cpp.embedder import (
    LlamaEmbedder,
    input_limit,
    pooling_for,
)
from ferrousforge.inference.backends.llama_cpp.library import library_info, load_library
from ferrousforge.inference.backends.llama_cpp.model import LlamaModel, normalize_accelerator
from ferrousforge.inference.backends.llama_cpp.remote import (
    RemoteContext,
    RemoteEmbedder,
    RemoteRunner,
    RemoteSampler,
    VocabLease,
)
from ferrousforge.inference.backends.llama_cpp.rpc import RPC_MISSING, supports_rpc
from ferrousforge.inference.backends.llama_cpp.runner import LlamaRunner
from ferrousforge.inference.backends.llama_cpp.sampler import SamplerChain
from ferrousforge.inference.backends.llama_cpp.shared_model import ModelLease, SharedModels
from ferrousforge.inference.embedding import EmbeddingResult, finish_vectors, fit_inputs
from ferrousforge.inference.gguf import GGUFInfo, validate_gguf
from ferrousforge.inference.memory import ContextChoice, choose_context, weights_bytes

if TYPE_CHECKING:
    from ferrousforge.chat.plan import ChatPlan, ChatSpec

log = logging.getLogger(__name__)
_handle_ids = itertools.count(1)


@dataclass(slots=True)
class LoadedModel:
    """Everything one loaded model owns; closed in reverse order of creation."""

    handle: ModelHandle
    info: GGUFInfo
    config: BackendConfig
    lease: ModelLease | VocabLease  # the weights, shared with other loads of the same file
    context: LlamaContext | RemoteContext  # RemoteContext: the model runs on rpc workers
    engine: Engine

    @property
    def model(self) -> LlamaModel:
        return self.lease.model

    @property
    def vocab(self):
        return self.model.vocab

    @property
    def n_ctx(self) -> int:
        """Total KV cells of the context (all sequences)."""
        return self.context.n_ctx

    @property
    def n_ctx_seq(self) -> int:
        """What one request can hold: prompt plus max_tokens."""
        return self.context.n_ctx_seq

    def close(self) -> None:
        if not self.engine.shutdown():
            # Freeing the context under a running decode would crash; leak it instead.
            log.error(
                "engine thread of %s did not stop; its context is not freed", self.handle.path
            )
            return
        if self.engine.embedder is not None:
            self.engine.embedder.close()
        self.context.close()
        self.lease.release()  # frees the weights if no other load uses them


def _sampler(lm: LoadedModel, opts: InferenceOptions) -> SamplerChain | RemoteSampler:
    if lm.config.rpc_servers:
        # Built where the logits are, in the child; checked here first (a bad grammar is
        # the caller's 400, not a failed step).
        SamplerChain(lm.model._lib, lm.vocab.ptr, lm.vocab.n_tokens, opts, lm.n_ctx_seq).close()
        return RemoteSampler(opts)
    return SamplerChain(
        lm.model._lib,
        lm.vocab.ptr,
        lm.vocab.n_tokens,
        opts,
        lm.n_ctx_seq,
        budget_s=lm.engine.sample_budget_s,
        piece=lambda t, v=lm.vocab: v.piece(t, True),
    )


def _remote_parts(lib, path: Path, config: BackendConfig, acc: Accelerator, choice: ContextChoice):
    """A vocab-only model here, the weights and context in a child process on the workers."""
    if not supports_rpc(lib):
        raise RpcUnavailableError(f"--rpc: {RPC_MISSING}")
    model = LlamaModel(lib, path, config, acc, vocab_only=True)
    try:
        runner = RemoteRunner(path, config, choice)
    except BaseException:
        model.close()
        raise
    return VocabLease(model), RemoteContext(runner), runner


def _appended_specials(vocab, ids: list[int]) -> int:
    """How many of the last tokens of ``ids`` the tokenizer appends (EOS, [SEP]): kept at
    the end when an embedding input is cut."""
    n = 0
    for flag, tok in ((vocab.add_eos, vocab.eos), (vocab.add_sep, vocab.sep)):
        if flag and tok >= 0 and len(ids) > n and ids[len(ids) - 1 - n] == tok:
            n += 1
    return n


def _limits(o: InferenceOptions, vocab) -> SamplingLimits:
    limits = SamplingLimits(
        o.max_tokens, o.min_tokens, o.ignore_eos, o.logprobs, o.echo_logprobs, list(o.stop)
    )
    limits.draft_max = o.draft_max
    limits.cache_prompt = o.cache_prompt
    limits.slot = o.slot
    keep = vocab.special_ids(o.preserved_tokens) if o.preserved_tokens else frozenset()
    if keep:
        limits.piece = lambda t: vocab.piece(t, t in keep)
    return limits


def _find_malloc_trim():
    """glibc's malloc_trim, or None (another libc: nothing to call)."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


_malloc_trim = _find_malloc_trim()


def _close_and_trim(loaded: LoadedModel) -> None:
    """Close a model, then hand the heap it freed back to the OS: glibc keeps freed memory
    for reuse, so the process stayed about 100 MiB larger after a few loads and unloads of
    even a 135M model (its engine, prompt cache and buffers of every size)."""
    loaded.close()
    gc.collect()  # reference cycles that still hold the model's Python-side buffers
    if _malloc_trim is not None:
        _malloc_trim(0)


class LlamaCppBackend:
    """Runs GGUF models on llama.cpp. Concurrent calls on one model share its decode steps."""

    name = "llama_cpp"

    def __init__(self) -> None:
        self._models: dict[int, LoadedModel] = {}
        self.shared_models = SharedModels()

    # ---- loading ---------------------------------------------------------------

    async def load_model(
        self,
        path: Path | str,
        config: BackendConfig | None = None,
        accelerator: Accelerator | type | None = None,
    ) -> ModelHandle:
        """Validate and load a GGUF model and start its engine thread."""
        config = config or BackendConfig()
        acc = normalize_accelerator(accelerator)
        loaded = await asyncio.to_thread(self.load_model_sync, Path(path), config, acc)
        return loaded.handle

    def load_model_sync(self, path: Path, config: BackendConfig, acc: Accelerator) -> LoadedModel:
        lib = load_library(config.library_path)
        info = library_info()
        gguf = validate_gguf(path, check_architecture=info is not None and info.mode == "bundled")
        gen = config.generation()  # embedding-only: one small slot, never used
        choice = choose_context(gguf, gen, weights_bytes(path, gguf))
        # the layout chosen
        gen = replace(gen, kv_unified=choice.unified)
        config = replace(config, kv_unified=choice.unified)
        if config.rpc_servers:
            lease, context, runner = _remote_parts(lib, path, gen, acc, choice)
        else:
            lease = self.shared_models.acquire(lib, path, config, acc)
            try:
                context = LlamaContext(lib, lease.model, gen, choice)
            except BaseException:
                lease.release()
                raise
            runner = LlamaRunner(context)
        model = lease.model
        try:
            engine = Engine(
                runner,
                model.vocab.piece,
                max_waiting=gen.max_waiting,
                prefix_cache=gen.prefix_cache,
                host_cache_bytes=gen.cache_ram_mib * MIB,
                name=path.stem,
                sample_budget_s=gen.sample_budget_ms / 1000 if gen.sample_budget_ms else None,
                spec=SpecConfig(gen.draft_max, gen.draft_min, gen.draft_max_batch),
                embedder_factory=(
                    (lambda: RemoteEmbedder(runner))
                    if config.rpc_servers
                    else lambda: LlamaEmbedder(lib, model, config)
                ),
            )
        except BaseException:
            context.close()
            lease.release()
            raise
        handle = ModelHandle(next(_handle_ids), path, self.name)
        where = f" on rpc workers {', '.join(config.rpc_servers)}" if config.rpc_servers else ""
        loaded = LoadedModel(handle, gguf, config, lease, context, engine)
        self._models[handle.id] = loaded
        log.info(
            "loaded %s%s: %s, n_ctx=%d (%d per sequence), %d parallel sequences; context: %s",
            path.name,
            where,
            model.description,
            context.n_ctx,
            context.n_ctx_seq,
            context.n_seq_max,
            choice.reason,
        )
        return loaded

    async def unload_model(self, handle: ModelHandle) -> None:
        """Stop the model's engine (cancelling its requests) and free its native handles."""
        loaded = self._models.pop(handle.id, None)
        if loaded is None:
            raise ModelNotFoundError(f"model handle {handle.id} is not loaded")
        await asyncio.to_thread(_close_and_trim, loaded)

    def loaded(self, handle: ModelHandle) -> LoadedModel:
        try:
            return self._models[handle.id]
        except KeyError:
            raise ModelNotFoundError(f"model handle {handle.id} is not loaded") from None

    # ---- prompts -----------------------------------------------------------------

    def plan_chat(
        self, handle: ModelHandle, chat: BackendInput.Chat, spec: ChatSpec | None = None
    ) -> ChatPlan:
        """The chat's prompt, tool grammar and output parser (blocking: template rendering).

        ``spec`` (the HTTP routes pass one) replaces the tool settings read from ``chat``.
        """
        # The chat layer sits above this package (it imports the grammar tools from here).
        from ferrousforge.chat.plan import ChatSpec, plan_chat
        from ferrousforge.chat.tools import parse_tool_choice, read_tools

        lm = self.loaded(handle)
        vocab = lm.vocab
        if spec is None:
            tools = read_tools(chat.tools)
            choice = None
            if tools or chat.tool_choice is not None:
                choice = parse_tool_choice(chat.tool_choice, tools)
            spec = ChatSpec(
                tools=tools,
                choice=choice,
                parallel=chat.parallel_tool_calls,
                template_kwargs=chat.chat_template_kwargs,
                reasoning=chat.reasoning,
                tool_format=chat.tool_format,
            )
        template = chat.chat_template or lm.model.chat_template
        if not chat.jinja:
            from ferrousforge.chat.builtin import plan_builtin

            # A model without a template gets ChatML, as llama-server gives it.
            return plan_builtin(
                lm.model._lib,
                template or "chatml",
                chat.messages,
                spec,
                add_generation_prompt=chat.add_generation_prompt,
                continue_final_message=chat.continue_final_message,
            )
        return plan_chat(
            CHATML_TEMPLATE if template == "chatml" else template,
            chat.messages,
            spec,
            bos_token=vocab.token_text(vocab.bos) if vocab.bos >= 0 else "",
            eos_token=vocab.token_text(vocab.eos) if vocab.eos >= 0 else "",
            add_generation_prompt=chat.add_generation_prompt,
            continue_final_message=chat.continue_final_message,
        )

    def render_chat(self, handle: ModelHandle, chat: BackendInput.Chat) -> str:
        return self.plan_chat(handle, chat).prompt

    def tokenize(self, handle: ModelHandle, text: str, add_special: bool = True) -> list[int]:
        vocab = self.loaded(handle).vocab
        ids = vocab.tokenize(text, add_special=add_special, parse_special=True)
        # A template that writes the BOS itself plus add_bos would double it.
        if len(ids) > 1 and ids[0] == ids[1] == vocab.bos and vocab.add_bos:
            ids = ids[1:]
        return ids

    def prompt_ids(self, handle: ModelHandle, input: Input) -> list[int]:
        """Token ids for any input kind."""
        if isinstance(input, BackendInput.Tokens):
            ids = list(input.tokens)
            self.loaded(handle).vocab.check_ids(ids, "tokens")
            return ids
        if isinstance(input, BackendInput.Chat):
            return self.tokenize(handle, self.render_chat(handle, input))
        if isinstance(input, BackendInput.Text):
            return self.tokenize(handle, input.text)
        raise TypeError(
            f"input: expected BackendInput.Text, Tokens or Chat, got {type(input).__name__}"
        )

    # ---- generation ----------------------------------------------------------------

    def submit(
        self,
        handle: ModelHandle,
        prompt_ids: list[int],
        options: InferenceOptions,
        n: int = 1,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> list[RequestStream]:
        """Queue ``n`` completions of one prompt; siblings share the prompt's KV.

        Raises ContextOverflowError, EngineOverloadedError or ValueError at once. Called off
        the event loop (a worker thread), pass the loop the streams will be read on.
        """
        lm = self.loaded(handle)
        if not lm.model.can_generate:
            raise ValueError(
                f"model: {handle.path.name} is an embedding model (an encoder): it cannot "
                "generate text; use /v1/embeddings (or /v1/rerank)"
            )
        if lm.config.embedding_only:
            raise ValueError(
                f"model: {handle.path.name} is loaded embedding-only (embedding_only): it "
                "makes embeddings (or ranks), not text"
            )
        lm.engine.check_fits(len(prompt_ids), options.max_tokens)
        streams: list[RequestStream] = []
        try:
            for i in range(n):
                opts = options
                if n > 1 and options.seed is not None:
                    # siblings must differ; seeds are uint32, so wrap around
                    opts = options.replace(seed=(options.seed + i) % 2**32)
                sampler = _sampler(lm, opts)
                try:
                    leader = streams[0].seq if streams else None
                    streams.append(
                        lm.engine.add_request(
                            prompt_ids,
                            _limits(opts, lm.vocab),
                            sampler,
                            share_prefix_with=leader,
                            loop=loop,
                        )
                    )
                except BaseException:
                    sampler.close()
                    raise
        except BaseException:
            for s in streams:
                s.abort()
            raise
        return streams

    def _plan_input(
        self, handle: ModelHandle, input: Input, options: InferenceOptions
    ) -> tuple[list[int], InferenceOptions, ChatPlan | None]:
        if isinstance(input, BackendInput.Chat):
            plan = self.plan_chat(handle, input)
            return self.tokenize(handle, plan.prompt), plan.options(options), plan
        return self.prompt_ids(handle, input), options, None

    async def _prepare(
        self, handle: ModelHandle, inputs: Sequence[Input], options: InferenceOptions
    ) -> tuple[list[_Prepared], list[RequestStream]]:
        """Tokenize and submit in a worker thread: a chat template, a large grammar or a long
        list of DRY breakers then delays only this call, never the event loop."""
        loop = asyncio.get_running_loop()

        def build() -> tuple[list[_Prepared], list[RequestStream]]:
            prepared = [_Prepared(*self._plan_input(handle, i, options)) for i in inputs]
            streams: list[RequestStream] = []
            try:
                for p in prepared:
                    streams.extend(self.submit(handle, p.ids, p.options, loop=loop))
            except BaseException:
                for st in streams:
                    st.abort()
                raise
            return prepared, streams

        built = loop.run_in_executor(None, build)
        try:
            return await asyncio.shield(built)
        except asyncio.CancelledError:
            built.add_done_callback(_abort_when_built)  # the caller left: free what it built
            raise

    async def infer_stream(
        self, handle: ModelHandle, input: Input, options: InferenceOptions | None = None
    ) -> AsyncIterator[BackendOutput.Chunk]:
        """Stream text deltas; the last chunk carries finish_reason, usage and timings.

        Breaking out of the loop or cancelling the task frees the slot within one step.
        """
        options = options or InferenceOptions()
        (p,), (stream,) = await self._prepare(handle, [input], options)
        vocab = self.loaded(handle).vocab
        parser = p.plan.parser() if p.plan is not None else None
        calls = 0
        try:
            async for out in stream:
                chunk = to_chunk(out, vocab, p.ids if options.echo_logprobs else None)
                if parser is not None:
                    events = parser.feed(out.text)
                    if out.finish_reason is not None:
                        events += parser.finish()
                    _apply_events(chunk, events)
                    calls += len(chunk.tool_calls)
                    if calls and chunk.finish_reason == "stop":
                        chunk.finish_reason = "tool_calls"
                yield chunk
        finally:
            stream.abort()

    async def infer(
        self, handle: ModelHandle, input: Input, options: InferenceOptions | None = None
    ) -> BackendOutput.Text:
        """Generate a whole completion."""
        options = options or InferenceOptions()
        (p,), (stream,) = await self._prepare(handle, [input], options)
        return _parsed(await collect(stream, self.loaded(handle).vocab, p.ids, options), p.plan)

    # ---- embeddings and ranking ------------------------------------------------------

    def embedding_inputs(
        self,
        handle: ModelHandle,
        inputs: Sequence[str | list[int] | list[int | str]],
        truncate: bool = False,
    ) -> list[list[int]]:
        """Token ids per input, each within one embedding decode (blocking: tokenization).
        A text gets the model's special tokens, as llama-server adds them; in a mixed list
        of ids and texts only a leading text does (llama-server's tokenize_mixed)."""
        lm = self.loaded(handle)
        ids, tails = [], []
        for i, x in enumerate(inputs):
            if isinstance(x, str):
                row = lm.vocab.tokenize(x, add_special=True, parse_special=False)
                ids.append(row)
                tails.append(_appended_specials(lm.vocab, row))
                continue
            row = []
            for j, part in enumerate(x):
                if isinstance(part, str):
                    row += lm.vocab.tokenize(part, add_special=j == 0, parse_special=False)
                else:
                    row.append(part)
            lm.vocab.check_ids(row, f"input[{i}]")
            ids.append(row)
            tails.append(0)  # ids as given: cut where they stand
        return fit_inputs(ids, input_limit(lm.config, lm.model), truncate, tails)

    async def embed(
        self,
        handle: ModelHandle,
        inputs: Sequence[str | list[int] | list[int | str]],
        *,
        normalize: bool = True,
        dimensions: int | None = None,
        truncate: bool = False,
        norm: int = 2,
    ) -> EmbeddingResult:
        """Pooled embeddings of texts or token-id lists, one row each, in as few decodes as
        the embedding context holds (concurrent calls share them). ``pooling`` in the
        BackendConfig picks mean/cls/last (default: the GGUF's own, else mean); ``norm``
        the normalisation when ``normalize`` (llama-server's embd_normalize, 2: L2)."""
        lm = self.loaded(handle)
        pooling = pooling_for(lm.config, lm.model)
        if pooling == "rank":
            raise ValueError(
                "model: its pooling is 'rank' (a reranker): it scores documents against a "
                "query (POST /v1/rerank, backend.rerank()) and makes no embeddings"
            )
        if pooling == "none":
            raise ValueError(
                "model: its pooling is 'none' (a vector per token), which /v1/embeddings "
                "cannot return: use POST /embedding, or serve it with another --pooling"
            )
        ids = await asyncio.to_thread(self.embedding_inputs, handle, inputs, truncate)
        vectors = await lm.engine.add_embedding(ids)
        counts = [len(x) for x in ids]
        mat = finish_vectors(vectors, normalize, dimensions, norm)
        return EmbeddingResult(mat, sum(counts), counts)

    async def embed_per_token(
        self,
        handle: ModelHandle,
        inputs: Sequence[str | list[int] | list[int | str]],
        *,
        norm: int = 2,
        truncate: bool = False,
    ) -> tuple[list[np.ndarray], list[int]]:
        """llama-server's /embedding: per input, a (tokens, n_embd_out) matrix with pooling
        "none" (not normalised, as llama-server), else one row, the pooled vector scaled by
        ``norm``. Also the token count of each input."""
        lm = self.loaded(handle)
        pooling = pooling_for(lm.config, lm.model)
        if pooling != "none":
            res = await self.embed(handle, inputs, truncate=truncate, norm=norm)
            return [row[None, :] for row in res.vectors], res.token_counts
        ids = await asyncio.to_thread(self.embedding_inputs, handle, inputs, truncate)
        mats = await lm.engine.add_embedding(ids)
        return [m.astype(np.float32, copy=False) for m in mats], [len(x) for x in ids]

    def rank_inputs(
        self, handle: ModelHandle, query: str, documents: Sequence[str]
    ) -> list[list[int]]:
        """One token sequence per (query, document) pair, as llama-server builds them: the
        model's rerank template if it has one, else BOS query EOS SEP document EOS."""
        lm = self.loaded(handle)
        vocab = lm.vocab
        template = lm.model.meta("tokenizer.chat_template.rerank")
        eos = vocab.eos if vocab.eos >= 0 else vocab.sep
        out = []
        for doc in documents:
            if template:
                text = template.replace("{query}", query).replace("{document}", doc)
                out.append(vocab.tokenize(text, add_special=False, parse_special=True))
                continue
            ids = [vocab.bos] if vocab.add_bos else []
            ids += vocab.tokenize(query, add_special=False)
            ids += [eos] if vocab.add_eos else []
            ids += [vocab.sep] if vocab.add_sep else []
            ids += vocab.tokenize(doc, add_special=False)
            ids += [eos] if vocab.add_eos else []
            out.append(ids)
        return out

    async def rerank(
        self, handle: ModelHandle, query: str, documents: Sequence[str], truncate: bool = False
    ) -> EmbeddingResult:
        """Relevance scores of ``documents`` for ``query`` (row i: document i's scores),
        from a model with rank pooling (a reranker); ValueError for any other model."""
        lm = self.loaded(handle)
        if pooling_for(lm.config, lm.model) != "rank":
            raise ValueError(
                "model: it cannot rank (its GGUF declares no rank pooling; serve a reranker, "
                'or set pooling = "rank" for a model with a classification head)'
            )
        if not documents:
            raise ValueError("documents: must not be empty")

        def build() -> list[list[int]]:
            pairs = self.rank_inputs(handle, query, documents)
            tails = [_appended_specials(lm.vocab, p) for p in pairs]
            return fit_inputs(pairs, input_limit(lm.config, lm.model), truncate, tails)

        ids = await asyncio.to_thread(build)
        vectors = await lm.engine.add_embedding(ids)
        counts = [len(x) for x in ids]
        return EmbeddingResult(finish_vectors(vectors, normalize=False), sum(counts), counts)

    async def infer_batch(
        self, handle: ModelHandle, inputs: Sequence[Input], options: InferenceOptions | None = None
    ) -> list[BackendOutput.Text]:
        """Generate for every input together: each engine step decodes all of them at once."""
        options = options or InferenceOptions()
        prepared, streams = await self._prepare(handle, inputs, options)
        try:
            vocab = self.loaded(handle).vocab
            results = await asyncio.gather(
                *(collect(s, vocab, p.ids, options) for s, p in zip(streams, prepared, strict=True))
            )
            return [_parsed(r, p.plan) for r, p in zip(results, prepared, strict=True)]
        finally:
            for s in streams:
                s.abort()


@dataclass(slots=True)
class _Prepared:
    ids: list[int]
    options: InferenceOptions
    plan: ChatPlan | None


def _apply_events(chunk: BackendOutput.Chunk, events: list) -> None:
    """A chunk's text becomes only its content; reasoning and calls get their own fields."""
    from ferrousforge.chat.parser import CallDelta, ContentDelta, ReasoningDelta

    chunk.text = "".join(e.text for e in events if isinstance(e, ContentDelta))
    chunk.reasoning = "".join(e.text for e in events if isinstance(e, ReasoningDelta))
    chunk.tool_calls = [e.call for e in events if isinstance(e, CallDelta)]


def _parsed(result: BackendOutput.Text, plan: ChatPlan | None) -> BackendOutput.Text:
    if plan is None:
        return result
    msg = plan.parse(result.text)
    result.text, result.reasoning, result.tool_calls = msg.content, msg.reasoning, msg.tool_calls
    if msg.tool_calls and result.finish_reason == "stop":
        result.finish_reason = "tool_calls"
    return result


def _abort_when_built(built: asyncio.Future) -> None:
    if not built.cancelled() and built.exception() is None:
        for stream in built.result()[1]:
            stream.abort()


def _token_logprobs(entries: list[LogprobEntry] | None, vocab) -> list[TokenLogprob] | None:
    if entries is None:
        return None
    return [
        TokenLogprob(
            e.token,
            vocab.token_text(e.token),
            e.logprob,
            [(t, vocab.token_text(t), lp) for t, lp in e.top],
        )
        for e in entries
    ]


def to_chunk(out: RequestOutput, vocab, prompt_ids: list[int] | None = None) -> BackendOutput.Chunk:
    chunk = BackendOutput.Chunk(
        out.text, out.token_ids, out.finish_reason, logprobs=_token_logprobs(out.logprobs, vocab)
    )
    if out.prompt_logprobs is not None:
        chunk.prompt_logprobs = _token_logprobs(out.prompt_logprobs, vocab)  # type: ignore[assignment]
    if out.finish_reason is not None:
        chunk.usage = Usage(out.prompt_tokens, out.completion_tokens, out.cached_tokens)
        chunk.timings = _timings(out)
    return chunk


def _timings(out: RequestOutput) -> Timings:
    tps = (out.completion_tokens - 1) / out.generation_s if out.generation_s > 0 else 0.0
    return Timings(out.ttft_s * 1000, out.generation_s * 1000, tps)


async def collect(
    stream: RequestStream, vocab, prompt_ids: list[int], options: InferenceOptions
) -> BackendOutput.Text:
    """Drain a stream into one BackendOutput.Text."""
    text, ids, logprobs, prompt_lps = [], [], [], []
    last: RequestOutput | None = None
    try:
        async for out in stream:
            text.append(out.text)
            ids.extend(out.token_ids)
            if out.logprobs:
                logprobs.extend(out.logprobs)
            if out.prompt_logprobs:
                prompt_lps.extend(out.prompt_logprobs)
            last = out
    finally:
        stream.abort()
    assert last is not None and last.finish_reason is not None
    result = BackendOutput.Text(
        "".join(text),
        ids,
        last.finish_reason,  # type: ignore[arg-type]
        Usage(last.prompt_tokens, last.completion_tokens, last.cached_tokens),
        _timings(last),
    )
    if options.logprobs is not None:
        result.logprobs = _token_logprobs(logprobs, vocab)
    if options.echo_logprobs:
        result.prompt_logprobs = [None, *(_token_logprobs(prompt_lps, vocab) or [])]
    return result
