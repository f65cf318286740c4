"""--ctx-size 0: each sequence gets the model's training context as far as memory allows, and
where it does not, one pool that any request may fill up to the training context."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from model_traits import loaded_model
from test_gguf import U32, gguf_bytes, kv

from ferrousforge.api.request import InferenceOptions
from ferrousforge.inference.backend import BackendConfig, BackendInput
from ferrousforge.inference.gguf import read_gguf
from ferrousforge.inference.memory import (
    DEFAULT_RAM_FRACTION,
    available_memory_bytes,
    choose_context,
    estimate_for,
)
from ferrousforge.models.memory import estimate_memory

GIB = 2**30


def test_bad_budget_is_refused():
    with pytest.raises(ValueError, match="memory_budget_bytes"):
        BackendConfig(memory_budget_bytes=0)


# ---- the real model ----------------------------------------------------------------------


def train_ctx(path: Path) -> int:
    return read_gguf(path).arch_value("context_length")


async def test_a_long_prompt_fits_with_default_settings(model_path: Path, caplog):
    n_train = train_ctx(model_path)
    if n_train < 3100:
        pytest.skip(f"the model was trained on {n_train} tokens")
    config = {"max_parallel": 1}
    need = estimate_memory(model_path, BackendConfig(context_size=n_train, **config))
    if need.total_bytes > DEFAULT_RAM_FRACTION * (available_memory_bytes() or 0):
        pytest.skip("not enough free RAM for the training context")
    logger = "ferrousforge.inference.backends.llama_cpp.backend"
    with (
        caplog.at_level(logging.INFO, logger=logger),
        loaded_model(model_path, **config) as (
            backend,
            handle,
        ),
    ):
        lm = backend.loaded(handle)
        assert lm.n_ctx_seq == n_train  # was min(training, 2048)
        ids = backend.tokenize(handle, "The sea is blue and the sky is wide. " * 400)[:3000]
        out = await backend.infer(
            handle, BackendInput.Tokens(ids), InferenceOptions(temperature=0, max_tokens=4)
        )
        assert out.usage.prompt_tokens == 3000 and out.usage.completion_tokens >= 1
    said = "\n".join(r.getMessage() for r in caplog.records if r.name == logger)
    assert f"training context {n_train}" in said and "available RAM" in said
    assert f"{n_train} per sequence x 1" in said


async def test_under_a_budget_one_request_may_use_what_the_others_leave(model_path: Path, caplog):
    """A budget that holds 2 x 1024 cells: one stream each would refuse a 1,500-token
    prompt; the pool takes it while another request runs."""
    if train_ctx(model_path) < 2048:
        pytest.skip("the model was trained on less than 2048 tokens")
    pooled = BackendConfig(context_size=2048, max_parallel=2, kv_unified=True)
    budget = estimate_memory(model_path, pooled).total_bytes
    logger = "ferrousforge.inference.backends.llama_cpp.backend"
    config = {"max_parallel": 2, "memory_budget_bytes": budget}
    with (
        caplog.at_level(logging.INFO, logger=logger),
        loaded_model(model_path, **config) as (backend, handle),
    ):
        lm = backend.loaded(handle)
        assert (lm.n_ctx, lm.n_ctx_seq) == (2048, 2048)  # streams: 1024 each
        ids = backend.tokenize(handle, "The sea is blue and the sky is wide. " * 200)
        opts = InferenceOptions(temperature=0, max_tokens=8, ignore_eos=True)
        long, short = await asyncio.gather(
            backend.infer(handle, BackendInput.Tokens(ids[:1500]), opts),
            backend.infer(handle, BackendInput.Tokens(ids[:300]), opts),
        )
        assert (long.usage.prompt_tokens, long.usage.completion_tokens) == (1500, 8)
        assert (short.usage.prompt_tokens, short.usage.completion_tokens) == (300, 8)
    said = "\n".join(r.getMessage() for r in caplog.records if r.name == logger)
    assert "one unified pool of 2048 cells for 2 sequences, up to 2048 per request" in said
    assert "capped by the budget" in said


def test_streams_asked_for_are_capped_to_an_equal_share(model_path: Path, caplog):
    # exactly what 2 slots of 1024 need: with kv_unified=False each gets 1024
    budget = estimate_memory(model_path, BackendConfig(context_size=2048, max_parallel=2))
    logger = "ferrousforge.inference.backends.llama_cpp.backend"
    config = {"max_parallel": 2, "memory_budget_bytes": budget.total_bytes, "kv_unified": False}
    with (
        caplog.at_level(logging.INFO, logger=logger),
        loaded_model(model_path, **config) as (backend, handle),
    ):
        assert backend.loaded(handle).n_ctx_seq == 1024
    said = "\n".join(r.getMessage() for r in caplog.records if r.name == logger)
    assert "1024 per sequence x 2 (capped by the budget" in said


def test_a_pool_larger_than_the_training_context_caps_each_request_at_it(model_path: Path, caplog):
    n_train = train_ctx(model_path)
    config = BackendConfig(context_size=2 * n_train, max_parallel=2, kv_unified=True)
    if estimate_memory(model_path, config).total_bytes > 2 * GIB:
        pytest.skip("two training contexts of this model take more than 2 GiB")
    with (
        caplog.at_level(logging.WARNING, logger="ferrousforge.llama_cpp"),
        loaded_model(model_path, max_parallel=2, kv_unified=True, memory_budget_bytes=2 * GIB) as (
            backend,
            handle,
        ),
    ):
        lm = backend.loaded(handle)
        assert (lm.n_ctx, lm.n_ctx_seq) == (2 * n_train, n_train)  # llama.cpp: 2 x n_train
    # no "possible training context overflow" warning: no request can overflow it
    assert not [r for r in caplog.records if "n_ctx_seq" in r.getMessage()]


def test_an_explicit_context_size_wins(model_path: Path):
    with loaded_model(model_path, context_size=512, max_parallel=1, memory_budget_bytes=GIB) as (
        backend,
        handle,
    ):
        assert backend.loaded(handle).n_ctx_seq == 512


# ---- the sizing function on a synthetic header -------------------------------------------


def header(tmp_path: Path, n_train: int) -> Path:
    keys = [
        kv("llama.block_count", U32, 4),
        kv("llama.embedding_length", U32, 64),
        kv("llama.context_length", U32, n_train),
        kv("llama.vocab_size", U32, 1000),
        kv("llama.attention.head_count", U32, 4),
        kv("llama.attention.head_count_kv", U32, 4),
    ]
    path = tmp_path / "m.gguf"
    path.write_bytes(gguf_bytes("llama", [("t.weight", [64, 64], 1, 0)], keys))
    return path


CELL = 4 * 2 * 64 * 2  # layers x (K + V) x n_embd_kv x f16


def fixed(config: BackendConfig) -> int:
    """Weights plus compute: what the budget holds besides the KV cache."""
    return 10**6 + estimate_memory_compute(config)


def estimate_memory_compute(config: BackendConfig) -> int:
    return config.ubatch_size * 4 * (1000 + 4 * 64) + 1000 * config.max_parallel * 4


@pytest.mark.parametrize("n_seq", [1, 4])
def test_streams_take_the_largest_equal_share_that_fits(tmp_path: Path, n_seq: int):
    info = read_gguf(header(tmp_path, 32768))
    config = BackendConfig(max_parallel=n_seq, memory_budget_bytes=1, kv_unified=False)
    # room for 5000 cells per sequence: 4864 (19 x 256) is the largest padded size that fits
    budget = fixed(config) + 5000 * n_seq * CELL
    config = BackendConfig(max_parallel=n_seq, memory_budget_bytes=budget, kv_unified=False)
    choice = choose_context(info, config, 10**6)
    assert (choice.per_seq, choice.n_ctx, choice.unified) == (4864, 4864 * n_seq, False)
    assert estimate_for(info, config, 10**6, choice.n_ctx).total_bytes <= budget
    assert estimate_for(info, config, 10**6, choice.n_ctx + 256 * n_seq).total_bytes > budget
    assert "capped by the budget" in choice.reason


def test_a_capped_context_is_one_pool_any_request_may_fill(tmp_path: Path):
    info = read_gguf(header(tmp_path, 32768))
    budget = fixed(BackendConfig(max_parallel=4)) + 5000 * 4 * CELL
    config = BackendConfig(max_parallel=4, memory_budget_bytes=budget)
    choice = choose_context(info, config, 10**6)
    # 20000 cells fit: the largest multiple of 256 is 19968, all of it for one request
    assert (choice.n_ctx, choice.per_seq, choice.unified) == (19968, 19968, True)
    pooled = BackendConfig(max_parallel=4, memory_budget_bytes=budget, kv_unified=True)
    assert estimate_for(info, pooled, 10**6, choice.n_ctx).total_bytes <= budget
    assert estimate_for(info, pooled, 10**6, choice.n_ctx + 256).total_bytes > budget
    assert "one unified pool of 19968 cells for 4 sequences, up to 19968" in choice.reason


def test_a_pool_never_lets_a_request_past_the_training_context(tmp_path: Path):
    info = read_gguf(header(tmp_path, 1024))
    roomy = BackendConfig(max_parallel=4, kv_unified=True, memory_budget_bytes=64 * GIB)
    choice = choose_context(info, roomy, 10**6)
    assert (choice.n_ctx, choice.per_seq, choice.seq_limit) == (4096, 1024, 1024)


def test_without_a_budget_a_share_of_the_free_ram(tmp_path: Path):
    info = read_gguf(header(tmp_path, 32768))
    config = BackendConfig(max_parallel=2)
    roomy = choose_context(info, config, 10**6, available=64 * GIB)
    assert (roomy.per_seq, roomy.unified) == (32768, False)
    assert "training context fits" in roomy.reason
    half = fixed(config) + 2 * 8192 * CELL  # half the RAM holds 8192 per sequence
    tight = choose_context(info, config, 10**6, available=2 * half)
    assert (tight.n_ctx, tight.per_seq, tight.unified) == (16384, 16384, True)
    # never below the old default, however little is free
    least = choose_context(info, config, 10**6, available=10**6)
    assert (least.n_ctx, least.per_seq) == (2 * 2048, 2 * 2048)


def test_a_short_trained_model_keeps_its_own_context(tmp_path: Path):
    info = read_gguf(header(tmp_path, 1024))
    config = BackendConfig(max_parallel=2)
    assert choose_context(info, config, 10**6, available=10**6).per_seq == 1024
    assert choose_context(info, config, 10**6, available=64 * GIB).per_seq == 1024


def test_explicit_context_size_is_kept(tmp_path: Path):
    info = read_gguf(header(tmp_path, 32768))
    config = BackendConfig(max_parallel=2, context_size=3000, memory_budget_bytes=1)
    choice = choose_context(info, config, 10**6)
    assert choice.n_ctx == 3000 and "set" in choice.reason
