"""Read and check a GGUF file's header without touching llama.cpp.

Catches the common bad files (missing, directory, not GGUF, truncated,
unknown architecture) with a clear ``ModelLoadError`` before any C call.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from ferrousforge.errors import ModelLoadError
from ferrousforge.inference.known_architectures import KNOWN_ARCHITECTURES

GGUF_MAGIC = b"GGUF"
_DEFAULT_ALIGNMENT = 32
_MAX_STRING = 1 << 26  # a header string longer than 64 MiB means a corrupt file
_MAX_ARRAY_KEEP = 64  # arrays longer than this are counted, not kept

# ggml_type -> (elements per block, bytes per block), from gguf-py's GGML_QUANT_SIZES.
GGML_TYPE_SIZES: dict[int, tuple[int, int]] = {
    0: (1, 4),
    1: (1, 2),
    2: (32, 18),
    3: (32, 20),
    6: (32, 22),
    7: (32, 24),
    8: (32, 34),
    9: (32, 36),
    10: (256, 84),
    11: (256, 110),
    12: (256, 144),
    13: (256, 176),
    14: (256, 210),
    15: (256, 292),
    16: (256, 66),
    17: (256, 74),
    18: (256, 98),
    19: (256, 50),
    20: (32, 18),
    21: (256, 110),
    22: (256, 82),
    23: (256, 136),
    24: (1, 1),
    25: (1, 2),
    26: (1, 4),
    27: (1, 8),
    28: (1, 8),
    29: (256, 56),
    30: (1, 2),
    34: (256, 54),
    35: (256, 66),
    39: (32, 17),
    40: (64, 36),
    41: (128, 18),
    42: (64, 18),
}
GGML_TYPE_NAMES = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    6: "Q5_0",
    7: "Q5_1",
    8: "Q8_0",
    9: "Q8_1",
    10: "Q2_K",
    11: "Q3_K",
    12: "Q4_K",
    13: "Q5_K",
    14: "Q6_K",
    15: "Q8_K",
    16: "IQ2_XXS",
    17: "IQ2_XS",
    18: "IQ3_XXS",
    19: "IQ1_S",
    20: "IQ4_NL",
    21: "IQ3_S",
    22: "IQ2_S",
    23: "IQ4_XS",
    24: "I8",
    25: "I16",
    26: "I32",
    27: "I64",
    28: "F64",
    29: "IQ1_M",
    30: "BF16",
    34: "TQ1_0",
    35: "TQ2_0",
    39: "MXFP4",
    40: "NVFP4",
    41: "Q1_0",
    42: "Q2_0",
}
# general.file_type (llama_ftype) -> name
FILE_TYPE_NAMES = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    7: "Q8_0",
    8: "Q5_0",
    9: "Q5_1",
    10: "Q2_K",
    11: "Q3_K_S",
    12: "Q3_K_M",
    13: "Q3_K_L",
    14: "Q4_K_S",
    15: "Q4_K_M",
    16: "Q5_K_S",
    17: "Q5_K_M",
    18: "Q6_K",
    19: "IQ2_XXS",
    20: "IQ2_XS",
    21: "Q2_K_S",
    22: "IQ3_XS",
    23: "IQ3_XXS",
    24: "IQ1_S",
    25: "IQ4_NL",
    26: "IQ3_S",
    27: "IQ3_M",
    28: "IQ2_S",
    29: "IQ2_M",
    30: "IQ4_XS",
    31: "IQ1_M",
    32: "BF16",
    36: "TQ1_0",
    37: "TQ2_0",
    38: "MXFP4_MOE",
    39: "NVFP4",
    40: "Q1_0",
    41: "Q2_0",
}

# GGUF metadata value types -> struct format (scalars)
_SCALARS = {
    0: "B",
    1: "b",
    2: "H",
    3: "h",
    4: "I",
    5: "i",
    6: "f",
    7: "?",
    10: "Q",
    11: "q",
    12: "d",
}
_STRING, _ARRAY = 8, 9


@dataclass(slots=True)
class TensorInfo:
    name: str
    shape: list[int]
    ggml_type: int
    offset: int

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    def n_bytes(self) -> int | None:
        block = GGML_TYPE_SIZES.get(self.ggml_type)
        if block is None:
            return None
        per_block, size = block
        return self.n_elements // per_block * size


@dataclass(slots=True)
class GGUFInfo:
    path: Path
    version: int
    metadata: dict[str, Any]
    tensors: list[TensorInfo] = field(default_factory=list)
    data_offset: int = 0
    file_size: int = 0
    array_lengths: dict[str, int] = field(default_factory=dict)

    @property
    def architecture(self) -> str | None:
        arch = self.metadata.get("general.architecture")
        return arch if isinstance(arch, str) else None

    def arch_value(self, key: str) -> Any:
        return self.metadata.get(f"{self.architecture}.{key}")

    @property
    def n_params(self) -> int:
        return sum(t.n_elements for t in self.tensors)

    @property
    def chat_template(self) -> str | None:
        tmpl = self.metadata.get("tokenizer.chat_template")
        return tmpl if isinstance(tmpl, str) else None

    @property
    def vocab_size(self) -> int | None:
        return self.array_lengths.get("tokenizer.ggml.tokens")

    @property
    def file_type(self) -> str | None:
        ft = self.metadata.get("general.file_type")
        return FILE_TYPE_NAMES.get(ft, str(ft)) if ft is not None else None

    def expected_size(self) -> int | None:
        """Bytes the file must have to hold every tensor, or None if a type is unknown."""
        end = self.data_offset
        for t in self.tensors:
            size = t.n_bytes()
            if size is None:
                return None
            end = max(end, self.data_offset + t.offset + size)
        return end


class _Reader:
    def __init__(self, f: BinaryIO, path: Path) -> None:
        self.f = f
        self.path = path

    def read(self, n: int) -> bytes:
        data = self.f.read(n)
        if len(data) != n:
            raise ModelLoadError(f"{self.path}: truncated GGUF header (file ends inside it)")
        return data

    def unpack(self, fmt: str) -> Any:
        size = struct.calcsize("<" + fmt)
        return struct.unpack("<" + fmt, self.read(size))[0]

    def string(self) -> str:
        n = self.unpack("Q")
        if n > _MAX_STRING:
            raise ModelLoadError(f"{self.path}: corrupt GGUF header (string of {n} bytes)")
        return self.read(n).decode("utf-8", errors="replace")

    def value(self, vtype: int, key: str, lengths: dict[str, int]) -> Any:
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            itype, n = self.unpack("I"), self.unpack("Q")
            lengths[key] = n
            if itype in _SCALARS and n > _MAX_ARRAY_KEEP:
                self.f.seek(struct.calcsize("<" + _SCALARS[itype]) * n, 1)  # skip in bulk
                return None
            items = [self.value(itype, key + "[]", lengths) for _ in range(n)]
            return items if n <= _MAX_ARRAY_KEEP else None
        raise ModelLoadError(f"{self.path}: corrupt GGUF header (unknown value type {vtype})")


def read_gguf(path: Path | str) -> GGUFInfo:
    """Parse the header of a GGUF file. Raises ModelLoadError naming the problem."""
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"{path}: model file not found")
    if path.is_dir():
        raise ModelLoadError(f"{path}: is a directory, not a GGUF model file")
    size = path.stat().st_size
    with path.open("rb") as f:
        magic = f.read(4)
        if magic != GGUF_MAGIC:
            raise ModelLoadError(
                f"{path}: not a GGUF file (magic bytes {magic!r}, expected b'GGUF')"
            )
        r = _Reader(f, path)
        version = r.unpack("I")
        if version not in (2, 3):
            raise ModelLoadError(f"{path}: unsupported GGUF version {version} (expected 2 or 3)")
        n_tensors, n_kv = r.unpack("Q"), r.unpack("Q")
        if n_tensors > 1 << 24 or n_kv > 1 << 24:
            raise ModelLoadError(f"{path}: corrupt GGUF header ({n_tensors} tensors, {n_kv} keys)")
        metadata: dict[str, Any] = {}
        lengths: dict[str, int] = {}
        for _ in range(n_kv):
            key = r.string()
            metadata[key] = r.value(r.unpack("I"), key, lengths)
        tensors = []
        for _ in range(n_tensors):
            name = r.string()
            n_dims = r.unpack("I")
            if n_dims > 8:
                raise ModelLoadError(
                    f"{path}: corrupt GGUF header (tensor {name} has {n_dims} dims)"
                )
            shape = [r.unpack("Q") for _ in range(n_dims)]
            tensors.append(TensorInfo(name, shape, r.unpack("I"), r.unpack("Q")))
        align = metadata.get("general.alignment", _DEFAULT_ALIGNMENT) or _DEFAULT_ALIGNMENT
        data_offset = (f.tell() + align - 1) // align * align
    return GGUFInfo(path, version, metadata, tensors, data_offset, size, lengths)


def validate_gguf(path: Path | str, check_architecture: bool = True) -> GGUFInfo:
    """Read the header and check the file can hold its tensors and names a known architecture."""
    info = read_gguf(path)
    arch = info.architecture
    if arch is None:
        raise ModelLoadError(f"{info.path}: GGUF has no general.architecture key")
    if check_architecture and arch not in KNOWN_ARCHITECTURES:
        raise ModelLoadError(
            f"{info.path}: unknown model architecture '{arch}' "
            "(not supported by the bundled llama.cpp; a newer library may support it: "
            "see FERROUSFORGE_LLAMA_LIB)"
        )
    expected = info.expected_size()
    if expected is not None and info.file_size < expected:
        raise ModelLoadError(
            f"{info.path}: truncated: the header declares {expected} bytes of tensor data "
            f"but the file has {info.file_size} bytes"
        )
    return info
