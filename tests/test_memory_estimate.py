"""The memory estimate (ferrousforge.models.memory) against llama.cpp's own figures."""

from __future__ import annotations

import logging
import re
import struct
from pathlib import Path

import pytest
from model_traits import loaded_model
from test_gguf import ARR, BOOL, U32, gguf_bytes, kv

from ferrousforge.errors import ModelLoadError
from ferrousforge.inference import memory
from ferrousforge.inference.backend import BackendConfig
from ferrousforge.inference.gguf import read_gguf
from ferrousforge.models.default_model import default_model_path
from ferrousforge.models.memory import estimate_memory

MIB = 2**20
F16, Q8_0 = 1, 8


def _mib(lines: list[str], pattern: str) -> float:
    return sum(float(m[1]) for line in lines if (m := re.search(pattern, line)))


def llama_cpp_figures(caplog, **config) -> dict[str, float]:
    """MiB that llama.cpp logs for the model under test loaded with ``config``."""
    with caplog.at_level(logging.DEBUG, logger="ferrousforge.llama_cpp"):
        caplog.clear()
        with loaded_model(default_model_path(), **config):
            lines = [r.getMessage() for r in caplog.records]
    return {
        "weights": _mib(lines, r"CPU_Mapped model buffer size = +([\d.]+) MiB"),
        "kv": _mib(lines, r"llama_kv_cache: size = +([\d.]+) MiB"),
        "compute": _mib(lines, r"compute buffer size = +([\d.]+) MiB")
        + _mib(lines, r"output buffer size = +([\d.]+) MiB"),
    }


@pytest.mark.parametrize(
    "config",
    [
        {"context_size": 16384},  # 8 slots (the default) of 2048
        {"max_parallel": 1, "context_size": 8192},
        {"max_parallel": 4, "context_size": 3000, "batch_size": 256, "ubatch_size": 256},
        {"max_parallel": 2, "context_size": 4096, "kv_unified": True, "cache_type_k": "q8_0"},
        {"max_parallel": 1, "context_size": 4096, "flash_attention": "off"},
    ],
)
def test_estimate_matches_what_llama_cpp_allocates(caplog, config):
    est = estimate_memory(default_model_path(), BackendConfig(num_threads=2, **config))
    real = llama_cpp_figures(caplog, **config)
    assert est.weights_bytes / MIB == pytest.approx(real["weights"], abs=0.01)
    assert est.kv_bytes / MIB == pytest.approx(real["kv"], abs=0.01)
    assert est.compute_bytes / MIB == pytest.approx(real["compute"], rel=0.05)
    assert est.total_bytes == est.weights_bytes + est.kv_bytes + est.compute_bytes


def test_weights_are_the_file_minus_its_header():
    path = default_model_path()
    info = read_gguf(path)
    est = estimate_memory(path, BackendConfig())
    assert est.weights_bytes == pytest.approx(info.file_size - info.data_offset, rel=0.01)
    assert est.weights_bytes > 0.9 * info.file_size


def test_context_cells_are_rounded_as_llama_cpp_does():
    assert memory.llama_cells(16384, 8, False) == (16384, 2048)
    assert memory.llama_cells(3000, 4, False) == (3072, 768)
    assert memory.llama_cells(3000, 8, False) == (4096, 512)  # 3072 / 8 = 384 -> 512
    assert memory.llama_cells(1000, 8, False) == (2048, 256)
    assert memory.llama_cells(1000, 8, True) == (1024, 1024)


# ---- synthetic headers: architectures the bundled models do not cover ----------------


