"""The backend protocol every inference backend implements, and its data types."""

from __future__ import annotations

import math
import os
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from ferrousforge.api.request import InferenceOptions
from ferrousforge.chat.tools import ToolCall

FinishReason = Literal["stop", "length", "tool_calls"]

# The generation context of an embedding-only model: llama.cpp needs one, nothing runs in it.
EMBEDDING_ONLY_CELLS = 256


class AcceleratorType:
    """Where the model's layers run. Use ``AcceleratorType.Cuda(device_id=0)`` etc."""

    @dataclass(frozen=True, slots=True)
    class Cpu:
        pass

    @dataclass(frozen=True, slots=True)
    class Cuda:
        device_id: int = 0

    @dataclass(frozen=True, slots=True)
    class Metal:
        pass

    @dataclass(frozen=True, slots=True)
    class Vulkan:
        device_id: int = 0


Accelerator = (
    AcceleratorType.Cpu | AcceleratorType.Cuda | AcceleratorType.Metal | AcceleratorType.Vulkan
)

SplitMode = Literal["none", "layer", "row"]
KVCacheType = Literal["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1"]


def _default_threads() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 4)


@dataclass(slots=True)
class BackendConfig:
    """How to load a model and size its context. Every field has a sane default.

    ``context_size`` is the total KV cache in tokens, split evenly across the
    ``max_parallel`` sequences as in llama-server (each request gets
    context_size / max_parallel); 0 sizes each sequence for the model's training
    context, as far as ``memory_budget_bytes`` allows (None: half the RAM available at
    load time, and never less than min(training context, 2048)).
    ``kv_unified`` True pools all cells (one request may use them all), at the cost of
    slower batched attention and outputs that depend on batch composition; False keeps
    one stream per sequence; None (the default) keeps streams unless ``context_size`` 0
    cannot give every sequence the training context, and then pools what fits.
    """

    num_threads: int = field(default_factory=_default_threads)
    num_threads_batch: int | None = None  # None: same as num_threads
    context_size: int = 0
    memory_budget_bytes: int | None = None  # for weights + KV + compute when context_size=0
    batch_size: int = 512  # n_batch: tokens per llama_decode
    ubatch_size: int = 512  # n_ubatch: physical micro-batch
    max_parallel: int = 8  # n_seq_max: sequences decoded together
    max_waiting: int = 256  # requests queued beyond the running ones; more -> overloaded
    n_gpu_layers: int = -1  # -1: all layers when an accelerator is chosen
    main_gpu: int = 0
    split_mode: SplitMode = "layer"
    tensor_split: list[float] | None = None
    # llama.cpp RPC workers (host:port) that hold the model's layers, weighed by
    # tensor_split in this order (None or all zeros: by their free memory). The model then
    # runs in a child process (ggml-rpc aborts its process when a worker goes away), and a
    # step longer than rpc_step_timeout_s counts as a lost worker.
    rpc_servers: list[str] = field(default_factory=list)
    rpc_step_timeout_s: float = 120.0
    flash_attention: Literal["auto", "on", "off"] = "auto"
    cache_type_k: KVCacheType = "f16"
    cache_type_v: KVCacheType = "f16"
    use_mmap: bool = True
    use_mlock: bool = False
    library_path: str | None = None  # dynamic mode: a libllama file or directory
    prefix_cache: bool = True
    # Host-RAM prompt cache, MiB (0: off): the KV of prompts that left their slot, restored
    # when a prompt sharing their prefix comes back (llama-server's --cache-ram).
    cache_ram_mib: int = 8192
    kv_unified: bool | None = None  # None: chosen at load (see the class docstring)
    # Per-token sampling budget: a request whose sampling (a huge grammar) takes longer
    # for one token is ended with SamplingBudgetError; 0 turns the check off.
    sample_budget_ms: float = 500.0
    # Speculative decoding by prompt lookup (engine/speculation.py): at most draft_max
    # tokens guessed per step and sequence (0: off), none shorter than draft_min, and only
    # while at most draft_max_batch sequences are generating.
    draft_max: int = 16
    draft_min: int = 1
    draft_max_batch: int = 2
    # Embeddings (a second context on the same weights, made on the first request):
    # pooling "mean", "cls", "last" or "rank"; None: the GGUF's own, else mean. Each
    # embedding decode holds up to embedding_batch tokens (so no input is longer).
    pooling: Literal["mean", "cls", "last", "rank", "none"] | None = None
    embedding_batch: int = 2048
    # Embedding-only: the model embeds (or ranks) and never generates; generation raises
    # ValueError, and the generation context shrinks to one small slot (see generation()).
    embedding_only: bool = False
    progress_callback: Callable[[float], None] | None = None

    def __post_init__(self) -> None:
        self.validate()

    def generation(self) -> BackendConfig:
        """The settings of the generation context: these, or for an embedding-only model one
        slot of EMBEDDING_ONLY_CELLS cells with no host cache and no drafts, since nothing is
        ever generated there (the embedding context is made apart, from embedding_batch)."""
        if not self.embedding_only:
            return self
        small = EMBEDDING_ONLY_CELLS
        return replace(
            self,
            context_size=small,
            max_parallel=1,
            batch_size=min(self.batch_size, small),
            ubatch_size=min(self.ubatch_size, small),
            cache_ram_mib=0,
            draft_max=0,
        )

    def validate(self) -> None:
        checks = [
            (self.num_threads >= 1, "num_threads", ">= 1"),
            (
                self.num_threads_batch is None or self.num_threads_batch >= 1,
                "num_threads_batch",
                ">= 1",
            ),
            (self.context_size >= 0, "context_size", ">= 0 (0: from the model)"),
            (
                self.memory_budget_bytes is None or self.memory_budget_bytes > 0,
                "memory_budget_bytes",
                "> 0 (None: from the available RAM)",
            ),
            (self.batch_size >= 1, "batch_size", ">= 1"),
            (self.ubatch_size >= 1, "ubatch_size", ">= 1"),
            (1 <= self.max_parallel <= 256, "max_parallel", "between 1 and 256"),
            (self.max_waiting >= 0, "max_waiting", ">= 0"),
            (self.cache_ram_mib >= 0, "cache_ram_mib", ">= 0 (0: off)"),
            (
                math.isfinite(self.sample_budget_ms) and self.sample_budget_ms >= 0,
                "sample_budget_ms",
                ">= 0 (0: no budget)",
            ),
            (self.draft_max >= 0, "draft_max", ">= 0 (0: no speculative decoding)"),
            (self.draft_min >= 1, "draft_min", ">= 1"),
            (self.draft_max_batch >= 0, "draft_max_batch", ">= 0"),
            (
                self.pooling in (None, "mean", "cls", "last", "rank", "none"),
                "pooling",
                "mean, cls, last or rank",
            ),
            (self.embedding_batch >= 1, "embedding_batch", ">= 1"),
            (self.main_gpu >= 0, "main_gpu", ">= 0"),
            (all(_is_endpoint(e) for e in self.rpc_servers), "rpc_servers", "host:port items"),
            (self.rpc_step_timeout_s > 0, "rpc_step_timeout_s", "> 0"),
            (self.split_mode in ("none", "layer", "row"), "split_mode", "none, layer or row"),
            (self.flash_attention in ("auto", "on", "off"), "flash_attention", "auto, on or off"),
        ]
        for ok, name, rule in checks:
            if not ok:
                raise ValueError(f"{name}: must be {rule}")


