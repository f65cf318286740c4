"""Which C++ runtime a libllama build uses: the shared one, or a copy linked into it.

A library linked with its own libstdc++ (a wrapper compiler that passes
``-static-libstdc++``, as on some CUDA hosts) puts a second C++ runtime into a Python
process that already has the system one (numpy loads it): llama.cpp's tokenizer then
crashes in ``std::regex`` while loading the vocabulary. ``ferrousforge doctor`` names
such a library before it crashes. Linux (ELF) only; elsewhere nothing is reported.
"""

from __future__ import annotations

import struct
from pathlib import Path

_SHT_DYNAMIC = 6
_DT_NEEDED = 1
_CXX_MARKER = b"__gxx_personality_v0"  # in every object with C++ exception handling
_SHARED_RUNTIMES = ("libstdc++", "libc++")


def needed(path: Path) -> list[str] | None:
    """The shared libraries an ELF64 little-endian object needs (DT_NEEDED); None if it is
    not one."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return None
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQII", data, shoff + i * shentsize) for i in range(shnum)]
    out: list[str] = []
    for _name, kind, _flags, _addr, offset, size, link, _info in sections:
        if kind != _SHT_DYNAMIC:
            continue
        strtab = sections[link][4]
        for at in range(offset, offset + size, 16):
            tag, value = struct.unpack_from("<qQ", data, at)
            if tag == 0:
                break
            if tag == _DT_NEEDED:
                end = data.index(b"\0", strtab + value)
                out.append(data[strtab + value : end].decode(errors="replace"))
    return out


def own_runtime(path: Path) -> bool:
    """Whether a C++ library carries its own C++ runtime (needs no shared one)."""
    deps = needed(path)
    if deps is None or _CXX_MARKER not in path.read_bytes():
        return False
    return not any(d.startswith(_SHARED_RUNTIMES) for d in deps)


def libraries_with_own_runtime(lib: Path) -> list[Path]:
    """``lib`` and the llama/ggml libraries beside it that link their own C++ runtime."""
    candidates = {lib, *lib.parent.glob("libggml*.so*"), *lib.parent.glob("libllama*.so*")}
    return sorted(p for p in candidates if p.is_file() and own_runtime(p))
