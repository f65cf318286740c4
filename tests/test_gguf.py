"""GGUF header checks: each bad file gives ModelLoadError naming the file and the problem."""

import os
import random
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from ferrousforge.errors import ModelLoadError
from ferrousforge.inference.gguf import read_gguf, validate_gguf
from ferrousforge.models.default_model import bundled_model_path

# GGUF value types (the spec's numbering)
U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = range(13)
_FMT = {U8: "B", I8: "b", U16: "H", I16: "h", U32: "I", I32: "i", F32: "f", BOOL: "?"}
_FMT |= {U64: "Q", I64: "q", F64: "d"}


def s(x: str) -> bytes:
    b = x.encode()
    return struct.pack("<Q", len(b)) + b


def kv(key: str, vtype: int, value) -> bytes:
    """One metadata entry; an ARR value is (item type, list of items)."""
    out = s(key) + struct.pack("<I", vtype)
    if vtype == STR:
        return out + s(value)
    if vtype == ARR:
        itype, items = value
        out += struct.pack("<IQ", itype, len(items))
        return out + b"".join(
            s(v) if itype == STR else struct.pack("<" + _FMT[itype], v) for v in items
        )
    return out + struct.pack("<" + _FMT[vtype], value)


def gguf_bytes(
    arch: str | None = "llama",
    tensors: list[tuple[str, list[int], int, int]] = (),
    extra: list[bytes] = (),
) -> bytes:
    entries = ([kv("general.architecture", STR, arch)] if arch is not None else []) + list(extra)
    ti = b""
    for name, shape, gtype, offset in tensors:
        ti += (
            s(name) + struct.pack("<I", len(shape)) + b"".join(struct.pack("<Q", d) for d in shape)
        )
        ti += struct.pack("<IQ", gtype, offset)
    head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(entries)) + b"".join(entries) + ti
    return head + b"\0" * ((32 - len(head) % 32) % 32)


def test_default_model_header():
    info = validate_gguf(bundled_model_path())  # the bundled file, whatever TEST_MODEL_PATH says
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


def write(tmp_path: Path, data: bytes, name: str = "m.gguf") -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


WEIGHTS = [("w", [32, 2], 0, 0)]  # one small F32 tensor: 256 bytes of data
WEIGHT_DATA = b"\0" * 256


@pytest.mark.parametrize(
    ("vtype", "value", "type_name"),
    [
        (STR, "32", "string"),
        (F32, 32.0, "float32"),
        (I32, 32, "int32"),
        (U64, 32, "uint64"),
        (BOOL, True, "bool"),
        (ARR, (U32, [32]), "array"),
    ],
)
def test_alignment_of_the_wrong_type(tmp_path: Path, vtype, value, type_name):
    data = gguf_bytes(tensors=WEIGHTS, extra=[kv("general.alignment", vtype, value)])
    p = write(tmp_path, data + WEIGHT_DATA)
    with pytest.raises(ModelLoadError, match=f"general.alignment is {type_name}, expected uint32"):
        read_gguf(p)


@pytest.mark.parametrize("align", [0, 3, 48])
def test_alignment_not_a_power_of_two(tmp_path: Path, align: int):
    data = gguf_bytes(tensors=WEIGHTS, extra=[kv("general.alignment", U32, align)])
    p = write(tmp_path, data + WEIGHT_DATA)
    with pytest.raises(ModelLoadError, match=f"general.alignment {align} is not a power of 2"):
        read_gguf(p)


def test_a_valid_alignment_is_used(tmp_path: Path):
    data = gguf_bytes(tensors=WEIGHTS, extra=[kv("general.alignment", U32, 64)])
    info = validate_gguf(write(tmp_path, data + b"\0" * 64 + WEIGHT_DATA))
    assert info.data_offset % 64 == 0


def test_architecture_that_is_not_a_string(tmp_path: Path):
    data = gguf_bytes(None, WEIGHTS, [kv("general.architecture", U32, 7)])
    with pytest.raises(ModelLoadError, match="general.architecture is uint32, expected string"):
        validate_gguf(write(tmp_path, data + WEIGHT_DATA))


