"""ModelPool's lifecycle without llama.cpp: a backend whose loads are scripted.

On demand loading, one load for concurrent first requests, LRU eviction under
--max-loaded-models and --memory-budget (idle models first, busy ones drained), idle unload
and keep_alive, and a failing model that does not affect the others.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ferrousforge.errors import (
    ModelLoadError,
    ModelLoadFailedError,
    ModelNotFoundError,
    NotSupportedError,
)
from ferrousforge.inference.backend import BackendConfig
from ferrousforge.models.pool import MemoryCost, ModelPool, ModelStatus
from ferrousforge.models.registry import ModelSpec

GIB = 2**30


@dataclass
class FakeEngine:
    in_flight: int = 0


@dataclass
class FakeHandle:
    name: str


@dataclass
class FakeModel:
    handle: FakeHandle
    engine: FakeEngine = field(default_factory=FakeEngine)


class FakeBackend:
    """Loads take ``delay`` seconds in the worker thread; files named in ``fail`` fail."""

    def __init__(self, delay: float = 0.0, fail: frozenset[str] = frozenset()) -> None:
        self.delay, self.fail = delay, fail
        self.loads: list[str] = []
        self.unloads: list[str] = []
        self.in_load = 0
        self.max_in_load = 0
        self._lock = threading.Lock()

    def load_model_sync(self, path: Path, config, acc) -> FakeModel:
        with self._lock:
            self.in_load += 1
            self.max_in_load = max(self.max_in_load, self.in_load)
        try:
            time.sleep(self.delay)
            if path.name in self.fail:
                raise ModelLoadError(f"{path}: llama.cpp refused it")
            self.loads.append(path.stem)
            return FakeModel(FakeHandle(path.stem))
        finally:
            with self._lock:
                self.in_load -= 1

    async def unload_model(self, handle: FakeHandle) -> None:
        self.unloads.append(handle.name)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def spec(name: str, file: str | None = None) -> ModelSpec:
    return ModelSpec(name, Path(f"/models/{file or name}.gguf"), BackendConfig())


def pool_of(*names: str, backend: FakeBackend | None = None, **kw) -> ModelPool:
    return ModelPool([spec(n) for n in names], backend or FakeBackend(), **kw)  # type: ignore[arg-type]


async def use(pool: ModelPool, name: str, **kw) -> None:
    """One short request: acquire, then release."""
    mid, _ = await pool.acquire(name, **kw)
    pool.release(mid)


def status(pool: ModelPool) -> dict[str, str]:
    return {mid: e.status.value for mid, e in pool.entries.items()}


async def test_a_model_loads_on_its_first_request_and_only_then():
    pool = pool_of("a", "b")
    assert status(pool) == {"a": "unloaded", "b": "unloaded"}
    mid, lm = await pool.acquire("b")
    assert mid == "b" and lm.handle.name == "b"
    pool.release("b")
    await use(pool, "b")
    assert pool.backend.loads == ["b"] and status(pool) == {"a": "unloaded", "b": "loaded"}
    assert pool.stats.loads == 1


async def test_concurrent_first_requests_wait_for_one_load():
    backend = FakeBackend(delay=0.2)
    pool = pool_of("a", backend=backend)
    await asyncio.gather(*(use(pool, "a") for _ in range(6)))
    assert backend.loads == ["a"]


async def test_memory_estimates_are_never_read_on_the_event_loop():
    """Reading a GGUF header takes a while for a large vocabulary: never on the loop, even
    for the loaded-bytes gauge scraped while a model loads."""
    loop_thread = threading.current_thread()
    on_loop = []

    def estimate(s: ModelSpec) -> MemoryCost:
        on_loop.append(threading.current_thread() is loop_thread)
        time.sleep(0.1)  # a header that takes a while to read
        return MemoryCost(GIB, GIB)

    pool = pool_of("a", backend=FakeBackend(delay=0.3), estimator=estimate)
    loading = asyncio.create_task(use(pool, "a"))
    while pool.entries["a"].status is not ModelStatus.LOADING:
        await asyncio.sleep(0.01)
    assert pool.loaded_bytes == 2 * GIB  # /metrics during the load
    await loading
    assert on_loop == [False]


async def test_other_models_keep_serving_while_one_loads():
    backend = FakeBackend(delay=0.3)
    pool = pool_of("a", "b", backend=backend)
    await use(pool, "a")
    loading = asyncio.create_task(use(pool, "b"))
    await asyncio.sleep(0.05)
    assert pool.entries["b"].status is ModelStatus.LOADING
    t0 = time.perf_counter()
    await use(pool, "a")  # does not wait for b's load
    assert time.perf_counter() - t0 < 0.2
    await loading


async def test_an_unknown_model_is_not_found():
    with pytest.raises(ModelNotFoundError):
        await pool_of("a").acquire("nope")


async def test_max_loaded_evicts_the_least_recently_used():
    pool = pool_of("a", "b", "c", max_loaded=2)
    for name in ("a", "b", "c"):  # c evicts a
        await use(pool, name)
    await use(pool, "b")  # b is now more recent than c
    await use(pool, "a")  # evicts c
    assert pool.backend.unloads == ["a", "c"]
    assert status(pool) == {"a": "loaded", "b": "loaded", "c": "unloaded"}
    assert pool.stats.unloads["evicted"] == 2


async def test_an_idle_model_is_evicted_before_a_busy_one_even_if_used_later():
    pool = pool_of("a", "b", "c", max_loaded=2)
    await use(pool, "a")
    await use(pool, "b")
    pool.loaded["a"].engine.in_flight = 1  # a streams on, b (more recent) is idle
    await use(pool, "c")
    assert pool.backend.unloads == ["b"]


async def test_a_busy_victim_is_drained_and_its_new_requests_wait():
    pool = pool_of("a", "b", max_loaded=1)
    await use(pool, "a")
    engine = pool.loaded["a"].engine
    engine.in_flight = 1
    want_b = asyncio.create_task(use(pool, "b"))
    await asyncio.sleep(0.1)
    assert pool.entries["a"].draining and not want_b.done()
    want_a = asyncio.create_task(use(pool, "a"))  # arrives during the drain: waits
    await asyncio.sleep(0.1)
    assert not want_a.done() and pool.backend.unloads == []
    engine.in_flight = 0  # a's last request ends
    await asyncio.wait_for(asyncio.gather(want_b, want_a), 10)
    # a was unloaded first (drained), then both were served, one model at a time.
    assert pool.backend.unloads[0] == "a" and pool.backend.loads[0] == "a"
    assert "b" in pool.backend.loads and pool.backend.loads.count("a") == 2
    assert len(pool.loaded) == 1


def costs(table: dict[str, tuple[float, ...]]):
    """Per model: (weights, other) GiB, and optionally the embedding context's GiB."""

    def estimate(s: ModelSpec) -> MemoryCost:
        weights, other, *embedding = table[s.id]
        return MemoryCost(int(weights * GIB), int(other * GIB), int(sum(embedding) * GIB))

    return estimate


