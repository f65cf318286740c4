"""Which models a server or command serves: aliases, paths, per-model settings.

The loaded state lives in ModelPool (models/pool.py)."""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from ferrousforge.errors import ModelNotFoundError
from ferrousforge.inference.backend import BackendConfig
from ferrousforge.models import hub
from ferrousforge.models.default_model import (
    DEFAULT_MODEL_ALIAS,
    bundled_model_path,
    default_model,
)
from ferrousforge.settings import ModelSettings, ServerSettings

log = logging.getLogger(__name__)


@dataclass(slots=True)
class ModelSpec:
    """A model to load: the id clients use, its file, how to load it."""

    id: str
    path: Path
    config: BackendConfig
    chat_template: str | None = None
    tool_format: str | None = None  # None: the server's setting
    preload: bool = True  # loaded at startup; False: on its first request (--models-dir)
    jinja: bool = True  # False: llama.cpp's built-in templates (--no-jinja)
    aliases: tuple[str, ...] = ()  # other names requests may use (--alias a,b,c)
    tags: tuple[str, ...] = ()  # shown in /v1/models (--tags)


def resolve_model_path(
    name: str | None, models: list[ModelSettings] | None = None, pull: bool = False
) -> tuple[str, Path]:
    """(id, path) for a CLI model argument: a configured alias, the default alias, a path,
    or a Hugging Face name REPO[:QUANT] (from the cache; downloaded first if ``pull``).

    None is the default model, named after the file actually used (see default_model).
    """
    for m in models or []:
        if name is not None and name in (m.alias, m.path):
            mid, path = _config_model_path(m, pull)
            return m.alias or mid, path
    if name is None:
        return default_model()
    if name == DEFAULT_MODEL_ALIAS:  # the alias always names the bundled file
        return DEFAULT_MODEL_ALIAS, bundled_model_path()
    path = Path(name).expanduser()
    if not path.exists() and hub.parse_ref(name) is not None:
        return name, hub.resolve(name, pull_missing=pull).path
    if not path.exists():
        raise ModelNotFoundError(
            f"model '{name}': no such file and no such alias (known aliases: "
            f"{', '.join([DEFAULT_MODEL_ALIAS, *(m.alias for m in models or [] if m.alias)])})"
        )
    return path.stem, path


def backend_config(
    settings: ServerSettings,
    model: ModelSettings | None = None,
    progress: Callable[[float], None] | None = None,
) -> BackendConfig:
    """The BackendConfig for one model: its own settings over the server's."""

    def pick(name: str):
        own = getattr(model, name, None) if model is not None else None
        return own if own is not None else getattr(settings, name)

    kwargs = dict(
        context_size=pick("ctx_size"),
        batch_size=pick("batch_size"),
        ubatch_size=min(settings.ubatch_size or 512, pick("batch_size")),
        max_parallel=pick("parallel"),
        max_waiting=pick("max_waiting"),
        kv_unified=pick("kv_unified"),
        cache_ram_mib=pick("cache_ram"),
        library_path=settings.llama_lib,
        sample_budget_ms=settings.sample_budget_ms,
        draft_max=settings.draft_max,
        draft_min=settings.draft_min,
        draft_max_batch=settings.draft_max_batch,
        pooling="rank" if settings.reranking else pick("pooling"),
        n_gpu_layers=settings.n_gpu_layers,
        tensor_split=pick("tensor_split"),
        rpc_servers=list(pick("rpc")),
        rpc_step_timeout_s=settings.rpc_timeout,
        flash_attention=settings.flash_attn,
        cache_type_k=settings.cache_type_k,
        cache_type_v=settings.cache_type_v,
        embedding_batch=settings.embedding_batch,
        embedding_only=bool(pick("embedding")) or settings.reranking,
        progress_callback=progress,
    )
    budget = settings.memory_budget_bytes
    if budget is not None:
        # --ctx-size 0 sizes each model's context to fit: with --max-loaded-models N,
        # to its 1/N share of the budget, so that N of them can be loaded together
        # (less its host prompt cache: see fit_host_caches).
        kwargs["memory_budget_bytes"] = budget // max(1, settings.max_loaded_models)
    threads = pick("threads")
    if threads is not None:
        kwargs["num_threads"] = threads
    if settings.threads_batch is not None:
        kwargs["num_threads_batch"] = settings.threads_batch
    return BackendConfig(**kwargs)


MIB = 2**20
# Under --memory-budget the host prompt caches of all models take at most 1/HOST_CACHE_SHARE
# of it together.
HOST_CACHE_SHARE = 4


def fit_host_caches(settings: ServerSettings, specs: list[ModelSpec]) -> None:
    """Under --memory-budget, cap each model's host prompt cache (which fills as prompts
    leave their slots) so that all of them together take at most a quarter of the budget:
    a 1/K part each, K being --max-loaded-models or else the number of models. A model's
    part comes out of the share its context is sized from; --cache-ram may ask for less."""
    budget = settings.memory_budget_bytes
    if budget is None:
        return
    k = settings.max_loaded_models or len(specs)
    cap_mib = budget // HOST_CACHE_SHARE // max(1, k) // MIB
    for s in specs:
        mib = min(s.config.cache_ram_mib, cap_mib)
        share = s.config.memory_budget_bytes
        if share is not None:
            share = max(1, share - mib * MIB)
        s.config = replace(s.config, cache_ram_mib=mib, memory_budget_bytes=share)


_SPLIT_PART = re.compile(r"-(\d{5})-of-(\d{5})$")


