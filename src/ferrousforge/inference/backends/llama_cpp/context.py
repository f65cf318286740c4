"""LlamaContext: the one owner of a llama_context (and its KV memory)."""

from __future__ import annotations

import ctypes
import functools
import os
from types import ModuleType

from ferrousforge.errors import ModelLoadError, NativeCallError
from ferrousforge.inference.backend import AcceleratorType, BackendConfig
from ferrousforge.inference.backends.llama_cpp.handle import NativeHandle
from ferrousforge.inference.backends.llama_cpp.library import (
    expected_warnings,
    log_lines_since,
    log_mark,
    native_guard,
)
from ferrousforge.inference.backends.llama_cpp.model import LlamaModel
from ferrousforge.inference.gguf import read_gguf
from ferrousforge.inference.memory import (
    KV_TYPE_IDS,
    SWA_FULL,
    ContextChoice,
    choose_context,
    explicit_context,
    weights_bytes,
)

_FLASH = {"auto": -1, "off": 0, "on": 1}


def context_for(config: BackendConfig, model: LlamaModel) -> ContextChoice:
    """The cells and layout ``choose_context`` picks for the model under ``config``."""
    explicit = explicit_context(config)
    if explicit is not None:  # no need to read the header (slow for a large vocabulary)
        return explicit
    info = read_gguf(model.path)
    return choose_context(info, config, weights_bytes(model.path, info))