async def test_a_first_embedding_request_counts_the_embedding_context_and_makes_room():
    """A model serving both makes its embedding context on its first embedding request: from
    then on it counts, and the least recently used other model goes to keep the budget."""
    est = costs({"a": (2, 1, 2), "b": (2, 1, 2)})
    pool = pool_of("a", "b", memory_budget=8 * GIB, estimator=est)
    await use(pool, "a")
    await use(pool, "b")
    assert pool.loaded_bytes == 6 * GIB
    await use(pool, "b", embeddings=True)  # 6 + 2 = 8: fits, nothing unloaded
    assert pool.backend.unloads == [] and pool.loaded_bytes == 8 * GIB
    await use(pool, "b", embeddings=True)  # already counted
    await use(pool, "a")
    await use(pool, "a", embeddings=True)  # 8 + 2 > 8: b (least recently used) goes
    assert pool.backend.unloads == ["b"] and pool.loaded_bytes == 5 * GIB
    await use(pool, "b")  # b loads again without its embedding context: 5 + 3 = 8
    assert pool.loaded_bytes == 8 * GIB and pool.entries["b"].embeds is False


async def test_embeddings_that_cannot_fit_the_whole_budget_are_refused_and_the_model_serves():
    est = costs({"a": (2, 1, 6)})
    pool = pool_of("a", memory_budget=8 * GIB, estimator=est)
    with pytest.raises(NotSupportedError, match="embedding context needs about 6.00 GiB"):
        await use(pool, "a", embeddings=True)
    await use(pool, "a")  # generation goes on
    assert status(pool)["a"] == "loaded" and pool.loaded_bytes == 3 * GIB


