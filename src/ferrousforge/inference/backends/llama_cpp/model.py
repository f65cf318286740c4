"""LlamaModel: the one owner of a llama_model handle and its vocabulary."""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path
from types import ModuleType

from ferrousforge.errors import AcceleratorUnavailableError, ModelLoadError, NativeCallError
from ferrousforge.inference.backend import Accelerator, AcceleratorType, BackendConfig
from ferrousforge.inference.backends.llama_cpp.handle import NativeHandle
from ferrousforge.inference.backends.llama_cpp.library import (
    log_lines_since,
    log_mark,
    native_guard,
)
from ferrousforge.inference.backends.llama_cpp.vocab import Vocab

log = logging.getLogger(__name__)
_SPLIT_MODES = {"none": 0, "layer": 1, "row": 2}


def normalize_accelerator(acc: Accelerator | type | None) -> Accelerator:
    if acc is None:
        return AcceleratorType.Cpu()
    if isinstance(acc, type):  # AcceleratorType.Metal given without ()
        return acc()
    return acc


def has_gpu(lib: ModuleType) -> bool:
    """A GPU device in the library: llama_supports_gpu_offload is also true for a build
    with the RPC backend alone, where a GPU request would silently run on the CPU."""
    if not lib.llama_supports_gpu_offload():
        return False
    from ferrousforge.inference.backends.llama_cpp.rpc import GPU_DEVICES, ggml_for

    try:
        g = ggml_for(lib)
    except Exception:  # a dynamic library without separate ggml files: trust llama.cpp
        return True
    return any(g.dev_by_type(t) for t in GPU_DEVICES)


class LlamaModel(NativeHandle):
    """Loads a GGUF model; frees it exactly once (``close`` or garbage collection)."""

    _what = "model"

    def __init__(
        self,
        lib: ModuleType,
        path: Path,
        config: BackendConfig,
        accelerator: Accelerator,
        *,
        devices=None,
        vocab_only: bool = False,
    ) -> None:
        """``devices``: a NULL-terminated ggml_backend_dev_t array (RPC workers) that gets
        the layers instead of the library's own devices. ``vocab_only``: the tokenizer and
        metadata alone, no weights."""
        super().__init__(lib)
        self.path = path
        self.accelerator = accelerator
        params = self._model_params(config, accelerator)
        if devices is not None:
            self._devices = devices  # llama.cpp copies the list at load; keep it until then
            params.devices = ctypes.cast(devices, ctypes.c_void_p)
            params.n_gpu_layers = config.n_gpu_layers if config.n_gpu_layers >= 0 else 999
            # Workers hold plain buffers; repacked CPU buffers here would change the sums.
            params.use_extra_bufts = False
        params.vocab_only = vocab_only
        mark = log_mark()
        try:
            ptr = native_guard().model_load(str(path).encode(), params)
        except NativeCallError as e:
            raise ModelLoadError(f"{path}: {e}") from e
        if not ptr:
            lines = log_lines_since(mark)
            detail = ("\nllama.cpp said:\n  " + "\n  ".join(lines)) if lines else ""
            raise ModelLoadError(f"{path}: llama.cpp failed to load the model{detail}")
        self._ptr = ptr
        self.vocab = Vocab(lib, lib.llama_model_get_vocab(ptr))
        self.n_ctx_train = lib.llama_model_n_ctx_train(ptr)
        self.n_embd = lib.llama_model_n_embd(ptr)
        # The width of an embedding (<arch>.embedding_length_out): a model with dense output
        # layers (LFM2-ColBERT: 1024 -> 128) returns vectors narrower than its hidden state.
        self.n_embd_out = lib.llama_model_n_embd_out(ptr)
        self.n_swa = lib.llama_model_n_swa(ptr)  # sliding-window attention size, 0: none
        self.description = self._desc()
        self.chat_template = self.meta("tokenizer.chat_template")
        # Encoders (BERT-family: non-causal attention, T5 encoders: no decoder) only embed.
        arch = self.meta("general.architecture")
        causal = self.meta(f"{arch}.attention.causal") if arch else None
        self.can_generate = bool(lib.llama_model_has_decoder(ptr)) and causal not in (
            "false",
            "0",
        )
        self.is_recurrent = bool(lib.llama_model_is_recurrent(ptr)) or bool(
            lib.llama_model_is_hybrid(ptr)
        )

    def _model_params(self, config: BackendConfig, acc: Accelerator):
        lib = self._lib
        params = lib.llama_model_default_params()
        gpu = not isinstance(acc, AcceleratorType.Cpu)
        if gpu and not has_gpu(lib):
            raise AcceleratorUnavailableError(
                f"{type(acc).__name__} was requested but the loaded libllama has no GPU "
                "support. Rebuild llama-cpp-python with e.g. CMAKE_ARGS='-DGGML_CUDA=on' "
                "(see README), or point FERROUSFORGE_LLAMA_LIB at a GPU build."
            )
        params.n_gpu_layers = (
            (config.n_gpu_layers if config.n_gpu_layers >= 0 else 999) if gpu else 0
        )
        params.main_gpu = getattr(acc, "device_id", config.main_gpu) if gpu else 0
        params.split_mode = _SPLIT_MODES[config.split_mode]
        if config.tensor_split:
            n = lib.llama_max_devices()
            if len(config.tensor_split) > n:
                raise ValueError(f"tensor_split: at most {n} values for this library")
            self._tensor_split = (ctypes.c_float * n)(*config.tensor_split)
            params.tensor_split = self._tensor_split
        if config.use_mmap and config.use_mlock:
            params.load_mode = lib.LLAMA_LOAD_MODE_MMAP_MLOCK
        elif config.use_mlock:
            params.load_mode = lib.LLAMA_LOAD_MODE_MLOCK
        elif config.use_mmap:
            params.load_mode = lib.LLAMA_LOAD_MODE_MMAP
        else:
            params.load_mode = lib.LLAMA_LOAD_MODE_NONE
        if config.progress_callback is not None:
            user_cb = config.progress_callback

            def on_progress(progress: float, _data: ctypes.c_void_p) -> bool:
                try:
                    user_cb(float(progress))
                except Exception:  # a failing callback must not abort a load silently
                    log.exception("progress callback failed")
                return True

            self._progress_cb = lib.llama_progress_callback(on_progress)
            params.progress_callback = self._progress_cb
        return params

    def meta(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(1 << 16)
        n = self._lib.llama_model_meta_val_str(self.ptr, key.encode(), buf, len(buf))
        if n < 0:
            return None
        if n >= len(buf):  # long values (chat templates) need a bigger buffer
            buf = ctypes.create_string_buffer(n + 1)
            self._lib.llama_model_meta_val_str(self.ptr, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", errors="replace")

    def _desc(self) -> str:
        buf = ctypes.create_string_buffer(256)
        self._lib.llama_model_desc(self.ptr, buf, len(buf))
        return buf.value.decode("utf-8", errors="replace")

    def _free(self, ptr) -> None:
        self._lib.llama_model_free(ptr)