def _is_endpoint(text: str) -> bool:
    host, sep, port = text.rpartition(":")
    return bool(sep and host and port.isdigit() and 0 < int(port) < 65536)


class BackendInput:
    """What to generate from: ``Text``, ``Tokens`` or ``Chat`` messages."""

    @dataclass(frozen=True, slots=True)
    class Text:
        text: str

    @dataclass(frozen=True, slots=True)
    class Tokens:
        tokens: list[int]

    @dataclass(frozen=True, slots=True)
    class Chat:
        """OpenAI-style messages. ``tools`` are OpenAI tool objects; ``tool_choice`` is
        ``"auto"`` (the default with tools), ``"none"``, ``"required"`` or
        ``{"type": "function", "function": {"name": ...}}``. With ``reasoning`` a leading
        ``<think>`` block (or the template's own markers) goes to the output's ``reasoning``.
        """

        messages: list[dict[str, Any]]
        chat_template: str | None = None  # overrides the model's template
        add_generation_prompt: bool = True
        # The prompt ends inside the last message (an assistant prefill) and the answer
        # continues it (add_generation_prompt then has no effect).
        continue_final_message: bool = False
        tools: list[dict[str, Any]] | None = None
        tool_choice: str | dict[str, Any] | None = None
        parallel_tool_calls: bool = True
        chat_template_kwargs: dict[str, Any] | None = None  # e.g. {"enable_thinking": False}
        reasoning: bool = True
        tool_format: str | None = None  # hermes, llama3, mistral, generic; None: detect
        # False: llama.cpp's built-in template for the template's format, without Jinja (as
        # llama-server --no-jinja); tools and template kwargs are then refused.
        jinja: bool = True