@pytest.mark.parametrize(
    ("key", "vtype", "value"),
    [
        ("general.file_type", STR, "Q4_1"),
        ("general.file_type", ARR, (U32, [3])),
        ("general.file_type", F64, 3.0),
        ("general.file_type", BOOL, True),
        ("general.name", ARR, (STR, ["a", "b"])),
        ("tokenizer.chat_template", U32, 5),
        ("tokenizer.ggml.tokens", STR, "not a list"),
        ("tokenizer.ggml.model", F32, 1.5),
        ("llama.context_length", STR, "2048"),
        ("llama.block_count", ARR, (F64, [1.0] * 100)),
    ],
)
def test_info_reads_display_keys_of_any_type(tmp_path: Path, key, vtype, value, capsys):
    """Keys shown by `info` may hold any type: the command prints them, never a traceback."""
    from ferrousforge.cli.main import main

    p = write(tmp_path, gguf_bytes(tensors=WEIGHTS, extra=[kv(key, vtype, value)]) + WEIGHT_DATA)
    assert main(["info", str(p), "--json"]) == 0
    assert '"architecture": "llama"' in capsys.readouterr().out


def test_no_tensors_is_named_as_such(tmp_path: Path):
    head = gguf_bytes()
    p = write(tmp_path, head.rstrip(b"\0"))  # a vocabulary-only file ends with its header
    with pytest.raises(ModelLoadError, match="has no tensors") as e:
        validate_gguf(p)
    assert "truncated" not in str(e.value)


def _header(n_tensors: int, n_kv: int, body: bytes) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", 3, n_tensors, n_kv) + body


BIG = 2**64 - 1


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (_header(0, BIG, b""), "do not fit"),
        (_header(2**62, 1, b""), "do not fit"),
        (_header(0, 1, struct.pack("<Q", BIG) + b"key"), "key of 18446744073709551615 bytes"),
        (_header(0, 1, s("k") + struct.pack("<IQ", STR, 2**60)), "value of k of"),
        (_header(0, 1, s("k") + struct.pack("<IIQ", ARR, U8, BIG)), "truncated"),
        (_header(0, 1, s("k") + struct.pack("<IIQ", ARR, U64, 2**61)), "truncated"),
        (_header(0, 1, s("k") + struct.pack("<IIQ", ARR, STR, 2**62)), "truncated"),
        (_header(0, 1, s("k") + struct.pack("<IIQ", ARR, ARR, 2**40)), "k is an array of array"),
        (_header(0, 1, s("k") + struct.pack("<IIQ", ARR, 99, 1)), "array of unknown type 99"),
        (_header(0, 1, s("k") + struct.pack("<I", 13)), "unknown value type 13"),
        (_header(0, 2, kv("k", U8, 1) * 2), "duplicate key k"),
        (_header(0, 1, kv("", U8, 1)), "empty key"),
        (_header(1, 0, s("w") + struct.pack("<I", 2**32 - 1)), "has 4294967295 dims"),
        (_header(1, 0, s("w" * 64) + struct.pack("<I", 1)), "tensor name of 64 bytes"),
        (
            _header(2, 0, (s("w") + struct.pack("<IQIQ", 1, 32, 0, 0)) * 2),
            "duplicate tensor w",
        ),
    ],
)
def test_corrupt_counts_and_lengths(tmp_path: Path, data: bytes, match: str):
    p = write(tmp_path, data + b"\0" * 64)
    with pytest.raises(ModelLoadError, match=match):
        read_gguf(p)


