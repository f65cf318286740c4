"""LlamaEmbedder: a second llama_context on a loaded model, for pooled embeddings and ranks.

Generation and embeddings want different contexts: with ``embeddings`` on, llama.cpp pools
each sequence's hidden states into one vector (mean, CLS, last token) or, for rerankers,
into rank scores. A sequence split over two ubatches would be pooled in halves, so this
context decodes whole batches only (n_ubatch = n_batch = n_ctx), one sequence id per input,
in one unified KV pool that is cleared after every batch. It is made on the first
embedding request, on the same llama_model as the generation context (no second copy of
the weights), and only the engine thread uses it.
"""

from __future__ import annotations

import dataclasses
import logging
from types import ModuleType

import numpy as np

from ferrousforge.errors import DecodeError
from ferrousforge.inference.backend import BackendConfig
from ferrousforge.inference.backends.llama_cpp.batch import TokenBatch
from ferrousforge.inference.backends.llama_cpp.context import LlamaContext, as_float_array
from ferrousforge.inference.backends.llama_cpp.model import LlamaModel

log = logging.getLogger(__name__)

# llama_pooling_type
POOLING = {"none": 0, "mean": 1, "cls": 2, "last": 3, "rank": 4}
POOLING_NAMES = {v: k for k, v in POOLING.items()}
MAX_SEQS = 256  # LLAMA_MAX_SEQ


def model_pooling(model: LlamaModel) -> str | None:
    """The pooling the GGUF declares (``<arch>.pooling_type``), None if it declares none."""
    arch = model.meta("general.architecture")
    value = model.meta(f"{arch}.pooling_type") if arch else None
    try:
        name = POOLING_NAMES.get(int(value)) if value is not None else None
    except ValueError:
        return None
    return None if name in (None, "none") else name


def pooling_for(config: BackendConfig, model: LlamaModel) -> str:
    """The pooling the embedding context will use: the config's, the GGUF's, or mean."""
    return config.pooling or model_pooling(model) or "mean"


def input_limit(config: BackendConfig, model: LlamaModel) -> int:
    """The most tokens one input may have: one decode, within the training context."""
    size = config.embedding_batch
    return min(size, model.n_ctx_train) if model.n_ctx_train else size


class LlamaEmbedder:
    """Pooled vectors (or rank scores) of many token-id inputs per decode."""

    def __init__(self, lib: ModuleType, model: LlamaModel, config: BackendConfig) -> None:
        self._lib = lib
        self.pooling = pooling_for(config, model)
        size = config.embedding_batch
        ctx_config = dataclasses.replace(
            config,
            context_size=size,
            batch_size=size,
            ubatch_size=size,
            # llama.cpp reserves outputs for n_seq_max sequences within n_batch: never more
            # sequences than tokens (an input has at least one).
            max_parallel=min(MAX_SEQS, size),
            kv_unified=True,  # one pool: inputs of any length share the cells
            progress_callback=None,
        )
        self.context = LlamaContext(lib, model, ctx_config, pooling_type=POOLING[self.pooling])
        ptr = self.context.ptr
        self.encoder_only = bool(lib.llama_model_has_encoder(model.ptr)) and not bool(
            lib.llama_model_has_decoder(model.ptr)
        )
        self.n_out = (
            max(1, lib.llama_model_n_cls_out(model.ptr))
            if self.pooling == "rank"
            else model.n_embd_out
        )
        # An input must fit one decode, and positions past the training context mean little.
        self.max_tokens = min(
            input_limit(config, model),
            self.context.n_ctx,
            lib.llama_n_batch(ptr),
            lib.llama_n_ubatch(ptr),
        )
        self.max_seqs = min(MAX_SEQS, self.context.n_seq_max)
        self._batch = TokenBatch(lib, self.max_tokens)
        log.info(
            "embedding context for %s: %s pooling, %d tokens and %d inputs per decode",
            model.path.name,
            self.pooling,
            self.max_tokens,
            self.max_seqs,
        )

    def embed(self, inputs: list[list[int]]) -> list[np.ndarray]:
        """One decode of all ``inputs`` (they fit: see engine/embeddings.py): a pooled
        vector each, or with pooling "none" a (tokens, n_embd_out) matrix each."""
        lib, ctx = self._lib, self.context
        b = self._batch
        b.clear()
        for seq, ids in enumerate(inputs):
            b.add(ids, seq, 0, "all")  # pooled: every token's hidden state is an output
        try:
            if self.encoder_only:
                rc = lib.llama_encode(ctx.ptr, b.as_struct())
            else:
                rc = ctx.decode(b.as_struct())
            if rc != 0:
                raise DecodeError(f"embedding decode failed with code {rc}")
            if self.pooling == "none":
                return self._per_token(inputs)
            out = []
            for seq in range(len(inputs)):
                ptr = lib.llama_get_embeddings_seq(ctx.ptr, seq)
                if not ptr:
                    raise DecodeError(f"llama.cpp returned no pooled embedding for input {seq}")
                out.append(as_float_array(ptr, self.n_out).copy())
            return out
        finally:
            if not self.encoder_only:
                ctx.clear()

    def _per_token(self, inputs: list[list[int]]) -> list[np.ndarray]:
        lib, ctx = self._lib, self.context
        out, i = [], 0
        for ids in inputs:
            rows = []
            for _ in ids:  # batch rows in order: every token is an output
                ptr = lib.llama_get_embeddings_ith(ctx.ptr, i)
                if not ptr:
                    raise DecodeError(f"llama.cpp returned no embedding for batch row {i}")
                rows.append(as_float_array(ptr, self.n_out).copy())
                i += 1
            out.append(np.stack(rows))
        return out

    def close(self) -> None:
        self.context.close()