async def test_a_memory_budget_evicts_until_the_new_model_fits():
    est = costs({"a": (2, 1), "b": (2, 1), "c": (4, 1)})
    pool = pool_of("a", "b", "c", memory_budget=8 * GIB, estimator=est)
    await use(pool, "a")
    await use(pool, "b")
    assert pool.loaded_bytes == 6 * GIB
    await use(pool, "c")  # 5 GiB more: a (LRU) must go, then 3 + 5 fits
    assert pool.backend.unloads == ["a"] and pool.loaded_bytes == 8 * GIB
    assert pool.loaded_bytes <= pool.memory_budget


async def test_aliases_of_one_file_count_its_weights_once():
    est = costs({"small-ctx": (3, 0.5), "big-ctx": (3, 1.5)})
    specs = [spec("small-ctx", "same"), spec("big-ctx", "same")]
    pool = ModelPool(specs, FakeBackend(), memory_budget=5 * GIB, estimator=est)  # type: ignore[arg-type]
    await use(pool, "small-ctx")
    await use(pool, "big-ctx")  # 3 + 0.5 + 1.5 = 5: both stay
    assert pool.backend.unloads == [] and pool.loaded_bytes == 5 * GIB


async def test_hard_links_of_one_file_count_its_weights_once(tmp_path: Path):
    import os

    (tmp_path / "one.gguf").write_bytes(b"")
    os.link(tmp_path / "one.gguf", tmp_path / "two.gguf")
    est = costs({"one": (3, 0.5), "two": (3, 1.5)})
    specs = [ModelSpec(n, tmp_path / f"{n}.gguf", BackendConfig()) for n in ("one", "two")]
    pool = ModelPool(specs, FakeBackend(), memory_budget=5 * GIB, estimator=est)  # type: ignore[arg-type]
    await use(pool, "one")
    await use(pool, "two")  # 3 + 0.5 + 1.5 = 5: both stay
    assert pool.backend.unloads == [] and pool.loaded_bytes == 5 * GIB


async def test_a_model_larger_than_the_budget_fails_alone():
    est = costs({"a": (1, 0), "huge": (9, 1)})
    pool = pool_of("a", "huge", memory_budget=8 * GIB, estimator=est)
    await use(pool, "a")
    with pytest.raises(ModelLoadFailedError, match="memory-budget"):
        await pool.acquire("huge")
    await use(pool, "a")
    assert pool.backend.unloads == [] and status(pool)["huge"] == "failed"


async def test_a_failing_model_answers_with_its_error_and_is_retried_later():
    clock = Clock()
    backend = FakeBackend(fail=frozenset({"bad.gguf"}))
    pool = pool_of("good", "bad", backend=backend, clock=clock)
    with pytest.raises(ModelLoadFailedError, match="refused") as err:
        await pool.acquire("bad")
    assert err.value.retry_after > 0
    with pytest.raises(ModelLoadFailedError):  # the stored error, no second load attempt
        await pool.acquire("bad")
    assert pool.stats.load_failures == 1
    await use(pool, "good")
    clock.now += 60
    with pytest.raises(ModelLoadFailedError):  # tried again after a while
        await pool.acquire("bad")
    assert pool.stats.load_failures == 2
    with pytest.raises(ModelLoadFailedError):  # POST /models/load tries at once
        await pool.load("bad")
    assert pool.stats.load_failures == 3


