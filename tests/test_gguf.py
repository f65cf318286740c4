"""GGUF header checks: each bad file gives ModelLoadError naming the file and the problem."""

import struct
from pathlib import Path

import pytest

from ferrousforge.errors import ModelLoadError
from ferrousforge.inference.gguf import read_gguf, validate_gguf


def gguf_bytes(
    arch: str | None = "llama", tensors: list[tuple[str, list[int], int, int]] = ()
) -> bytes:
    def s(x: str) -> bytes:
        b = x.encode()
        return struct.pack("<Q", len(b)) + b

    kv = b""
    n_kv = 0
    if arch is not None:
        kv += s("general.architecture") + struct.pack("<I", 8) + s(arch)
        n_kv += 1
    ti = b""
    for name, shape, gtype, offset in tensors:
        ti += (
            s(name) + struct.pack("<I", len(shape)) + b"".join(struct.pack("<Q", d) for d in shape)
        )
        ti += struct.pack("<IQ", gtype, offset)
    head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), n_kv) + kv + ti
    return head + b"\0" * ((32 - len(head) % 32) % 32)


def test_default_model_header(model_path):
    info = validate_gguf(model_path)
    assert info.architecture == "llama"
    assert info.vocab_size == 49152
    assert info.file_type == "Q4_1"
    assert info.chat_template and "im_start" in info.chat_template
    assert 100e6 < info.n_params < 200e6
    assert info.expected_size() == info.file_size


def test_missing_file(tmp_path: Path):
    with pytest.raises(ModelLoadError, match="nope.gguf: model file not found"):
        validate_gguf(tmp_path / "nope.gguf")


def test_directory(tmp_path: Path):
    with pytest.raises(ModelLoadError, match="is a directory"):
        validate_gguf(tmp_path)


def test_not_gguf(tmp_path: Path):
    p = tmp_path / "model.gguf"
    p.write_bytes(b"PK\x03\x04 this is a zip file")
    with pytest.raises(ModelLoadError, match=r"model.gguf: not a GGUF file \(magic bytes"):
        validate_gguf(p)


def test_truncated_header(tmp_path: Path):
    p = tmp_path / "cut.gguf"
    p.write_bytes(gguf_bytes()[:30])
    with pytest.raises(ModelLoadError, match="truncated GGUF header"):
        validate_gguf(p)


def test_truncated_tensor_data(tmp_path: Path, model_path: Path):
    p = tmp_path / "half.gguf"
    data = model_path.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="half.gguf: truncated: the header declares"):
        validate_gguf(p)


def test_tensor_declared_beyond_end_of_file(tmp_path: Path):
    p = tmp_path / "t.gguf"
    p.write_bytes(gguf_bytes(tensors=[("w", [64, 64], 0, 0)]) + b"\0" * 100)
    with pytest.raises(ModelLoadError, match="truncated"):
        validate_gguf(p)


def test_unknown_architecture(tmp_path: Path):
    p = tmp_path / "alien.gguf"
    p.write_bytes(gguf_bytes("alien-net-9000"))
    with pytest.raises(ModelLoadError, match="unknown model architecture 'alien-net-9000'"):
        validate_gguf(p)
    assert read_gguf(p).architecture == "alien-net-9000"


def test_missing_architecture(tmp_path: Path):
    p = tmp_path / "noarch.gguf"
    p.write_bytes(gguf_bytes(None))
    with pytest.raises(ModelLoadError, match="no general.architecture"):
        validate_gguf(p)
