"""One model file, one copy of the weights: loads of the same file share one llama_model."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
from model_traits import TOP_N, assert_same_or_near_tie

from ferrousforge.api.request import InferenceOptions
from ferrousforge.errors import ModelLoadError
from ferrousforge.inference.backend import AcceleratorType, BackendConfig, BackendInput
from ferrousforge.inference.backends.llama_cpp import LlamaCppBackend, shared_model
from ferrousforge.inference.backends.llama_cpp.model import LlamaModel
from ferrousforge.models.memory import estimate_memory

GREEDY = InferenceOptions(temperature=0, max_tokens=24, logprobs=TOP_N)
PROMPT = BackendInput.Text("The three primary colors are")


def config(**kw) -> BackendConfig:
    return BackendConfig(num_threads=2, **kw)


def rss_file_bytes() -> int:
    """Resident pages of mapped files (the weights are mmapped): a second mapping of the
    weights would count again here, while KV and compute buffers (anonymous) do not."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssFile:"):
                return int(line.split()[1]) * 1024
    pytest.skip("no RssFile in /proc/self/status")


@pytest.fixture
def frees(monkeypatch) -> list[int]:
    """Counts llama_model_free calls."""
    calls: list[int] = []
    real = LlamaModel._free

    def counting(self, ptr):
        calls.append(1)
        real(self, ptr)

    monkeypatch.setattr(LlamaModel, "_free", counting)
    return calls


async def test_two_loads_of_one_file_share_the_weights(model_path: Path, frees: list[int]):
    backend = LlamaCppBackend()
    single = await backend.load_model(model_path, config(context_size=1024, max_parallel=1))
    ref = await backend.infer(single, PROMPT, GREEDY)
    await backend.unload_model(single)
    assert frees == [1]

    rss0 = rss_file_bytes()
    a = await backend.load_model(model_path, config(context_size=1024, max_parallel=1))
    rss1 = rss_file_bytes()
    b = await backend.load_model(model_path, config(context_size=4096, max_parallel=2))
    rss2 = rss_file_bytes()

    la, lb = backend.loaded(a), backend.loaded(b)
    assert a.id != b.id and la.context is not lb.context
    assert la.model is lb.model  # one llama_model
    assert (la.n_ctx, lb.n_ctx) == (1024, 4096)  # each with its own context settings
    assert backend.shared_models.leases() == {model_path.resolve(): 2}
    weights = estimate_memory(model_path, config()).weights_bytes
    assert rss1 - rss0 > weights / 2, "the first load maps the weights"
    assert rss2 - rss1 < weights / 10, "the second load maps them again"

    out_a, out_b = await asyncio.gather(
        backend.infer(a, PROMPT, GREEDY), backend.infer(b, PROMPT, GREEDY)
    )
    assert_same_or_near_tie(ref, out_a, "first load")
    assert_same_or_near_tie(ref, out_b, "second load")

    await backend.unload_model(a)
    assert frees == [1], "the weights left while a load still uses them"
    again = await backend.infer(b, PROMPT, GREEDY)
    assert_same_or_near_tie(ref, again, "after the other load left")
    await backend.unload_model(b)
    assert frees == [1, 1]  # freed once, with the last load
    assert backend.shared_models.leases() == {}


def hard_link(source: Path, folder: Path, name: str) -> Path:
    """A second name of ``source`` (a copy's first, where the folders' filesystems differ)."""
    import os
    import shutil

    try:
        os.link(source, folder / name)
    except OSError:
        shutil.copyfile(source, folder / "copy.gguf")
        source = folder / "copy.gguf"
        os.link(source, folder / name)
    return folder / name


async def test_a_hard_link_shares_the_weights_of_its_file(
    model_path: Path, tmp_path: Path, frees: list[int]
):
    """A models folder where one file has two names: one copy of the weights."""
    other = hard_link(model_path, tmp_path, "other-name.gguf")
    backend = LlamaCppBackend()
    a = await backend.load_model(model_path, config(context_size=512, max_parallel=1))
    rss1 = rss_file_bytes()
    b = await backend.load_model(other, config(context_size=512, max_parallel=1))
    rss2 = rss_file_bytes()
    assert backend.loaded(a).model is backend.loaded(b).model
    weights = estimate_memory(model_path, config()).weights_bytes
    assert rss2 - rss1 < weights / 10, "the second name maps the weights again"
    await backend.unload_model(a)
    assert frees == []
    await backend.unload_model(b)
    assert frees == [1]


def rss_anon_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    pytest.skip("no RssAnon in /proc/self/status")


