"""The C++ guard: llama.cpp calls that can throw, behind a try/catch (guard.cpp).

A C++ exception that reaches a ctypes frame ends the process, and no Python
``try`` can stop it. So every llama.cpp call that can throw (grammar init,
sampling, decode, tokenize, model and context creation) goes through a small
shim compiled against the llama.h of the library in use, which turns any
exception into an error code; the caller raises ``NativeCallError``.

The shim is built on first use with the system C++ compiler into the cache
(``make install`` does it once) and keyed by its source, the header and the
library, so the bundled library and a user's own build (dynamic mode) each get
their own. Without a compiler or a llama.h next to a dynamic library the guard
is off: a warning is logged, ``ferrousforge doctor`` says so, and calls go to
llama.cpp directly (as unsafe as any other binding).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np

from ferrousforge.errors import NativeCallError

log = logging.getLogger(__name__)

FF_OK, FF_EXCEPTION, FF_NO_TOKEN = 0, -1, 1
INCLUDE_ENV = "FERROUSFORGE_LLAMA_INCLUDE"
_SOURCE = Path(__file__).with_name("guard.cpp")
_ERR_LEN = 1024
_c = ctypes
_P = ctypes.c_void_p


@dataclass(frozen=True, slots=True)
class GuardStatus:
    active: bool
    detail: str  # the shim's path, or why there is none


def _cache_dir() -> Path:
    base = os.environ.get("FERROUSFORGE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "ferrousforge"
    )
    return Path(base) / "guard"


def find_header(lib_dir: Path) -> Path | None:
    """llama.h for the library in ``lib_dir``: FERROUSFORGE_LLAMA_INCLUDE, else an include/
    beside the library or up to four levels above it (a wheel's site-packages, a source tree
    whose build/bin holds the library)."""
    if os.environ.get(INCLUDE_ENV):
        p = Path(os.environ[INCLUDE_ENV]).expanduser()
        p = p / "llama.h" if p.is_dir() else p
        return p if p.is_file() else None
    for d in [lib_dir, *list(lib_dir.resolve().parents)[:4]]:
        if (d / "include" / "llama.h").is_file():
            return d / "include" / "llama.h"
    return None


def _build(lib_file: Path, header: Path) -> Path:
    """Compile the shim (once per source, header and library) and return its path."""
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if not cxx:
        raise RuntimeError("no C++ compiler (set CXX)")
    key = hashlib.sha256(
        _SOURCE.read_bytes() + header.read_bytes() + str(lib_file.resolve()).encode()
    ).hexdigest()[:16]
    out = _cache_dir() / key / "libffguard.so"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    lib_dir = lib_file.resolve().parent
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        tmp_out = Path(tmp) / out.name
        cmd = [cxx, "-O2", "-std=c++17", "-shared", "-fPIC", f"-I{header.parent}", str(_SOURCE),
               f"-L{lib_dir}", "-lllama", f"-Wl,-rpath,{lib_dir}", "-o", str(tmp_out)]  # fmt: skip
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            raise RuntimeError(f"compiling the guard failed: {r.stderr.strip()[-1500:]}")
        os.replace(tmp_out, out)  # atomic: concurrent first uses each see a whole file
    log.info("built the C++ guard: %s", out)
    return out


def _declare(shim: ctypes.CDLL) -> None:
    i32, p_i32, err = _c.c_int32, _c.POINTER(_c.c_int32), (_c.c_char_p, _c.c_size_t)
    protos = {
        "ff_sample": [_P, _P, _P, i32, p_i32, i32, i32, p_i32, *err],
        "ff_grammar_probe": [_P, i32, p_i32, *err],
        "ff_grammar_init": [_P, _c.c_char_p, _c.c_char_p, _c.POINTER(_P), *err],
        "ff_grammar_init_lazy": [_P, _c.c_char_p, _c.c_char_p, _c.c_char_p, _c.POINTER(_P), *err],
        "ff_sampler_accept": [_P, i32, *err],
        "ff_decode": [_P, _P, p_i32, *err],
        "ff_tokenize": [_P, _c.c_char_p, i32, p_i32, i32, _c.c_bool, _c.c_bool, p_i32, *err],
        "ff_model_load": [_c.c_char_p, _P, _c.POINTER(_P), *err],
        "ff_init_from_model": [_P, _P, _c.POINTER(_P), *err],
        "ff_selftest": [*err],
    }
    for name, args in protos.items():
        fn = getattr(shim, name)
        fn.argtypes, fn.restype = args, i32


class Guard:
    """Guarded llama.cpp calls. Raises NativeCallError when llama.cpp threw."""

    def __init__(self, lib: ModuleType, shim: ctypes.CDLL | None, status: GuardStatus) -> None:
        self._lib = lib
        self._shim = shim
        self.status = status
        self._tls = threading.local()

    @property
    def active(self) -> bool:
        return self._shim is not None

    def _err(self) -> ctypes.Array:
        buf = getattr(self._tls, "err", None)
        if buf is None:
            buf = self._tls.err = ctypes.create_string_buffer(_ERR_LEN)
        return buf

    def _check(self, rc: int, err: ctypes.Array, what: str) -> int:
        if rc == FF_EXCEPTION:
            raise NativeCallError(f"{what}: llama.cpp raised: {err.value.decode(errors='replace')}")
        return rc

    def sample(
        self, chain, grammar, ctx, row: int, banned: np.ndarray | None, keep: int = 0
    ) -> int | None:
        """The next token from output row ``row`` (accepted by chain and grammar), or None
        when no token is allowed (see ff_sample). ``banned`` (int32) get no chance; ``keep``:
        how many of the best allowed tokens the chain's pick depends on (0: all of them)."""
        if self._shim is None:
            if banned is not None and len(banned):
                logits = self._lib.llama_get_logits_ith(ctx, row)
                arr = np.ctypeslib.as_array(
                    ctypes.cast(logits, ctypes.POINTER(ctypes.c_float)), shape=(banned.max() + 1,)
                )
                arr[banned] = -np.inf
            return self._lib.llama_sampler_sample(chain, ctx, row)
        err, out = self._err(), ctypes.c_int32()
        n = 0 if banned is None else len(banned)
        ptr = None if not n else banned.ctypes.data_as(ctypes.POINTER(ctypes.c_int32))
        rc = self._shim.ff_sample(
            chain, grammar, ctx, row, ptr, n, keep, ctypes.byref(out), err, _ERR_LEN
        )
        return None if self._check(rc, err, "sampling") == FF_NO_TOKEN else out.value

    def grammar_init(self, vocab, text: bytes, root: bytes = b"root"):
        """A grammar sampler, or NULL when llama.cpp rejects the grammar."""
        if self._shim is None:
            return self._lib.llama_sampler_init_grammar(vocab, text, root)
        err, out = self._err(), _P()
        self._check(
            self._shim.ff_grammar_init(vocab, text, root, ctypes.byref(out), err, _ERR_LEN),
            err,
            "grammar",
        )
        return out.value

    def grammar_init_lazy(self, vocab, text: bytes, pattern: bytes, root: bytes = b"root"):
        """A lazy grammar sampler waking on ``pattern``, or NULL when llama.cpp rejects it."""
        if self._shim is None:
            arr = (ctypes.c_char_p * 1)(pattern)
            return self._lib.llama_sampler_init_grammar_lazy_patterns(
                vocab, text, root, arr, 1, None, 0
            )
        err, out = self._err(), _P()
        self._check(
            self._shim.ff_grammar_init_lazy(
                vocab, text, root, pattern, ctypes.byref(out), err, _ERR_LEN
            ),
            err,
            "grammar",
        )
        return out.value

    def sampler_accept(self, sampler, token: int) -> None:
        """Feed one token to a sampler (NativeCallError if llama.cpp throws)."""
        if self._shim is None:
            self._lib.llama_sampler_accept(sampler, token)
            return
        err = self._err()
        self._check(self._shim.ff_sampler_accept(sampler, token, err, _ERR_LEN), err, "sampler")

    def grammar_probe(self, grammar, n_vocab: int) -> int | None:
        """How many tokens the grammar allows first (None without the shim)."""
        if self._shim is None:
            return None
        err, out = self._err(), ctypes.c_int32()
        self._check(
            self._shim.ff_grammar_probe(grammar, n_vocab, ctypes.byref(out), err, _ERR_LEN),
            err,
            "grammar",
        )
        return out.value

    def decode(self, ctx, batch) -> int:
        if self._shim is None:
            return self._lib.llama_decode(ctx, batch)
        err, rc = self._err(), ctypes.c_int32()
        self._check(
            self._shim.ff_decode(ctx, ctypes.byref(batch), ctypes.byref(rc), err, _ERR_LEN),
            err,
            "llama_decode",
        )
        return rc.value

    def tokenize(self, vocab, data: bytes, arr, cap: int, add_special: bool, parse: bool) -> int:
        if self._shim is None:
            return self._lib.llama_tokenize(vocab, data, len(data), arr, cap, add_special, parse)
        err, n = self._err(), ctypes.c_int32()
        self._check(
            self._shim.ff_tokenize(
                vocab, data, len(data), arr, cap, add_special, parse, ctypes.byref(n), err, _ERR_LEN
            ),
            err,
            "tokenize",
        )
        return n.value

    def model_load(self, path: bytes, params):
        if self._shim is None:
            return self._lib.llama_model_load_from_file(path, params)
        err, out = self._err(), _P()
        rc = self._shim.ff_model_load(path, ctypes.byref(params), ctypes.byref(out), err, _ERR_LEN)
        self._check(rc, err, "model load")
        return out.value

    def init_from_model(self, model, params):
        if self._shim is None:
            return self._lib.llama_init_from_model(model, params)
        err, out = self._err(), _P()
        rc = self._shim.ff_init_from_model(
            model, ctypes.byref(params), ctypes.byref(out), err, _ERR_LEN
        )
        self._check(rc, err, "context")
        return out.value


def load_guard(lib: ModuleType, lib_file: Path) -> Guard:
    """Build (if needed) and load the shim for ``lib_file``; a Guard that is off on failure."""
    try:
        header = find_header(lib_file.parent)
        if header is None:
            raise RuntimeError(
                f"no llama.h found for {lib_file} (set {INCLUDE_ENV} to your llama.cpp's "
                "include directory)"
            )
        path = _build(lib_file, header)
        shim = ctypes.CDLL(str(path))
        _declare(shim)
        err = ctypes.create_string_buffer(_ERR_LEN)
        if shim.ff_selftest(err, _ERR_LEN) != FF_EXCEPTION or err.value != b"guard self-test":
            raise RuntimeError("the guard's self-test did not catch its own exception")
    except Exception as e:
        log.warning("C++ guard is OFF (%s): an exception inside llama.cpp will end the process", e)
        return Guard(lib, None, GuardStatus(False, str(e)))
    return Guard(lib, shim, GuardStatus(True, str(path)))