def write_model(path: Path, arch: str, extra: list[bytes], tensors=None) -> Path:
    tensors = tensors or [("token_embd.weight", [64, 100], F16, 0)]
    keys = [
        kv(f"{arch}.block_count", U32, 6),
        kv(f"{arch}.embedding_length", U32, 64),
        kv(f"{arch}.context_length", U32, 4096),
        kv(f"{arch}.vocab_size", U32, 100),
        *extra,
    ]
    head = gguf_bytes(arch, tensors, keys)
    data = sum(-(-s[0] * s[1] // 32) * 32 * 2 for _, s, _, _ in tensors)
    path.write_bytes(head + b"\0" * data)
    return path


def attention(heads: int, kv_heads: int, head_dim: int, arch: str = "llama") -> list[bytes]:
    return [
        kv(f"{arch}.attention.head_count", U32, heads),
        kv(f"{arch}.attention.head_count_kv", U32, kv_heads),
        kv(f"{arch}.attention.key_length", U32, head_dim),
        kv(f"{arch}.attention.value_length", U32, head_dim),
    ]


def test_kv_of_a_plain_model_and_a_quantized_cache(tmp_path: Path):
    path = write_model(tmp_path / "m.gguf", "llama", attention(4, 2, 16))
    config = BackendConfig(context_size=512, max_parallel=2)
    est = estimate_memory(path, config)
    assert est.n_ctx == 512 and est.n_ctx_seq == 256
    assert est.kv_bytes == 512 * 6 * (2 * 16 * 2) * 2  # cells x layers x (K + V) x f16
    assert est.weights_bytes == 64 * 100 * 2
    q8 = estimate_memory(path, BackendConfig(context_size=512, max_parallel=2, cache_type_k="q8_0"))
    assert q8.kv_bytes == 512 * 6 * (34 + 64)  # 32 K elements: one q8_0 block of 34 bytes


def test_sliding_window_layers_hold_their_window(tmp_path: Path, monkeypatch):
    extra = attention(4, 1, 32, "gemma3") + [kv("gemma3.attention.sliding_window", U32, 128)]
    path = write_model(tmp_path / "g.gguf", "gemma3", extra)
    config = BackendConfig(context_size=8192, max_parallel=2, ubatch_size=64)
    per_layer_cell = 2 * 32 * 2
    # llama.cpp's default keeps every layer full size
    assert estimate_memory(path, config).kv_bytes == 8192 * 6 * per_layer_cell
    monkeypatch.setattr(memory, "SWA_FULL", False)
    # gemma3: 1 global layer in 6; the 5 others hold window + ubatch (192 -> 256) per stream
    expected = 8192 * 1 * per_layer_cell + 2 * 256 * 5 * per_layer_cell
    assert estimate_memory(path, config).kv_bytes == expected
    pattern = kv("gemma3.attention.sliding_window_pattern", ARR, (BOOL, [1, 0, 1, 0, 1, 0]))
    path = write_model(tmp_path / "p.gguf", "gemma3", [*extra, pattern])
    expected = 8192 * 3 * per_layer_cell + 2 * 256 * 3 * per_layer_cell
    assert estimate_memory(path, config).kv_bytes == expected


def test_a_recurrent_model_holds_a_state_per_sequence(tmp_path: Path):
    ssm = [
        kv("mamba.ssm.conv_kernel", U32, 4),
        kv("mamba.ssm.inner_size", U32, 128),
        kv("mamba.ssm.state_size", U32, 16),
        kv("mamba.ssm.group_count", U32, 0),
        kv("mamba.attention.head_count", U32, 0),
    ]
    path = write_model(tmp_path / "r.gguf", "mamba", ssm)
    small = estimate_memory(path, BackendConfig(context_size=512, max_parallel=1))
    large = estimate_memory(path, BackendConfig(context_size=65536, max_parallel=3))
    per_seq = 6 * (3 * 128 + 16 * 128) * 4  # layers x (conv + ssm state) x f32
    assert small.kv_bytes == per_seq
    assert large.kv_bytes == 3 * per_seq  # the context's length does not matter


def test_split_files_count_every_part(tmp_path: Path):
    extra = attention(4, 2, 16)
    for i, name in enumerate(["a.weight", "b.weight", "c.weight"], start=1):
        keys = extra if i == 1 else []
        arch = "llama" if i == 1 else None
        head = gguf_bytes(arch, [(name, [64, 100], F16, 0)], keys)
        (tmp_path / f"m-{i:05d}-of-00003.gguf").write_bytes(head + b"\0" * 64 * 100 * 2)
    for part in (1, 3):
        est = estimate_memory(tmp_path / f"m-{part:05d}-of-00003.gguf", BackendConfig())
        assert est.weights_bytes == 3 * 64 * 100 * 2
    (tmp_path / "m-00002-of-00003.gguf").unlink()
    with pytest.raises(ModelLoadError, match="missing parts: m-00002-of-00003.gguf"):
        estimate_memory(tmp_path / "m-00001-of-00003.gguf", BackendConfig())


def test_not_a_model_is_a_clear_error(tmp_path: Path):
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"nope" + struct.pack("<I", 3))
    with pytest.raises(ModelLoadError, match="not a GGUF file"):
        estimate_memory(bad, BackendConfig())


def test_a_model_serving_both_says_what_its_embedding_context_adds():
    """Not in its total (made on the first embedding request), but there for the budget;
    an embedding-only model counts the same context in its total instead."""
    both = estimate_memory(default_model_path(), BackendConfig(context_size=2048))
    only = estimate_memory(
        default_model_path(), BackendConfig(context_size=2048, embedding_only=True)
    )
    assert both.embedding_bytes == 0 and both.embedding_extra_bytes > 0
    assert only.embedding_extra_bytes == 0
    assert only.embedding_bytes == both.embedding_extra_bytes
