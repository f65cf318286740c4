"""Which C++ runtime a library carries: a second one in the process crashes llama.cpp."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from ferrousforge.inference.backends.llama_cpp.cxx_runtime import (
    libraries_with_own_runtime,
    needed,
    own_runtime,
)

SOURCE = """
#include <stdexcept>
#include <string>
extern "C" int f(int n) {
    try { if (n) throw std::runtime_error(std::string(n, 'a')); }
    catch (const std::exception &) { return 1; }
    return 0;
}
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    d = tmp_path_factory.mktemp("cxx")
    (d / "f.cpp").write_text(SOURCE)
    base = [cxx, "-shared", "-fPIC", str(d / "f.cpp"), "-o"]
    subprocess.run([*base, str(d / "libggml-shared.so")], check=True)
    subprocess.run(
        [*base, str(d / "libggml-own.so"), "-static-libstdc++", "-static-libgcc"], check=True
    )
    return d


def test_a_library_linked_with_its_own_runtime_is_found(built):
    assert any(n.startswith("libstdc++") for n in needed(built / "libggml-shared.so"))
    assert not own_runtime(built / "libggml-shared.so")
    assert own_runtime(built / "libggml-own.so")
    # beside a libllama, every ggml library is checked
    (built / "libllama.so").write_bytes((built / "libggml-shared.so").read_bytes())
    assert libraries_with_own_runtime(built / "libllama.so") == [built / "libggml-own.so"]


def test_not_elf_is_not_reported(tmp_path):
    (tmp_path / "libllama.dylib").write_bytes(b"\xcf\xfa\xed\xfe" + b"\0" * 64)
    assert needed(tmp_path / "libllama.dylib") is None
    assert not own_runtime(tmp_path / "libllama.dylib")


@pytest.mark.integration
def test_the_library_in_use_shares_the_runtime():
    from ferrousforge.inference.backends.llama_cpp.library import library_info, load_library

    load_library(None)
    assert libraries_with_own_runtime(library_info().path) == []
