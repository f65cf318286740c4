"""llama-server's GET /props: the server's defaults and the model it serves.

Answered without loading the model, so that it does not wake a model unloaded for being idle
(llama-server's --sleep-idle-seconds, our --idle-unload): ``is_sleeping`` says so.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

from fastapi import APIRouter, Request

from ferrousforge import __version__
from ferrousforge.api.openapi import ERROR_RESPONSES
from ferrousforge.api.request import InferenceOptions
from ferrousforge.api.routes import state
from ferrousforge.api.slots import params_json
from ferrousforge.errors import ModelLoadError
from ferrousforge.inference.gguf import read_gguf
from ferrousforge.models.pool import ModelEntry, ModelStatus

router = APIRouter()


def build_info() -> str:
    try:
        bindings = metadata.version("llama_cpp_python")
    except metadata.PackageNotFoundError:
        bindings = "unknown"
    return f"ferrousforge-{__version__} (llama-cpp-python {bindings})"


def slot_context(entry: ModelEntry) -> int:
    """Tokens one slot holds: the loaded context's, else what the config will give it."""
    if entry.lm is not None:
        return entry.lm.n_ctx_seq
    config = entry.spec.config
    if config.kv_unified:
        return config.context_size
    return config.context_size // max(1, config.max_parallel)


def _model_facts(entry: ModelEntry) -> dict[str, Any]:
    """Chat template and special tokens: the loaded model's, else the GGUF header's."""
    if entry.lm is not None:
        vocab, model = entry.lm.vocab, entry.lm.model
        return {
            "chat_template": entry.spec.chat_template or model.chat_template or "",
            "bos_token": vocab.token_text(vocab.bos) if vocab.bos >= 0 else "",
            "eos_token": vocab.token_text(vocab.eos) if vocab.eos >= 0 else "",
            "total_slots": entry.lm.engine.runner.n_slots,
        }
    try:
        meta = read_gguf(entry.spec.path).metadata
    except ModelLoadError:  # its load fails too, with the reason
        meta = {}
    tokens = meta.get("tokenizer.ggml.tokens") or []

    def token(key: str) -> str:
        i = meta.get(key)
        return tokens[i] if isinstance(i, int) and 0 <= i < len(tokens) else ""

    return {
        "chat_template": entry.spec.chat_template or meta.get("tokenizer.chat_template") or "",
        "bos_token": token("tokenizer.ggml.bos_token_id"),
        "eos_token": token("tokenizer.ggml.eos_token_id"),
        "total_slots": entry.spec.config.max_parallel,
    }


@router.get("/props", responses=ERROR_RESPONSES)
async def get_props(request: Request, model: str | None = None) -> dict:
    """The default generation settings (sampling defaults, n_ctx per slot), slot count,
    model path and name, chat template, modalities and build."""
    st = state(request)
    entry = st.pool.entry(model)
    settings = st.settings
    facts = _model_facts(entry)
    defaults = InferenceOptions(**settings.sampling_defaults)
    n_predict = settings.max_tokens_limit  # the default max_tokens of a request
    return {
        "default_generation_settings": {
            "id": 0,
            "id_task": -1,
            "n_ctx": slot_context(entry),
            "speculative": False,
            "is_processing": False,
            "params": params_json(defaults, n_predict if n_predict >= 0 else None),
        },
        "total_slots": facts.pop("total_slots"),
        "model_alias": entry.id,
        "model_path": str(entry.spec.path),
        "modalities": {"vision": False, "video": False, "audio": False},
        "endpoint_slots": settings.slots,
        "endpoint_props": True,
        "endpoint_metrics": settings.metrics,
        "ui": False,
        **facts,
        "build_info": build_info(),
        "is_sleeping": entry.status != ModelStatus.LOADED,
    }