def dir_specs(
    settings: ServerSettings, folder: Path, progress: Callable[[float], None] | None = None
) -> list[ModelSpec]:
    """A spec for every model file under ``folder``, loaded on demand.

    Named by file stem (a split model by its first part's, without ``-00001-of-0000N``),
    or by its path under ``folder`` where two stems collide. Projector files (``mmproj``)
    are not language models and are left out.
    """
    if not folder.is_dir():
        raise ValueError(f"models_dir: '{folder}' is not a folder")
    found: list[tuple[str, Path]] = []
    for path in sorted(folder.rglob("*.gguf")):
        stem = path.stem
        split = _SPLIT_PART.search(stem)
        if split:
            if int(split.group(1)) != 1:
                continue  # llama.cpp loads the other parts from the first
            stem = stem[: split.start()]
        if stem.lower().startswith("mmproj"):
            continue
        found.append((stem, path))
    stems = Counter(stem for stem, _ in found)
    specs = []
    for stem, path in found:
        name = stem if stems[stem] == 1 else str(path.parent.relative_to(folder) / stem)
        config = backend_config(settings, None, progress)
        specs.append(ModelSpec(name, path, config, preload=False))
    return specs


def model_specs(
    settings: ServerSettings,
    models: list[ModelSettings] | None = None,
    progress: Callable[[float], None] | None = None,
) -> list[ModelSpec]:
    """--model if given, else every configured model, else the bundled default (unless
    --models-dir alone is given); then every model under --models-dir; then, without
    --model, every pulled model."""
    specs = _named_specs(settings, models or [], progress)
    if settings.models_dir is not None:
        taken = {s.id for s in specs}
        folder = Path(settings.models_dir).expanduser()
        found = [s for s in dir_specs(settings, folder, progress) if s.id not in taken]
        if not specs and not found:
            raise ValueError(f"models_dir: no .gguf model files under '{folder}'")
        specs += found
    if settings.pulled_models and settings.model is None:  # --model: that model alone
        specs += pulled_specs(settings, specs, progress)
    fit_host_caches(settings, specs)
    return specs


def pulled_specs(
    settings: ServerSettings,
    taken: list[ModelSpec],
    progress: Callable[[float], None] | None = None,
) -> list[ModelSpec]:
    """A spec (loaded on demand, named REPO:QUANT) for every model ``ferrousforge pull``
    put in the Hugging Face cache that no other spec serves already."""
    ids = {s.id for s in taken}
    paths = {s.path.resolve() for s in taken}
    specs = []
    for m in hub.pulled_models():
        if m.name in ids or m.path.resolve() in paths:
            continue
        config = backend_config(settings, None, progress)
        specs.append(ModelSpec(m.name, m.path, config, preload=False))
    return specs


def _named_specs(
    settings: ServerSettings,
    models: list[ModelSettings],
    progress: Callable[[float], None] | None,
) -> list[ModelSpec]:
    if settings.model is None and not models and settings.models_dir is not None:
        return []
    if settings.model is not None or not models:
        mid, path = resolve_model_path(settings.model, models, pull=settings.pull)
        own = next((m for m in models if m.alias == mid or m.path == str(path)), None)
        # llama-server's --alias a,b,c: every name serves the model, the id is the first in
        # sorted order (as its std::set gives it).
        names = _names(settings.alias)
        return [
            ModelSpec(
                names[0] if names else mid,
                path,
                backend_config(settings, own, progress),
                _server_template(settings) or (own.chat_template if own else None),
                own.tool_format if own else None,
                jinja=settings.jinja,
                aliases=tuple(names),
                tags=tuple(_names(settings.tags)),
            )
        ]
    specs, seen = [], set()
    for m in models:
        name, path = _config_model_path(m, settings.pull)
        mid = m.alias or name
        if mid in seen:
            raise ValueError(f"models: alias '{mid}' is declared twice")
        seen.add(mid)
        specs.append(
            ModelSpec(
                mid,
                path,
                backend_config(settings, m, progress),
                m.chat_template,
                m.tool_format,
                jinja=settings.jinja,
            )
        )
    return specs


def _config_model_path(m: ModelSettings, pull: bool) -> tuple[str, Path]:
    """(default id, file) of a config file's model: its path's stem, or for a Hugging Face
    REPO[:QUANT] the name and its file in the cache (downloaded first if ``pull``)."""
    path = Path(m.path)
    if not path.exists() and hub.parse_ref(m.path) is not None:
        return m.path, hub.resolve(m.path, pull_missing=pull).path
    return path.stem, path


def _names(value: str | None) -> list[str]:
    """The sorted, distinct names of a comma-separated list."""
    return sorted({n.strip() for n in (value or "").split(",") if n.strip()})


def _server_template(settings: ServerSettings) -> str | None:
    """--chat-template, or the contents of --chat-template-file; without Jinja, checked at
    startup against llama.cpp's built-in templates, as llama-server checks it."""
    if settings.chat_template_file:
        path = Path(settings.chat_template_file).expanduser()
        try:
            template = path.read_text(encoding="utf-8")
        except OSError as e:
            raise ValueError(f"chat_template_file: cannot read {path}: {e.strerror}") from None
    else:
        template = settings.chat_template
    if template and not settings.jinja:
        from ferrousforge.inference.backends.llama_cpp.builtin_template import is_supported
        from ferrousforge.inference.backends.llama_cpp.library import load_library

        if not is_supported(load_library(settings.llama_lib), template):
            raise ValueError(
                "chat_template: not one of llama.cpp's built-in templates, which --no-jinja "
                "renders with (start with --jinja, or name one: chatml, llama3, mistral-v7...)"
            )
    return template
