"""Which models a server or command serves: aliases, paths, per-model settings, loaded state."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ferrousforge.errors import ModelNotFoundError
from ferrousforge.inference.backend import AcceleratorType, BackendConfig
from ferrousforge.inference.backends.llama_cpp.backend import LlamaCppBackend, LoadedModel
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


def resolve_model_path(
    name: str | None, models: list[ModelSettings] | None = None, pull: bool = False
) -> tuple[str, Path]:
    """(id, path) for a CLI model argument: a configured alias, the default alias, a path,
    or a Hugging Face name REPO[:QUANT] (from the cache; downloaded first if ``pull``).

    None is the default model, named after the file actually used (see default_model).
    """
    for m in models or []:
        if name is not None and name in (m.alias, m.path):
            return m.alias or Path(m.path).stem, Path(m.path)
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
        ubatch_size=min(512, pick("batch_size")),
        max_parallel=pick("parallel"),
        max_waiting=pick("max_waiting"),
        kv_unified=pick("kv_unified"),
        cache_ram_mib=pick("cache_ram"),
        library_path=settings.llama_lib,
        sample_budget_ms=settings.sample_budget_ms,
        draft_max=settings.draft_max,
        draft_min=settings.draft_min,
        draft_max_batch=settings.draft_max_batch,
        progress_callback=progress,
    )
    threads = pick("threads")
    if threads is not None:
        kwargs["num_threads"] = threads
    return BackendConfig(**kwargs)


def model_specs(
    settings: ServerSettings,
    models: list[ModelSettings] | None = None,
    progress: Callable[[float], None] | None = None,
) -> list[ModelSpec]:
    """--model alone if given, else every configured model, else the bundled default."""
    models = models or []
    if settings.model is not None or not models:
        mid, path = resolve_model_path(settings.model, models, pull=settings.pull)
        own = next((m for m in models if m.alias == mid or m.path == str(path)), None)
        return [
            ModelSpec(
                mid,
                path,
                backend_config(settings, own, progress),
                own.chat_template if own else None,
                own.tool_format if own else None,
            )
        ]
    specs, seen = [], set()
    for m in models:
        mid = m.alias or Path(m.path).stem
        if mid in seen:
            raise ValueError(f"models: alias '{mid}' is declared twice")
        seen.add(mid)
        specs.append(
            ModelSpec(
                mid,
                Path(m.path),
                backend_config(settings, m, progress),
                m.chat_template,
                m.tool_format,
            )
        )
    return specs


@dataclass(slots=True)
class ModelRegistry:
    """The loaded models of one server, looked up by the id clients send."""

    specs: list[ModelSpec]
    backend: LlamaCppBackend = field(default_factory=LlamaCppBackend)
    loaded: dict[str, LoadedModel] = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        return len(self.loaded) == len(self.specs)

    @property
    def default_id(self) -> str:
        return self.specs[0].id

    def spec(self, model_id: str) -> ModelSpec:
        for s in self.specs:
            if s.id == model_id:
                return s
        raise ModelNotFoundError(f"model '{model_id}' does not exist")

    def get(self, model_id: str | None) -> LoadedModel:
        """The loaded model a request names (None: the first); never another one."""
        spec = self.spec(model_id if model_id is not None else self.default_id)
        try:
            return self.loaded[spec.id]
        except KeyError:
            raise ModelNotFoundError(f"model '{spec.id}' is not loaded yet") from None

    async def load_all(self) -> None:
        for spec in self.specs:
            log.info("loading model '%s' from %s", spec.id, spec.path)
            lm = await asyncio.to_thread(
                self.backend.load_model_sync, spec.path, spec.config, AcceleratorType.Cpu()
            )
            self.loaded[spec.id] = lm

    async def close(self) -> None:
        for mid, lm in list(self.loaded.items()):
            del self.loaded[mid]
            await self.backend.unload_model(lm.handle)