class LlamaContext(NativeHandle):
    """A llama_context with ``n_seq_max`` sequences, each with its own KV stream by default.

    Not thread safe (llama.cpp contexts are not): the engine thread is its only user.
    """

    _what = "context"

    def __init__(
        self,
        lib: ModuleType,
        model: LlamaModel,
        config: BackendConfig,
        choice: ContextChoice | None = None,
        *,
        pooling_type: int | None = None,
    ) -> None:
        """``choice``: the cells and layout to create (default: ``context_for``).
        ``pooling_type`` (llama_pooling_type) makes an embeddings context: pooled vectors
        per sequence instead of logits (see embedder.py)."""
        super().__init__(lib)
        self.model = model
        choice = choice or context_for(config, model)
        p = lib.llama_context_default_params()
        if pooling_type is not None:
            p.embeddings = True
            p.pooling_type = pooling_type
        p.n_ctx = choice.n_ctx
        p.n_batch = config.batch_size
        p.n_ubatch = min(config.ubatch_size, config.batch_size)
        p.n_seq_max = config.max_parallel
        p.n_threads = config.num_threads
        p.n_threads_batch = config.num_threads_batch or config.num_threads
        p.flash_attn_type = _FLASH[config.flash_attention]
        p.type_k = KV_TYPE_IDS[config.cache_type_k]
        p.type_v = KV_TYPE_IDS[config.cache_type_v]
        p.swa_full = SWA_FULL  # what the memory estimate assumes
        # Separate streams by default: each sequence attends over its own cells only,
        # so batched decode stays fast and a sequence's output does not depend on
        # what else is in the batch (a unified pool places cells by arrival order).
        p.kv_unified = choice.unified
        self.kv_unified = choice.unified
        p.offload_kqv = not isinstance(model.accelerator, AcceleratorType.Cpu)
        p.no_perf = True
        mark = log_mark()
        self._guard = native_guard()
        # A pool larger than the training context: llama.cpp warns that one sequence could
        # overflow it, but seq_limit keeps every request within it.
        capped = ("llama_context: n_ctx_seq",) if choice.seq_limit is not None else ()
        try:
            with expected_warnings(*capped):
                ptr = self._guard.init_from_model(model.ptr, p)
        except NativeCallError as e:
            raise ModelLoadError(f"{model.path}: {e}") from e
        if not ptr:
            lines = log_lines_since(mark)
            detail = ("\nllama.cpp said:\n  " + "\n  ".join(lines)) if lines else ""
            raise ModelLoadError(
                f"{model.path}: llama.cpp could not create a context "
                f"(n_ctx={p.n_ctx}, n_seq_max={p.n_seq_max}){detail}"
            )
        self._ptr = ptr
        self.n_ctx = lib.llama_n_ctx(ptr)
        self.n_ctx_seq = lib.llama_n_ctx_seq(ptr)  # what one sequence can hold
        if choice.seq_limit is not None:
            self.n_ctx_seq = min(self.n_ctx_seq, choice.seq_limit)
        self.n_batch = lib.llama_n_batch(ptr)
        self.n_seq_max = lib.llama_n_seq_max(ptr)
        self.n_vocab = model.vocab.n_tokens
        self._mem = lib.llama_get_memory(ptr)

    def decode(self, batch) -> int:
        """llama_decode's return code; NativeCallError if llama.cpp threw."""
        return self._guard.decode(self.ptr, batch)

    def logits_row(self, i: int):
        """Pointer to the logits of output row ``i`` of the last decode (n_vocab floats)."""
        return self._lib.llama_get_logits_ith(self.ptr, i)

    def seq_rm(self, seq: int, p0: int = -1, p1: int = -1) -> bool:
        return bool(self._lib.llama_memory_seq_rm(self._mem, seq, p0, p1))

    def seq_cp(self, src: int, dst: int, p0: int = -1, p1: int = -1) -> None:
        self._lib.llama_memory_seq_cp(self._mem, src, dst, p0, p1)

    def seq_pos_max(self, seq: int) -> int:
        return self._lib.llama_memory_seq_pos_max(self._mem, seq)

    def seq_state(self, seq: int, max_bytes: int) -> bytearray | None:
        """Sequence ``seq``'s KV state in host memory (llama_state_seq_get_data), or None
        when it is empty, larger than ``max_bytes`` or could not be read."""
        lib = self._lib
        n = lib.llama_state_seq_get_size(self.ptr, seq)
        if n == 0 or n > max_bytes:
            return None
        buf = bytearray(n)
        got = lib.llama_state_seq_get_data(self.ptr, (ctypes.c_uint8 * n).from_buffer(buf), n, seq)
        if got == 0:
            return None
        return buf if got == n else buf[:got]

    def set_seq_state(self, seq: int, state: bytes | bytearray) -> bool:
        """Load a state from ``seq_state`` (of any sequence) into ``seq``, replacing its KV.
        False when llama.cpp refused it (no room for its cells, a mismatched context)."""
        buf = state if isinstance(state, bytearray) else bytearray(state)
        src = (ctypes.c_uint8 * len(buf)).from_buffer(buf)
        return self._lib.llama_state_seq_set_data(self.ptr, src, len(buf), seq) > 0

    def save_seq_file(self, seq: int, path: str, tokens: list[int]) -> int:
        """Write ``seq``'s KV and ``tokens`` to ``path`` (llama_state_seq_save_file); the
        bytes written, 0 on failure (llama.cpp logs why)."""
        arr = (ctypes.c_int32 * max(1, len(tokens)))(*tokens)
        return self._lib.llama_state_seq_save_file(
            self.ptr, os.fsencode(path), seq, arr, len(tokens)
        )

    def load_seq_file(self, seq: int, path: str, max_tokens: int) -> tuple[int, list[int]]:
        """Load a file from ``save_seq_file`` into ``seq`` (replacing its KV): (bytes read,
        the tokens it holds); (0, []) when llama.cpp refused it (a bad file, more than
        ``max_tokens`` tokens, no room in the KV cache)."""
        arr = (ctypes.c_int32 * max_tokens)()
        n = ctypes.c_size_t(0)
        got = self._lib.llama_state_seq_load_file(
            self.ptr, os.fsencode(path), seq, arr, max_tokens, ctypes.byref(n)
        )
        return (got, list(arr[: n.value])) if got else (0, [])

    def clear(self) -> None:
        self._lib.llama_memory_clear(self._mem, True)

    def _free(self, ptr) -> None:
        self._mem = None
        self._lib.llama_free(ptr)


def as_float_array(ptr, n: int):
    """View n floats at a C ``float *`` as a numpy array (no copy).

    Called for every sampled row: frombuffer over a cached array type costs about a
    fifth of ``np.ctypeslib.as_array`` (which builds its view through a cast each time).
    """
    import numpy as np

    return np.frombuffer(_float_array(n).from_address(ctypes.addressof(ptr.contents)), np.float32)


@functools.cache
def _float_array(n: int) -> type[ctypes.Array]:
    return ctypes.c_float * n