async def test_idle_models_unload_after_the_idle_timeout():
    clock = Clock()
    pool = pool_of("a", "b", idle_unload=10.0, clock=clock)
    await use(pool, "a")
    await use(pool, "b")
    pool.loaded["b"].engine.in_flight = 1
    clock.now += 5
    await pool.reap_idle()
    assert status(pool) == {"a": "loaded", "b": "loaded"}
    clock.now += 6
    await pool.reap_idle()  # a: idle 11 s; b: busy, so not idle at all
    assert status(pool) == {"a": "unloaded", "b": "loaded"}
    pool.loaded["b"].engine.in_flight = 0
    clock.now += 9
    await pool.reap_idle()  # b's idle time started when its request ended
    assert status(pool)["b"] == "loaded"
    clock.now += 2
    await pool.reap_idle()
    assert status(pool)["b"] == "unloaded" and pool.stats.unloads["idle"] == 2


async def test_keep_alive_overrides_the_server_timeout_per_model():
    clock = Clock()
    pool = pool_of("now", "never", "default", idle_unload=30.0, clock=clock)
    await use(pool, "now", keep_alive=0.0)
    await use(pool, "never", keep_alive=math.inf)
    await use(pool, "default")
    await pool.reap_idle()
    assert status(pool) == {"now": "unloaded", "never": "loaded", "default": "loaded"}
    clock.now += 3600
    await pool.reap_idle()
    assert status(pool) == {"now": "unloaded", "never": "loaded", "default": "unloaded"}
    await use(pool, "never")  # a later request without keep_alive: the server's timeout again
    clock.now += 31
    await pool.reap_idle()
    assert status(pool)["never"] == "unloaded"


async def test_an_explicit_unload_waits_for_running_requests():
    pool = pool_of("a")
    await use(pool, "a")
    engine = pool.loaded["a"].engine
    engine.in_flight = 2
    unloading = asyncio.create_task(pool.unload("a"))
    await asyncio.sleep(0.1)
    assert not unloading.done()
    engine.in_flight = 0
    assert await unloading
    assert not await pool.unload("a")  # not loaded any more
    assert pool.stats.unloads["request"] == 1


async def test_preload_stops_at_the_limits_without_evicting():
    pool = pool_of("a", "b", "c", max_loaded=2)
    assert await pool.preload(["a", "b", "c"]) == []
    assert status(pool) == {"a": "loaded", "b": "loaded", "c": "unloaded"}
    assert pool.backend.unloads == []


async def test_loads_never_run_concurrently_past_the_limit():
    backend = FakeBackend(delay=0.1)
    pool = pool_of("a", "b", "c", "d", max_loaded=2, backend=backend)
    await asyncio.gather(*(use(pool, n) for n in ("a", "b", "c", "d", "a", "c")))
    assert len(pool.loaded) <= 2
    resident = [e for e in pool.entries.values() if e.status is not ModelStatus.UNLOADED]
    assert len(resident) <= 2


def test_host_caches_take_a_quarter_of_the_budget_together(tmp_path: Path):
    from ferrousforge.models.registry import model_specs
    from ferrousforge.settings import load_settings

    for name in ("a", "b", "c"):
        (tmp_path / f"{name}.gguf").write_bytes(b"")
    mib = 2**20

    def configs(**kw) -> list[BackendConfig]:
        base = {"models_dir": str(tmp_path), "pulled_models": False, "memory_budget": "3GiB"}
        return [s.config for s in model_specs(load_settings(base | kw))]

    # three models, no --max-loaded-models: a twelfth of the budget each
    assert {(c.cache_ram_mib, c.memory_budget_bytes) for c in configs()} == {
        (256, 3 * GIB - 256 * mib)
    }
    # two at a time: an eighth each, out of each one's half
    assert {(c.cache_ram_mib, c.memory_budget_bytes) for c in configs(max_loaded_models=2)} == {
        (384, 3 * GIB // 2 - 384 * mib)
    }
    assert {c.cache_ram_mib for c in configs(cache_ram=100)} == {100}  # --cache-ram: less
    assert {c.cache_ram_mib for c in configs(memory_budget=None)} == {8192}  # no budget
