"""Read and check a GGUF file's header without touching llama.cpp.

Catches the common bad files (missing, not a regular file, not GGUF, corrupt or
truncated header, no tensors, unknown architecture) with a clear ``ModelLoadError``
before any C call. The header is untrusted input: every count and length is checked
against the file's size before it is used, so a bad header never allocates or loops
beyond what the file holds.
"""

from __future__ import annotations

import os
import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from ferrousforge.errors import ModelLoadError
from ferrousforge.inference.known_architectures import KNOWN_ARCHITECTURES

GGUF_MAGIC = b"GGUF"
_DEFAULT_ALIGNMENT = 32
_MAX_STRING = 1 << 26  # a header string longer than 64 MiB means a corrupt file
_MAX_KEY = 65535  # the GGUF spec's limit on a key's length
_MAX_TENSOR_NAME = 63  # llama.cpp's GGML_MAX_NAME is 64 including the NUL
_MAX_DIMS = 4  # GGML_MAX_DIMS
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
_TYPE_NAMES = {
    0: "uint8",
    1: "int8",
    2: "uint16",
    3: "int16",
    4: "uint32",
    5: "int32",
    6: "float32",
    7: "bool",
    8: "string",
    9: "array",
    10: "uint64",
    11: "int64",
    12: "float64",
}
# Keys whose type the reader relies on, as llama.cpp requires them.
_KEY_TYPES = {"general.alignment": 4, "general.architecture": _STRING}  # 4: uint32
_FILE_KINDS = {
    stat.S_IFDIR: "a directory",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


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
        if not isinstance(ft, int) or isinstance(ft, bool):
            return None  # absent, or of a type llama.cpp would not read either
        return FILE_TYPE_NAMES.get(ft, str(ft))

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
    """Little-endian GGUF fields; every length is checked against the bytes the file has left,
    so a corrupt count or size fails at once instead of allocating or looping on it."""

    def __init__(self, f: BinaryIO, path: Path, size: int) -> None:
        self.f = f
        self.path = path
        self.size = size

    def corrupt(self, what: str) -> ModelLoadError:
        return ModelLoadError(f"{self.path}: corrupt GGUF header ({what})")

    def _check_left(self, n: int) -> None:
        if n > self.size - self.f.tell():
            raise ModelLoadError(f"{self.path}: truncated GGUF header (file ends inside it)")

    def read(self, n: int) -> bytes:
        self._check_left(n)
        data = self.f.read(n)
        if len(data) != n:
            raise ModelLoadError(f"{self.path}: truncated GGUF header (file ends inside it)")
        return data

    def skip(self, n: int) -> None:
        self._check_left(n)
        self.f.seek(n, 1)

    def unpack(self, fmt: str) -> Any:
        size = struct.calcsize("<" + fmt)
        return struct.unpack("<" + fmt, self.read(size))[0]

    def string(self, what: str, limit: int = _MAX_STRING) -> str:
        n = self.unpack("Q")
        if n > limit:
            raise self.corrupt(f"{what} of {n} bytes, the limit is {limit}")
        return self.read(n).decode("utf-8", errors="replace")

    def value(self, vtype: int, key: str, lengths: dict[str, int]) -> Any:
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string(f"value of {key}")
        if vtype != _ARRAY:
            raise self.corrupt(f"key {key} has unknown value type {vtype}")
        itype, n = self.unpack("I"), self.unpack("Q")
        if itype not in _SCALARS and itype != _STRING:
            raise self.corrupt(f"key {key} is an array of {_type_name(itype)}")
        item_size = struct.calcsize("<" + _SCALARS[itype]) if itype in _SCALARS else 8
        self._check_left(n * item_size)  # a string is at least its 8-byte length
        lengths[key] = n
        if n <= _MAX_ARRAY_KEEP:
            return [self.value(itype, key, lengths) for _ in range(n)]
        if itype in _SCALARS:
            self.skip(item_size * n)
        else:  # a vocabulary: count it, do not keep it
            for _ in range(n):
                m = self.unpack("Q")
                if m > _MAX_STRING:
                    raise self.corrupt(f"string in {key} of {m} bytes, the limit is {_MAX_STRING}")
                self.skip(m)
        return None


def _type_name(vtype: int) -> str:
    return _TYPE_NAMES.get(vtype, f"unknown type {vtype}")


def _open_regular(path: Path) -> BinaryIO:
    """Open PATH for reading only if it is a regular file (or a link to one).

    open() on a FIFO blocks until a writer appears and a device can be endless, so the
    type is checked before opening, and again on the descriptor (opened with O_NONBLOCK,
    so that a FIFO swapped in between cannot block either).
    """
    try:
        _require_regular(path, path.stat().st_mode)
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise ModelLoadError(f"{path}: model file not found") from None
    except OSError as e:
        raise ModelLoadError(f"{path}: cannot open the model file ({e.strerror})") from None
    try:
        _require_regular(path, os.fstat(fd).st_mode)
        if hasattr(os, "set_blocking"):  # POSIX; Windows has no O_NONBLOCK to undo
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")


def _require_regular(path: Path, mode: int) -> None:
    if not stat.S_ISREG(mode):
        kind = _FILE_KINDS.get(stat.S_IFMT(mode), "a special file")
        raise ModelLoadError(f"{path}: is {kind}, not a GGUF model file")


def read_gguf(path: Path | str) -> GGUFInfo:
    """Parse the header of a GGUF file. Raises ModelLoadError naming the problem."""
    path = Path(path)
    with _open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size
        magic = f.read(4)
        if magic != GGUF_MAGIC:
            raise ModelLoadError(
                f"{path}: not a GGUF file (magic bytes {magic!r}, expected b'GGUF')"
            )
        r = _Reader(f, path, size)
        version = r.unpack("I")
        if version not in (2, 3):
            raise ModelLoadError(f"{path}: unsupported GGUF version {version} (expected 2 or 3)")
        n_tensors, n_kv = r.unpack("Q"), r.unpack("Q")
        # Each key takes at least 12 bytes and each tensor 24: larger counts cannot fit the file.
        if n_kv * 12 + n_tensors * 24 > size:
            raise r.corrupt(f"{n_tensors} tensors and {n_kv} keys do not fit in {size} bytes")
        metadata: dict[str, Any] = {}
        lengths: dict[str, int] = {}
        for _ in range(n_kv):
            key = r.string("key", _MAX_KEY)
            if not key or key in metadata:
                raise r.corrupt(f"duplicate key {key}" if key else "empty key")
            vtype = r.unpack("I")
            if key in _KEY_TYPES and vtype != _KEY_TYPES[key]:
                raise r.corrupt(
                    f"{key} is {_type_name(vtype)}, expected {_type_name(_KEY_TYPES[key])}"
                )
            metadata[key] = r.value(vtype, key, lengths)
        align = metadata.get("general.alignment", _DEFAULT_ALIGNMENT)
        if align <= 0 or align & (align - 1):
            raise r.corrupt(f"general.alignment {align} is not a power of 2")
        tensors = []
        names: set[str] = set()
        for _ in range(n_tensors):
            name = r.string("tensor name", _MAX_TENSOR_NAME)
            if name in names:
                raise r.corrupt(f"duplicate tensor {name}")
            names.add(name)
            n_dims = r.unpack("I")
            if n_dims > _MAX_DIMS:
                raise r.corrupt(f"tensor {name} has {n_dims} dims, at most {_MAX_DIMS}")
            shape = [r.unpack("Q") for _ in range(n_dims)]
            tensors.append(TensorInfo(name, shape, r.unpack("I"), r.unpack("Q")))
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
    if not info.tensors:
        raise ModelLoadError(
            f"{info.path}: the GGUF file has no tensors (no model weights: a vocabulary-only "
            "or metadata-only file cannot be loaded as a model)"
        )
    expected = info.expected_size()
    if expected is not None and info.file_size < expected:
        raise ModelLoadError(
            f"{info.path}: truncated: the header declares {expected} bytes of tensor data "
            f"but the file has {info.file_size} bytes"
        )
    return info
