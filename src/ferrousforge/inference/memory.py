"""How much memory a model will take, from its GGUF header alone (nothing is loaded).

Mirrors what llama.cpp allocates for a context created by ``LlamaContext``:

- weights: the sum of every tensor's data size (ggml block sizes), over all parts of a
  split GGUF. llama.cpp maps exactly these bytes (its ``model buffer size`` log line).
  CPU builds may also keep repacked copies of some tensors (``CPU_REPACK``, about 5% on
  Gemma 3 270M Q4_K_M); that depends on the CPU and is not counted.
- KV cache: per layer and cell, ``n_head_kv * (key_length + value_length)`` elements of
  the cache type; cells as llama.cpp pads them (n_ctx and each stream to 256). Sliding-
  window layers hold only their window per stream unless the context keeps a full-size
  SWA cache (``SWA_FULL``, llama.cpp's default, which we keep); recurrent layers hold a
  fixed f32 state per sequence instead.
- compute: llama.cpp's worst-case graph (``sched_reserve: compute buffer size``) is
  dominated by the logits of one micro-batch, ``n_ubatch * n_vocab`` f32, plus a few
  activations per token; with flash attention off, a stream's attention scores
  (``n_ubatch * n_kv * (n_head + 1)`` f32, the +1 for the mask) can be larger. The peak is
  the larger of the two, plus the output buffer (``n_seq_max`` rows of logits). Measured
  on SmolLM2-135M and Gemma 3 270M: within 2% of llama.cpp's figure.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

from ferrousforge.errors import ModelLoadError
from ferrousforge.inference.backend import BackendConfig
from ferrousforge.inference.gguf import GGML_TYPE_SIZES, GGUFInfo, read_gguf

# llama.cpp pads n_ctx and each sequence's share of it to this many cells (llama-context.cpp).
CELL_PAD = 256
# Per sequence when nothing else decides, and the least --ctx-size 0 gives without an
# explicit budget (unless the model was trained on less).
DEFAULT_SEQ_CONTEXT = 2048
# Without a memory budget, one model may take this share of the RAM available at load time.
DEFAULT_RAM_FRACTION = 0.5
# LlamaContext keeps llama.cpp's default full-size SWA cache: a sequence can then be rolled
# back to any position, which the prefix cache relies on.
SWA_FULL = True
# Layers in one sliding-window period where the GGUF does not say (llama-model.cpp's
# load_swa_pattern defaults): the last layer of each period attends globally.
_SWA_PERIODS = {"gemma2": 2, "gemma3": 6, "cohere2": 4, "gpt-oss": 2}
# ggml type ids of the KV cache types BackendConfig accepts.
KV_TYPE_IDS = {
    "f32": 0,
    "f16": 1,
    "q4_0": 2,
    "q4_1": 3,
    "q5_0": 6,
    "q5_1": 7,
    "q8_0": 8,
    "iq4_nl": 20,
    "bf16": 30,
}
_SPLIT = re.compile(r"^(?P<stem>.*)-(?P<part>\d{5})-of-(?P<count>\d{5})\.gguf$")
_F32 = 4


@dataclass(frozen=True, slots=True)
class MemoryEstimate:
    """Bytes a model will take once loaded with a given config (see the module doc)."""

    weights_bytes: int
    kv_bytes: int
    compute_bytes: int
    n_ctx: int = 0  # KV cells the context will have (all sequences)
    n_ctx_seq: int = 0  # cells one sequence can use
    # The embedding context, counted for an embedding-only model (which makes it for sure;
    # any other model makes it on its first embedding request).
    embedding_bytes: int = 0
    # For a model that serves both: what its embedding context adds once made (not in
    # total_bytes; the server's budget counts it from the first embedding request).
    embedding_extra_bytes: int = 0

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_bytes + self.compute_bytes + self.embedding_bytes


@dataclass(frozen=True, slots=True)
class ModelShape:
    """What the estimate needs from a GGUF header."""

    arch: str
    n_ctx_train: int
    n_layer: int
    n_embd: int
    n_head: int
    n_vocab: int
    kv_heads: tuple[int, ...]  # per layer; 0 for a recurrent layer
    key_length: int
    value_length: int
    n_swa: int  # sliding window, 0: none
    swa_layers: tuple[bool, ...]
    state_floats: int  # recurrent state per layer and sequence (f32), 0: none

    @classmethod
    def from_gguf(cls, info: GGUFInfo) -> ModelShape:
        arch = info.architecture or ""

        def val(key: str, default: int = 0) -> int:
            v = info.metadata.get(f"{arch}.{key}")
            return v if isinstance(v, int) and not isinstance(v, bool) else default

        n_layer = val("block_count")
        n_embd = val("embedding_length")
        n_head = _first(info.metadata.get(f"{arch}.attention.head_count"), 0)
        head_dim = n_embd // n_head if n_head else 0
        state = _state_floats(val, n_embd)
        kv_heads = _per_layer(info.metadata.get(f"{arch}.attention.head_count_kv"), n_layer)
        if kv_heads is None:  # absent (MHA) or an array too long to keep: assume every head
            kv_heads = (n_head,) * n_layer if not state else (0,) * n_layer
        key_length = val("attention.key_length", head_dim)
        value_length = val("attention.value_length", head_dim)
        if val("attention.kv_lora_rank"):  # MLA: a compressed latent plus the rope part
            key_length = val("attention.kv_lora_rank") + val("rope.dimension_count")
            value_length = 0
            kv_heads = tuple(1 if h else 0 for h in kv_heads)
        n_swa = val("attention.sliding_window")
        n_vocab = info.vocab_size or val("vocab_size")
        return cls(
            arch=arch,
            n_ctx_train=val("context_length"),
            n_layer=n_layer,
            n_embd=n_embd,
            n_head=n_head,
            n_vocab=n_vocab,
            kv_heads=kv_heads,
            key_length=key_length,
            value_length=value_length,
            n_swa=n_swa,
            swa_layers=_swa_layers(info, arch, n_layer) if n_swa else (False,) * n_layer,
            state_floats=state,
        )

    def kv_bytes_per_cell(self, config: BackendConfig) -> int:
        """KV bytes one cell takes over the full-attention layers (SWA layers counted apart)."""
        return sum(
            self._layer_cell_bytes(h, config)
            for h, swa in zip(self.kv_heads, self.swa_layers, strict=True)
            if not swa
        )

    def _layer_cell_bytes(self, n_head_kv: int, config: BackendConfig) -> int:
        return _row_bytes(config.cache_type_k, n_head_kv * self.key_length) + _row_bytes(
            config.cache_type_v, n_head_kv * self.value_length
        )


def _first(value: object, default: int) -> int:
    if isinstance(value, list):
        value = max(value, default=default)
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _per_layer(value: object, n_layer: int) -> tuple[int, ...] | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,) * n_layer
    if isinstance(value, list) and len(value) == n_layer:
        return tuple(int(v) for v in value)
    return None


def _swa_layers(info: GGUFInfo, arch: str, n_layer: int) -> tuple[bool, ...]:
    pattern = info.metadata.get(f"{arch}.attention.sliding_window_pattern")
    if isinstance(pattern, list) and len(pattern) == n_layer:
        return tuple(bool(p) for p in pattern)
    period = pattern if isinstance(pattern, int) else _SWA_PERIODS.get(arch, 0)
    if not period:  # unknown: count every layer as full attention (never underestimates)
        return (False,) * n_layer
    return tuple(il % period < period - 1 for il in range(n_layer))


def _state_floats(val, n_embd: int) -> int:
    """Recurrent state per layer and sequence, in f32 (llama_hparams n_embd_r + n_embd_s)."""
    if val("wkv.head_size"):  # RWKV
        return val("token_shift_count", 2) * n_embd + n_embd * val("wkv.head_size")
    if val("shortconv.l_cache"):  # LFM2
        return n_embd * (val("shortconv.l_cache") - 1)
    if val("ssm.state_size"):  # Mamba, Mamba 2 and the hybrids built on them
        d_inner, d_state = val("ssm.inner_size"), val("ssm.state_size")
        conv = max(val("ssm.conv_kernel") - 1, 0) * (d_inner + 2 * val("ssm.group_count") * d_state)
        return conv + d_state * d_inner
    return 0


def _row_bytes(cache_type: str, n: int) -> int:
    per_block, size = GGML_TYPE_SIZES[KV_TYPE_IDS[cache_type]]
    return -(-n // per_block) * size


def _pad(n: int) -> int:
    return -(-n // CELL_PAD) * CELL_PAD


@dataclass(frozen=True, slots=True)
class ContextChoice:
    """The KV cells a context gets, how they are laid out, and why (said in the load log)."""

    n_ctx: int  # cells to ask llama.cpp for (all sequences)
    per_seq: int  # what one sequence may hold
    reason: str
    unified: bool = False  # one pool for all sequences (else one stream per sequence)
    # Cap on one sequence below what llama.cpp gives it (a unified pool larger than the
    # training context: no request should go past what the model was trained on).
    seq_limit: int | None = None


def available_memory_bytes() -> int | None:
    """RAM available for new allocations (/proc/meminfo's MemAvailable), None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def explicit_context(config: BackendConfig) -> ContextChoice | None:
    """The choice a set ``context_size`` makes (streams unless ``kv_unified``), else None."""
    n = config.context_size
    if not n:
        return None
    unified = bool(config.kv_unified)
    return ContextChoice(
        n, n if unified else max(1, n // config.max_parallel), f"context_size={n} (set)", unified
    )


def choose_context(
    info: GGUFInfo, config: BackendConfig, weights: int, available: int | None = None
) -> ContextChoice:
    """Cells for a context: ``config.context_size`` if set, else the model's training context
    for every sequence as far as the memory budget allows.

    The budget is ``config.memory_budget_bytes``, else DEFAULT_RAM_FRACTION of
    ``available`` (MemAvailable when not given); it must hold this model's weights, KV and
    compute buffers (``estimate_for``). Without an explicit budget a sequence never gets
    less than the old default, min(training context, 2048).

    Layout (``config.kv_unified`` None: chosen here): one KV stream per sequence when every
    sequence gets the training context (batched decode is fastest so); when the budget
    holds less, one unified pool of what fits, so that one request may use up to the
    training context of whatever cells the others leave. ``kv_unified`` False keeps streams
    (each capped to an equal share), True always pools.
    """
    config = config.generation()  # what the generation context is made from
    explicit = explicit_context(config)
    if explicit is not None:
        return explicit
    train = ModelShape.from_gguf(info).n_ctx_train or DEFAULT_SEQ_CONTEXT
    n_seq = config.max_parallel
    floor = min(train, DEFAULT_SEQ_CONTEXT)
    budget = config.memory_budget_bytes
    if budget is not None:
        source, floor = f"memory budget {_gib(budget)}", min(train, CELL_PAD)
    else:
        available = available if available is not None else available_memory_bytes()
        if available is None:
            unified = bool(config.kv_unified)
            return ContextChoice(floor * n_seq, floor, "available memory unknown", unified)
        budget = int(available * DEFAULT_RAM_FRACTION)
        source = f"{DEFAULT_RAM_FRACTION:.0%} of {_gib(available)} available RAM"
    fit = _Fit(info, config, weights, budget, train, f"training context {train}, {source}")
    if config.kv_unified is not True and fit.total(train * n_seq, False) <= budget:
        return fit.streams(train, "the training context fits")
    if config.kv_unified is False or (n_seq == 1 and not config.kv_unified):
        # streams asked for (or one sequence, where a pool is the same): an equal share each
        per_seq = fit.largest(False) // n_seq
        if per_seq < floor:
            return fit.streams(floor, f"the budget holds less; using the minimum {floor}")
        return fit.streams(per_seq, "capped by the budget")
    return fit.pool(floor)


@dataclass(frozen=True, slots=True)
class _Fit:
    """choose_context's arithmetic for one model, config and budget."""

    info: GGUFInfo
    config: BackendConfig
    weights: int
    budget: int
    train: int
    head: str  # what the reasons start with

    def total(self, cells: int, unified: bool) -> int:
        layout = replace(self.config, kv_unified=unified)
        return estimate_for(self.info, layout, self.weights, cells).total_bytes

    def largest(self, unified: bool) -> int:
        """The most cells up to the training context for every sequence that the budget
        holds: a multiple of 256 per sequence for streams, of 256 for a pool."""
        n_seq = self.config.max_parallel
        step = CELL_PAD * (1 if unified else n_seq)
        lo, hi = 0, self.train * n_seq // step
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if self.total(mid * step, unified) <= self.budget else (lo, mid - 1)
        return lo * step

    def streams(self, per_seq: int, verdict: str) -> ContextChoice:
        n_ctx = per_seq * self.config.max_parallel
        reason = (
            f"{self.head}: {per_seq} per sequence x {self.config.max_parallel} ({verdict}; "
            f"estimated {_gib(self.total(n_ctx, False))} with weights)"
        )
        return ContextChoice(n_ctx, per_seq, reason)

    def pool(self, floor: int) -> ContextChoice:
        """One unified pool of what fits (at least ``floor`` per sequence); a request may
        hold up to the training context of it."""
        n_seq = self.config.max_parallel
        n_ctx = max(self.largest(True), floor * n_seq)
        per_seq = min(self.train, n_ctx)
        estimate = self.total(n_ctx, True)
        if estimate > self.budget:
            verdict = f"the budget holds less; using the minimum {floor} per sequence"
        elif n_ctx >= self.train * n_seq:
            verdict = "the training context fits"
        else:
            verdict = "capped by the budget"
        reason = (
            f"{self.head}: one unified pool of {n_ctx} cells for {n_seq} sequences, up to "
            f"{per_seq} per request as far as the others leave room ({verdict}; estimated "
            f"{_gib(estimate)} with weights)"
        )
        return ContextChoice(n_ctx, per_seq, reason, True, per_seq if n_ctx > per_seq else None)


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def llama_cells(n_ctx: int, n_seq_max: int, unified: bool) -> tuple[int, int]:
    """(n_ctx, n_ctx_seq) as llama.cpp rounds them: n_ctx up to 256, then (separate streams)
    each sequence's share up to 256 and n_ctx back to the shares' sum."""
    n_ctx = _pad(n_ctx)
    if unified:
        return n_ctx, n_ctx
    n_ctx_seq = _pad(n_ctx // n_seq_max)
    return n_ctx_seq * n_seq_max, n_ctx_seq


def split_parts(path: Path | str) -> list[Path]:
    """Every file of a split GGUF (``-00001-of-0000N.gguf``) given any part, else [path]."""
    path = Path(path)
    m = _SPLIT.match(path.name)
    if not m:
        return [path]
    stem, count = m["stem"], int(m["count"])
    parts = [path.with_name(f"{stem}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)]
    missing = [p.name for p in parts if not p.is_file()]
    if missing:
        raise ModelLoadError(f"{path}: split GGUF is missing parts: {', '.join(missing)}")
    return parts


def weights_bytes(path: Path | str, header: GGUFInfo | None = None) -> int:
    """Tensor data bytes over every part of the model file (``header``: ``path``'s, if
    already read: a header with a large vocabulary takes a while to read)."""
    total = 0
    for part in split_parts(path):
        info = header if header is not None and header.path == part else read_gguf(part)
        for t in info.tensors:
            size = t.n_bytes()
            if size is None:
                raise ModelLoadError(f"{part}: tensor {t.name} has an unknown ggml type")
            total += size
    return total


def kv_bytes(shape: ModelShape, config: BackendConfig, n_ctx: int, n_ctx_seq: int) -> int:
    """KV cache (and recurrent state) bytes of a context with these cell counts."""
    n_seq = config.max_parallel
    unified = config.kv_unified
    n_stream = 1 if unified else n_seq
    total = n_ctx * shape.kv_bytes_per_cell(config)
    if shape.n_swa and any(shape.swa_layers):
        size_swa = n_ctx_seq if unified else n_ctx // n_stream
        if not SWA_FULL:
            n_ubatch = min(config.ubatch_size, config.batch_size)
            window = shape.n_swa * (n_seq if unified else 1) + n_ubatch
            size_swa = _pad(min(size_swa, window))
        per_cell = sum(
            shape._layer_cell_bytes(h, config)
            for h, swa in zip(shape.kv_heads, shape.swa_layers, strict=True)
            if swa
        )
        total += size_swa * n_stream * per_cell
    if shape.state_floats:
        recurrent = sum(1 for h in shape.kv_heads if h == 0)
        total += recurrent * shape.state_floats * _F32 * max(1, n_seq)
    return total


def compute_bytes(shape: ModelShape, config: BackendConfig, n_ctx: int, n_ctx_seq: int) -> int:
    """Rough worst-case compute buffer plus output buffer (see the module doc)."""
    n_ubatch = min(config.ubatch_size, config.batch_size)
    peak = n_ubatch * _F32 * (shape.n_vocab + 4 * shape.n_embd)
    if config.flash_attention == "off":  # "auto" turns it on wherever it is supported
        n_kv = n_ctx if config.kv_unified else n_ctx_seq
        tokens_per_stream = n_ubatch if config.kv_unified else -(-n_ubatch // config.max_parallel)
        streams = 1 if config.kv_unified else config.max_parallel
        scores = streams * tokens_per_stream * n_kv * (shape.n_head + 1) * _F32
        peak = max(peak, scores + n_ubatch * _F32 * 4 * shape.n_embd)
    return peak + shape.n_vocab * config.max_parallel * _F32


def embedding_bytes(shape: ModelShape, config: BackendConfig) -> int:
    """The embedding context (llama_cpp/embedder.py): ``embedding_batch`` cells in one pool,
    decoded as one micro-batch whose every token is an output, so llama.cpp's output buffer
    holds a row of logits per token besides the compute buffer's (the output layer runs over
    every token of an embeddings context): for SmolLM2-135M at 2048, about 0.85 GiB."""
    n = config.embedding_batch
    cells = _pad(n)
    emb = replace(
        config,
        context_size=cells,
        batch_size=n,
        ubatch_size=n,
        max_parallel=1,
        kv_unified=True,
    )
    rows = n * _F32 * (shape.n_vocab + shape.n_embd)
    return kv_bytes(shape, emb, cells, cells) + compute_bytes(shape, emb, cells, cells) + rows


def estimate_for(
    info: GGUFInfo, config: BackendConfig, weights: int, n_ctx: int | None = None
) -> MemoryEstimate:
    """The estimate for a parsed header, its weights' size and (optionally) a cell count."""
    gen = config.generation()
    shape = ModelShape.from_gguf(info)
    if n_ctx is None:
        choice = choose_context(info, gen, weights)
        n_ctx, gen = choice.n_ctx, replace(gen, kv_unified=choice.unified)
    gen = replace(gen, kv_unified=bool(gen.kv_unified))
    n_ctx, n_ctx_seq = llama_cells(n_ctx, gen.max_parallel, gen.kv_unified)
    return MemoryEstimate(
        weights_bytes=weights,
        kv_bytes=kv_bytes(shape, gen, n_ctx, n_ctx_seq),
        compute_bytes=compute_bytes(shape, gen, n_ctx, n_ctx_seq),
        n_ctx=n_ctx,
        n_ctx_seq=n_ctx_seq,
        embedding_bytes=embedding_bytes(shape, config) if config.embedding_only else 0,
        embedding_extra_bytes=0 if config.embedding_only else embedding_bytes(shape, config),
    )


def estimate_memory(path: Path, config: BackendConfig) -> MemoryEstimate:
    """Memory the model at ``path`` will take when loaded with ``config``, before loading it
    (with ``context_size`` 0, for the context ``choose_context`` picks now).

    Reads only GGUF headers (every part of a split file). Raises ModelLoadError for a file
    that is missing or not a GGUF.
    """
    path = Path(path)
    first = read_gguf(split_parts(path)[0])
    return estimate_for(first, config, weights_bytes(path, first))