def test_a_declared_huge_string_is_not_allocated(tmp_path: Path):
    """A 100-byte file that claims a 60 MiB string fails without reading 60 MiB into memory."""
    import tracemalloc

    p = write(tmp_path, _header(0, 1, s("k") + struct.pack("<IQ", STR, 60 << 20)) + b"x" * 50)
    tracemalloc.start()
    try:
        with pytest.raises(ModelLoadError, match="truncated"):
            read_gguf(p)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_fifo_is_refused_without_blocking(tmp_path: Path):
    """open() on a FIFO waits for a writer forever; the check must come before it."""
    fifo = tmp_path / "model.gguf"
    os.mkfifo(fifo)
    # A subprocess, so that a regression fails this test instead of hanging the whole run.
    r = subprocess.run(
        [sys.executable, "-m", "ferrousforge.cli.main", "info", str(fifo)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 1 and "is a FIFO, not a GGUF model file" in r.stderr


def test_devices_and_sockets_are_refused(tmp_path: Path):
    with pytest.raises(ModelLoadError, match="/dev/null: is a character device"):
        validate_gguf("/dev/null")
    sock_path = tmp_path / "s.gguf"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(sock_path))
        with pytest.raises(ModelLoadError, match="is a socket, not a GGUF model file"):
            validate_gguf(sock_path)
    # a link to a regular file is fine
    target = write(tmp_path, gguf_bytes(tensors=WEIGHTS) + WEIGHT_DATA)
    (tmp_path / "link.gguf").symlink_to(target)
    assert validate_gguf(tmp_path / "link.gguf").architecture == "llama"


READ_KEYS = {  # every key the reader or `info` looks at, with its right type and value
    "general.alignment": (U32, 32),
    "general.architecture": (STR, "llama"),
    "general.name": (STR, "tiny"),
    "general.file_type": (U32, 0),
    "llama.context_length": (U32, 128),
    "llama.embedding_length": (U32, 32),
    "llama.block_count": (U32, 1),
    "tokenizer.chat_template": (STR, "{{ messages }}"),
    "tokenizer.ggml.model": (STR, "gpt2"),
    "tokenizer.ggml.tokens": (ARR, (STR, ["a", "b", "c"] * 30)),
    "tokenizer.ggml.scores": (ARR, (F32, [0.5] * 90)),
}
TENSORS = [("a", [32, 2], 0, 0), ("b", [32], 1, 256)]


def _random_value(rng: random.Random, vtype: int):
    if vtype == STR:
        return rng.choice(["", "32", "llama", "x" * 300])
    if vtype == ARR:
        itype = rng.choice([U8, I32, U32, F32, F64, BOOL, U64, STR])
        return itype, [_random_value(rng, itype) for _ in range(rng.choice([0, 1, 3, 65, 200]))]
    if vtype in (F32, F64):
        return rng.choice([0.0, -1.0, 32.0, float("nan"), float("inf")])
    if vtype == BOOL:
        return rng.choice([True, False])
    bits = struct.calcsize(_FMT[vtype]) * 8
    signed = _FMT[vtype].islower()
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    return rng.choice([lo, hi, 0, 1, 3, 32, 64])


def _check(p: Path, data: bytes) -> None:
    from ferrousforge.cli.info import summary

    p.write_bytes(data)
    try:
        summary(validate_gguf(p))
    except ModelLoadError:
        pass


def test_every_read_key_of_every_type(tmp_path: Path):
    """Each key the reader uses, given each GGUF type: parsed, or refused with ModelLoadError."""
    rng = random.Random(8)
    p = tmp_path / "typed.gguf"
    for key in READ_KEYS:
        for vtype in range(13):
            entries = [kv(k, *tv) for k, tv in READ_KEYS.items() if k != key]
            entries.append(kv(key, vtype, _random_value(rng, vtype)))
            data = gguf_bytes(None, TENSORS, entries)
            _check(p, data + b"\0" * 320)


def test_fuzzed_headers_give_only_model_load_errors(tmp_path: Path):
    """Random corruptions of a valid header: parsed, or refused with ModelLoadError only."""
    good = gguf_bytes(None, TENSORS, [kv(k, *tv) for k, tv in READ_KEYS.items()]) + b"\0" * 320
    assert validate_gguf(write(tmp_path, good)).vocab_size == 90
    rng = random.Random(8)
    p = tmp_path / "fuzz.gguf"
    specials = [0, 1, 2**31, 2**32 - 1, 2**63, BIG, *range(13)]
    for _ in range(600):
        data = bytearray(good)
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(4, len(data) - 8)
            match rng.randrange(4):
                case 0:
                    data[at] = rng.randrange(256)
                case 1:
                    data[at : at + 8] = struct.pack("<Q", rng.choice(specials))
                case 2:
                    data[at : at + 4] = struct.pack("<I", rng.choice(specials) & 0xFFFFFFFF)
                case 3:
                    del data[rng.randrange(4, len(data)) :]
        _check(p, bytes(data))
