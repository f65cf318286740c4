"""ModelPool: the models one server serves, loaded on demand within its limits.

Every model the server knows (``--model``, the config's ``[[models]]``, ``--models-dir``,
pulled models) has an entry. A request for a model that is not loaded loads it while the
other models keep serving; concurrent requests for it wait for that one load. Limits:
``--max-loaded-models`` and ``--memory-budget`` make room by unloading the least recently
used model, an idle one first (a busy one is drained: its running requests finish, its new
ones wait and load it again later); ``--idle-unload`` and a request's ``keep_alive`` unload
models nobody has used for that long.

State changes happen on the event loop only; loads and unloads run in worker threads. A
model is in use while a caller holds a lease (from ``acquire`` until its request is in the
engine) or its engine has requests in flight; only a model not in use is unloaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from ferrousforge.errors import (
    EngineStoppedError,
    ModelLoadError,
    ModelLoadFailedError,
    ModelNotFoundError,
    NotSupportedError,
)
from ferrousforge.inference.backend import AcceleratorType
from ferrousforge.inference.backends.llama_cpp.backend import LlamaCppBackend, LoadedModel
from ferrousforge.inference.backends.llama_cpp.shared_model import file_identity
from ferrousforge.models.registry import ModelSpec

log = logging.getLogger(__name__)

REAP_INTERVAL_S = 0.1  # how often idle models are checked against their keep-alive
POLL_S = 0.05  # engines do not signal the loop when their last request ends: poll
FAILED_RETRY_S = 30.0  # a failed model answers with its error this long before a new try


class ModelStatus(StrEnum):
    UNLOADED = "unloaded"
    LOADING = "loading"
    LOADED = "loaded"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class MemoryCost:
    """What loading a model takes: weights (shared by models of one file) and the rest."""

    weights_bytes: int
    other_bytes: int  # KV cache, compute buffers and host prompt cache, per context
    embedding_bytes: int = 0  # a generation model's embedding context, once it embeds


Estimator = Callable[[ModelSpec], MemoryCost]


def estimate_cost(spec: ModelSpec) -> MemoryCost:
    """The default estimator: GGUF tensor sizes plus the KV and compute the config implies,
    plus the host prompt cache at its capacity (it fills as prompts leave their slots)."""
    from ferrousforge.models.memory import estimate_memory

    est = estimate_memory(spec.path, spec.config)
    host_cache = spec.config.cache_ram_mib * 2**20
    return MemoryCost(
        est.weights_bytes,
        est.total_bytes - est.weights_bytes + host_cache,
        est.embedding_extra_bytes,
    )


@dataclass(slots=True, eq=False)
class ModelEntry:
    spec: ModelSpec
    status: ModelStatus = ModelStatus.UNLOADED
    lm: LoadedModel | None = None
    error: str | None = None
    failed_at: float = -math.inf
    load_task: asyncio.Task | None = None
    leases: int = 0
    last_used: float = 0.0
    keep_alive: float | None = None  # seconds idle before unloading; None: the server's
    draining: bool = False  # being unloaded: new requests wait
    cost: MemoryCost | None = None
    embeds: bool = False  # admitted to embeddings: its embedding context counts

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def busy(self) -> bool:
        return self.leases > 0 or (self.lm is not None and self.lm.engine.in_flight > 0)


@dataclass(slots=True)
class PoolStats:
    loads: int = 0
    load_failures: int = 0
    load_seconds: float = 0.0
    unloads: Counter[str] = field(default_factory=Counter)  # by reason


class ModelPool:
    """The server's models and their lifecycle (see the module docstring)."""

    def __init__(
        self,
        specs: list[ModelSpec],
        backend: LlamaCppBackend | None = None,
        *,
        max_loaded: int = 0,
        memory_budget: int | None = None,
        idle_unload: float | None = None,
        any_name: bool = False,
        estimator: Estimator = estimate_cost,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not specs:
            raise ValueError("models: at least one model is needed")
        self.entries: dict[str, ModelEntry] = {}
        for spec in specs:
            if spec.id in self.entries:
                raise ValueError(f"models: '{spec.id}' is declared twice")
            self.entries[spec.id] = ModelEntry(spec)
        # One model served under any name (llama-server with one model ignores the name).
        self.any_name = any_name and len(specs) == 1
        # Other names of a model (--alias a,b,c), unless a model of that id exists.
        self._aliases = {
            a: s.id for s in specs for a in s.aliases if a != s.id and a not in self.entries
        }
        self.backend = backend or LlamaCppBackend()
        self.max_loaded = max_loaded
        self.memory_budget = memory_budget
        self.idle_unload = idle_unload
        self.stats = PoolStats()
        self._estimate = estimator
        self._clock = clock
        self._room = asyncio.Lock()  # one load at a time decides what to evict
        self._changed = asyncio.Event()
        self._closed = False

    # ---- lookup ----------------------------------------------------------------------

    @property
    def default_id(self) -> str:
        return next(iter(self.entries))

    def entry(self, model_id: str | None) -> ModelEntry:
        mid = model_id if model_id is not None else self.default_id
        mid = self._aliases.get(mid, mid)
        if self.any_name:
            mid = self.default_id
        try:
            return self.entries[mid]
        except KeyError:
            raise ModelNotFoundError(f"model '{mid}' does not exist") from None

    def spec(self, model_id: str | None) -> ModelSpec:
        return self.entry(model_id).spec

    @property
    def loaded(self) -> dict[str, LoadedModel]:
        """The models loaded now, by id."""
        return {e.id: e.lm for e in self.entries.values() if e.lm is not None}

    @property
    def loaded_bytes(self) -> int:
        """Estimated memory of the loaded and loading models (weights of one file once)."""
        return self._bytes(self._resident(None))

    # ---- using a model ---------------------------------------------------------------

    async def acquire(
        self, model_id: str | None, keep_alive: float | None = None, embeddings: bool = False
    ) -> tuple[str, LoadedModel]:
        """The loaded model ``model_id`` names (None: the first), loading it if needed.

        The caller holds a lease until ``release``: the model is not unloaded meanwhile.
        ``keep_alive`` (seconds, ``math.inf``: never) replaces the server's idle timeout
        for this model once it is idle again, as Ollama's field does. ``embeddings``: the
        caller will embed, so the model's embedding context counts against the budget from
        now on (others are unloaded to make room, as for a load).
        """
        e = self.entry(model_id)
        while True:
            if self._closed:
                raise EngineStoppedError("the server is shutting down")
            if e.status is ModelStatus.LOADED and not e.draining and embeddings and not e.embeds:
                await self._admit_embeddings(e)
                continue  # the model may have changed state meanwhile
            if e.status is ModelStatus.LOADED and not e.draining:
                assert e.lm is not None
                e.leases += 1
                e.last_used = self._clock()
                e.keep_alive = keep_alive
                return e.id, e.lm
            if e.draining:
                await self._wait_change()
                continue
            if e.load_task is None:
                wait = e.failed_at + FAILED_RETRY_S - self._clock()
                if e.status is ModelStatus.FAILED and wait > 0:
                    raise ModelLoadFailedError(e.error or f"'{e.id}' failed to load", wait)
                e.load_task = asyncio.create_task(self._load(e), name=f"load {e.id}")
            await asyncio.shield(e.load_task)
            if e.status is ModelStatus.FAILED:
                raise ModelLoadFailedError(e.error or f"'{e.id}' failed to load", FAILED_RETRY_S)

    def release(self, model_id: str) -> None:
        e = self.entries[model_id]
        e.leases -= 1
        e.last_used = self._clock()
        self._notify()

    async def _admit_embeddings(self, e: ModelEntry) -> None:
        """Count ``e``'s embedding context from now on, unloading others to fit it."""
        async with self._room:
            if e.embeds or e.status is not ModelStatus.LOADED or e.draining:
                return
            e.embeds = True
            e.leases += 1  # not unloaded while others make room for it
            try:
                await self._make_room(e)
            except ModelLoadError as exc:
                e.embeds = False
                extra = self._cost(e).embedding_bytes / 2**30
                raise NotSupportedError(
                    f"embeddings on '{e.id}': its embedding context needs about {extra:.2f} "
                    "GiB more, and with its weights and KV that is over the whole "
                    "--memory-budget; lower --embedding-batch or raise the budget"
                ) from exc
            finally:
                e.leases -= 1
                self._notify()

    @contextlib.asynccontextmanager
    async def use(
        self, model_id: str | None, keep_alive: float | None = None, embeddings: bool = False
    ):
        """``async with pool.use(name) as (id, lm)``: acquire, then release on the way out."""
        mid, lm = await self.acquire(model_id, keep_alive, embeddings)
        try:
            yield mid, lm
        finally:
            self.release(mid)

    async def load(self, model_id: str | None) -> str:
        """Load a model now (POST /models/load); a failed one is tried again at once."""
        e = self.entry(model_id)
        if e.status is ModelStatus.FAILED:
            e.failed_at = -math.inf
        async with self.use(e.id):
            return e.id

    async def unload(self, model_id: str | None, reason: str = "request") -> bool:
        """Unload a model once its requests are done; False if it was not loaded."""
        e = self.entry(model_id)
        if e.load_task is not None:
            await asyncio.shield(e.load_task)
        return await self._unload(e, reason)

    async def preload(self, model_ids: list[str]) -> list[str]:
        """Load these models in order while they fit the limits without evicting any;
        returns the errors of those that failed (the others keep serving)."""
        errors = []
        if self.memory_budget is not None:
            await asyncio.to_thread(self._costs, list(self.entries.values()))
        for mid in model_ids:
            e = self.entry(mid)
            if not self._fits(e):
                log.info("not preloading '%s': over --max-loaded-models or --memory-budget", mid)
                continue
            try:
                await self.acquire(mid)
            except ModelLoadError as exc:
                errors.append(str(exc))
            else:
                self.release(mid)
        return errors

    # ---- loading and unloading -------------------------------------------------------

    async def _load(self, e: ModelEntry) -> None:
        try:
            async with self._room:
                # The estimates read GGUF headers: off the loop, before a metrics scrape or
                # the budget asks for them.
                await asyncio.to_thread(self._costs, [e, *self._resident(e)])
                await self._make_room(e)
                e.status, e.error = ModelStatus.LOADING, None
            log.info("loading model '%s' from %s", e.id, e.spec.path)
            t0 = time.perf_counter()
            lm = await asyncio.to_thread(self._load_sync, e)
        except Exception as exc:  # the waiting requests read the error from the entry
            e.status, e.failed_at = ModelStatus.FAILED, self._clock()
            e.error = f"model failed to load: '{e.id}': {exc}"
            self.stats.load_failures += 1
            log.error("%s", e.error)
        else:
            seconds = time.perf_counter() - t0
            e.lm, e.status, e.last_used = lm, ModelStatus.LOADED, self._clock()
            self.stats.loads += 1
            self.stats.load_seconds += seconds
            log.info("model '%s' loaded in %.2f s", e.id, seconds)
        finally:
            e.load_task = None
            self._notify()

    def _load_sync(self, e: ModelEntry) -> LoadedModel:
        return self.backend.load_model_sync(e.spec.path, e.spec.config, AcceleratorType.Cpu())

    def _costs(self, entries: list[ModelEntry]) -> None:
        for e in entries:
            self._cost(e)

    def _cost(self, e: ModelEntry) -> MemoryCost:
        if e.cost is None:
            try:
                e.cost = self._estimate(e.spec)
            except Exception as exc:  # an unreadable file fails at its load, with its reason
                log.warning("cannot estimate the memory of '%s': %s", e.id, exc)
                e.cost = MemoryCost(0, 0)
        return e.cost

    def _bytes(self, entries: list[ModelEntry]) -> int:
        """Their memory, counting the weights of one file once (aliases and links of it
        share them)."""
        weights: dict[object, int] = {}
        other = 0
        for e in entries:
            cost = self._cost(e)
            weights[file_identity(e.spec.path)] = cost.weights_bytes
            other += cost.other_bytes + (cost.embedding_bytes if e.embeds else 0)
        return other + sum(weights.values())

    def _resident(self, but: ModelEntry | None) -> list[ModelEntry]:
        return [
            x
            for x in self.entries.values()
            if x is not but and x.status in (ModelStatus.LOADED, ModelStatus.LOADING)
        ]

    def _fits(self, e: ModelEntry) -> bool:
        others = self._resident(e)
        if self.max_loaded and len(others) >= self.max_loaded:
            return False
        budget = self.memory_budget
        return budget is None or self._bytes([*others, e]) <= budget

    async def _make_room(self, e: ModelEntry) -> None:
        """Unload least recently used models until ``e`` fits the limits (idle ones first)."""
        budget = self.memory_budget
        if budget is not None and self._bytes([e]) > budget:
            raise ModelLoadError(
                f"model '{e.id}' needs about {self._bytes([e]) / 2**30:.2f} GiB, more than the "
                f"whole --memory-budget of {budget / 2**30:.2f} GiB"
            )
        while not self._fits(e):
            victims = [
                x for x in self._resident(e) if x.status is ModelStatus.LOADED and not x.draining
            ]
            if not victims:  # the others are loading or being unloaded: wait for them
                await self._wait_change()
                continue
            victim = min(victims, key=lambda x: (x.busy, x.last_used))
            log.info("unloading '%s' (least recently used) to make room for '%s'", victim.id, e.id)
            await self._unload(victim, "evicted")

    async def _unload(self, e: ModelEntry, reason: str) -> bool:
        """Drain ``e`` (new requests wait), then free it. False if it was not loaded."""
        if e.status is not ModelStatus.LOADED or e.draining:
            while e.draining:  # someone else is unloading it: wait until that is done
                await self._wait_change()
            return False
        e.draining = True
        self._notify()
        try:
            while e.busy:
                await self._wait_change()
            lm, e.lm = e.lm, None
            e.status, e.embeds = ModelStatus.UNLOADED, False  # the embedder goes with it
            assert lm is not None
            await self.backend.unload_model(lm.handle)
            self.stats.unloads[reason] += 1
            log.info("unloaded model '%s' (%s)", e.id, reason)
            return True
        finally:
            e.draining = False
            self._notify()

    async def reap_idle(self) -> None:
        """Unload every model idle for longer than its keep-alive (one pass)."""
        now = self._clock()
        for e in list(self.entries.values()):
            if e.status is not ModelStatus.LOADED or e.draining:
                continue
            if e.busy:
                e.last_used = now  # the idle time starts when its last request ends
                continue
            keep = e.keep_alive if e.keep_alive is not None else self.idle_unload
            if keep is not None and now - e.last_used >= keep:
                await self._unload(e, "idle")

    async def run_reaper(self) -> None:
        """Run ``reap_idle`` every REAP_INTERVAL_S until cancelled."""
        while True:
            await asyncio.sleep(REAP_INTERVAL_S)
            try:
                await self.reap_idle()
            except Exception:  # never let one bad unload stop the reaper
                log.exception("unloading an idle model failed")

    async def close(self) -> None:
        """Unload everything (at shutdown); loads in progress finish first."""
        self._closed = True
        tasks = [e.load_task for e in self.entries.values() if e.load_task is not None]
        await asyncio.gather(*tasks, return_exceptions=True)
        for e in self.entries.values():
            if e.lm is not None:
                lm, e.lm, e.status = e.lm, None, ModelStatus.UNLOADED
                await self.backend.unload_model(lm.handle)

    # ---- waiting for a change ----------------------------------------------------------

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _wait_change(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), POLL_S)