Input = BackendInput.Text | BackendInput.Tokens | BackendInput.Chat


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens reused from the prefix cache

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(slots=True)
class Timings:
    prompt_ms: float = 0.0  # submission to first token
    generation_ms: float = 0.0  # first token to last
    generation_tokens_per_s: float = 0.0


@dataclass(slots=True)
class TokenLogprob:
    token: int
    text: str
    logprob: float
    top: list[tuple[int, str, float]] = field(default_factory=list)


class BackendOutput:
    """Results: ``Text`` for a whole generation, ``Chunk`` for one stream delta."""

    @dataclass(slots=True)
    class Text:
        text: str
        token_ids: list[int]
        finish_reason: FinishReason
        usage: Usage
        timings: Timings
        logprobs: list[TokenLogprob] | None = None
        prompt_logprobs: list[TokenLogprob | None] | None = None
        # Chat inputs: the calls the model made (text is then only the content around them)
        # and its reasoning, when it wrote any.
        tool_calls: list[ToolCall] = field(default_factory=list)
        reasoning: str | None = None

    @dataclass(slots=True)
    class Chunk:
        text: str
        token_ids: list[int]
        finish_reason: FinishReason | None = None
        usage: Usage | None = None  # set on the last chunk
        timings: Timings | None = None
        logprobs: list[TokenLogprob] | None = None
        prompt_logprobs: list[TokenLogprob | None] | None = None
        tool_calls: list[ToolCall] = field(default_factory=list)  # complete calls
        reasoning: str = ""  # reasoning text in this delta


@dataclass(frozen=True, slots=True)
class ModelHandle:
    """Opaque reference to a loaded model, returned by ``load_model``."""

    id: int
    path: Path
    backend: str


@runtime_checkable
class InferenceBackend(Protocol):
    """What every backend provides. All methods are coroutines (or async iterators)."""

    async def load_model(
        self,
        path: Path,
        config: BackendConfig | None = None,
        accelerator: Accelerator | type | None = None,
    ) -> ModelHandle: ...

    async def infer(
        self, handle: ModelHandle, input: Input, options: InferenceOptions | None = None
    ) -> BackendOutput.Text: ...

    def infer_stream(
        self, handle: ModelHandle, input: Input, options: InferenceOptions | None = None
    ) -> AsyncIterator[BackendOutput.Chunk]: ...

    async def infer_batch(
        self, handle: ModelHandle, inputs: Sequence[Input], options: InferenceOptions | None = None
    ) -> list[BackendOutput.Text]: ...

    async def unload_model(self, handle: ModelHandle) -> None: ...