async def test_unloading_gives_the_memory_back(model_path: Path):
    """Loads, requests that fill the host prompt cache, unloads: the process does not stay
    larger after each (glibc kept the freed heap, about 30-50 MiB more per cycle here)."""
    import platform
    import random

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("not glibc: freed memory is returned by the allocator's own rules")
    backend = LlamaCppBackend()
    rng = random.Random(0)
    words = ["sea", "sky", "river", "stone", "cloud", "tree", "wind", "light", "fire", "snow"]

    async def cycle() -> None:
        h = await backend.load_model(model_path, config(context_size=4096, max_parallel=4))
        texts = [" ".join(rng.choice(words) for _ in range(250)) for _ in range(4)]
        opts = InferenceOptions(temperature=0, max_tokens=4)
        await asyncio.gather(*(backend.infer(h, BackendInput.Text(t), opts) for t in texts))
        await backend.unload_model(h)

    await cycle()  # the first load initialises what stays for the process's life
    before = rss_anon_bytes()
    for _ in range(3):
        await cycle()
    assert rss_anon_bytes() - before < 16 * 2**20


async def test_concurrent_first_loads_load_once(model_path: Path, frees: list[int]):
    backend = LlamaCppBackend()
    handles = await asyncio.gather(
        *(backend.load_model(model_path, config(context_size=512 * (i + 1))) for i in range(3))
    )
    models = {id(backend.loaded(h).model) for h in handles}
    assert len(models) == 1
    assert backend.shared_models.leases() == {model_path.resolve(): 3}
    for h in handles:
        await backend.unload_model(h)
    assert frees == [1]


async def test_different_weight_settings_load_separately(model_path: Path, frees: list[int]):
    backend = LlamaCppBackend()
    a = await backend.load_model(model_path, config(context_size=512))
    b = await backend.load_model(model_path, config(context_size=512, use_mmap=False))
    assert backend.loaded(a).model is not backend.loaded(b).model
    await backend.unload_model(a)
    await backend.unload_model(b)
    assert frees == [1, 1]


def test_closing_a_loaded_model_twice_releases_its_weights_once(model_path: Path, frees):
    backend = LlamaCppBackend()
    cpu = AcceleratorType.Cpu()
    a = backend.load_model_sync(model_path, config(context_size=512), cpu)
    b = backend.load_model_sync(model_path, config(context_size=512), cpu)
    a.close()
    a.close()
    assert frees == [] and backend.shared_models.leases() == {model_path.resolve(): 1}
    b.close()
    assert frees == [1]


# ---- the share table on its own (a stand-in model: no llama.cpp) ------------------------


class FakeModel:
    created = 0
    gate: threading.Event | None = None
    fail = False

    def __init__(self, lib, path, config, acc) -> None:
        if FakeModel.gate is not None:
            FakeModel.gate.wait(5)
        if FakeModel.fail:
            raise ModelLoadError(f"{path}: broken")
        FakeModel.created += 1
        self.closed = 0

    def close(self) -> None:
        self.closed += 1


def wait_for_leases(table, path: Path, n: int) -> None:
    """Until n loads are inside acquire (so that the later ones wait for the first)."""
    done = threading.Event()
    for _ in range(500):
        if table.leases().get(path.resolve()) == n:
            return
        done.wait(0.01)
    raise AssertionError(f"{n} loads did not arrive: {table.leases()}")


@pytest.fixture
def fake(monkeypatch, tmp_path: Path):
    monkeypatch.setattr(shared_model, "LlamaModel", FakeModel)
    FakeModel.created, FakeModel.gate, FakeModel.fail = 0, None, False
    return tmp_path / "m.gguf"


def test_a_load_in_progress_is_waited_for_not_repeated(fake: Path):
    table = shared_model.SharedModels()
    FakeModel.gate = threading.Event()
    leases = []
    threads = [
        threading.Thread(
            target=lambda: leases.append(table.acquire(None, fake, config(), AcceleratorType.Cpu()))
        )
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    wait_for_leases(table, fake, 4)
    FakeModel.gate.set()
    for t in threads:
        t.join(5)
    assert FakeModel.created == 1 and len({id(lease.model) for lease in leases}) == 1
    for lease in leases[:-1]:
        lease.release()
    assert leases[0].model.closed == 0
    leases[-1].release()
    assert leases[0].model.closed == 1 and table.leases() == {}


def test_a_failed_load_reaches_every_waiter_and_is_not_remembered(fake: Path):
    table = shared_model.SharedModels()
    FakeModel.gate, FakeModel.fail = threading.Event(), True
    errors = []

    def load():
        try:
            table.acquire(None, fake, config(), AcceleratorType.Cpu())
        except ModelLoadError as e:
            errors.append(e)

    threads = [threading.Thread(target=load) for _ in range(3)]
    for t in threads:
        t.start()
    wait_for_leases(table, fake, 3)
    FakeModel.gate.set()
    for t in threads:
        t.join(5)
    assert len(errors) == 3 and table.leases() == {}
    FakeModel.fail = False
    lease = table.acquire(None, fake, config(), AcceleratorType.Cpu())  # tried again
    assert FakeModel.created == 1
    lease.release()
