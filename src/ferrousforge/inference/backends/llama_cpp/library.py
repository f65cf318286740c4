"""Finding and loading libllama through llama-cpp-python's ctypes bindings.

Two modes: *bundled* (the libllama compiled when llama-cpp-python was
installed) and *dynamic* (a user's own build, named by FERROUSFORGE_LLAMA_LIB
or ``BackendConfig.library_path``). A process binds to one library: the
bindings module resolves every symbol once, at import.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import importlib
import importlib.util
import logging
import os
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from ferrousforge.errors import LibraryMismatchError, LibraryNotFoundError
from ferrousforge.inference.backends.llama_cpp.guard import Guard, load_guard

log = logging.getLogger(__name__)
llama_log = logging.getLogger("ferrousforge.llama_cpp")

ENV_VAR = "FERROUSFORGE_LLAMA_LIB"
_LIB_NAMES = ("libllama.so", "libllama.dylib", "llama.dll", "libllama.dll")
_lock = threading.Lock()
_state: dict[str, object] = {}


@dataclass(frozen=True, slots=True)
class LibraryInfo:
    mode: str  # "bundled" or "dynamic"
    path: Path


def _bundled_dir() -> Path | None:
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / "lib"


def _resolve_dynamic(requested: str) -> Path:
    """A directory holding libllama, or a libllama file: return its directory."""
    path = Path(requested).expanduser()
    if path.is_file():
        if path.name not in _LIB_NAMES:
            raise LibraryNotFoundError(
                f"{path}: the library file must be named one of {', '.join(_LIB_NAMES)} "
                "(llama.cpp's own name); point FERROUSFORGE_LLAMA_LIB at it or its directory"
            )
        return path.parent
    if path.is_dir():
        if any((path / n).exists() for n in _LIB_NAMES):
            return path
        for sub in ("lib", "bin", "build/bin", "build/src"):
            if any((path / sub / n).exists() for n in _LIB_NAMES):
                return path / sub
    raise LibraryNotFoundError(
        f"libllama not found at {path} (looked for {', '.join(_LIB_NAMES)} in it and in its "
        "lib/, bin/, build/bin/ subdirectories). Build llama.cpp with -DBUILD_SHARED_LIBS=ON "
        f"and set {ENV_VAR} to the directory holding libllama, or unset it to use the bundled "
        "library."
    )


def _library_file(directory: Path) -> Path:
    for name in _LIB_NAMES:
        if (directory / name).exists():
            return directory / name
    return directory / _LIB_NAMES[0]


def _import_bindings(lib_dir: Path | None) -> ModuleType:
    if lib_dir is not None:
        os.environ["LLAMA_CPP_LIB_PATH"] = str(lib_dir)
    else:
        os.environ.pop("LLAMA_CPP_LIB_PATH", None)
    try:
        return importlib.import_module("llama_cpp.llama_cpp")
    except ModuleNotFoundError as e:
        raise LibraryNotFoundError(
            "the llama-cpp-python bindings are not installed; run `make install` "
            f"(or `pip install llama-cpp-python==0.3.36`) ({e})"
        ) from e
    except AttributeError as e:
        raise LibraryMismatchError(
            f"the library at {lib_dir or _bundled_dir()} lacks a symbol the bindings need ({e}): "
            "its llama.cpp version does not match llama-cpp-python 0.3.36. Build libllama from "
            "the llama.cpp source vendored in that sdist."
        ) from e
    except (OSError, RuntimeError, FileNotFoundError) as e:
        where = lib_dir or _bundled_dir()
        raise LibraryNotFoundError(
            f"could not load libllama from {where}: {e}. Run `make install` to build the "
            f"bundled library, or set {ENV_VAR} to a directory with your own libllama; "
            "`ferrousforge doctor` explains more."
        ) from e
    finally:
        # A failed import leaves half-initialised modules behind; drop them so a retry works.
        if "llama_cpp.llama_cpp" not in sys.modules or not hasattr(
            sys.modules.get("llama_cpp.llama_cpp"), "llama_decode"
        ):
            for name in [m for m in sys.modules if m == "llama_cpp" or m.startswith("llama_cpp.")]:
                sys.modules.pop(name, None)


def requested_library(library_path: str | None = None) -> str | None:
    """The dynamic library asked for: the argument, else FERROUSFORGE_LLAMA_LIB."""
    return library_path or os.environ.get(ENV_VAR) or None


def load_library(library_path: str | None = None) -> ModuleType:
    """Return the bindings module bound to libllama, loading it on first use.

    Raises LibraryNotFoundError if it cannot be loaded, LibraryMismatchError if
    it lacks symbols, or if a different library is already bound in this process.
    """
    requested = requested_library(library_path)
    with _lock:
        lib_dir = _resolve_dynamic(requested) if requested else None
        if "module" in _state:
            info: LibraryInfo = _state["info"]  # type: ignore[assignment]
            if lib_dir is not None and lib_dir.resolve() != info.path.parent.resolve():
                raise LibraryMismatchError(
                    f"this process already uses libllama from {info.path}; "
                    f"cannot switch to {lib_dir} (one library per process)"
                )
            return _state["module"]  # type: ignore[return-value]
        if lib_dir is None:
            bundled = _bundled_dir()
            if bundled is None:
                raise LibraryNotFoundError(
                    "llama-cpp-python is not installed, so there is no bundled libllama; "
                    f"run `make install`, or set {ENV_VAR} to your own libllama"
                )
        module = _import_bindings(lib_dir)
        mode = "dynamic" if lib_dir else "bundled"
        path = _library_file(lib_dir or _bundled_dir())  # type: ignore[arg-type]
        _check_struct_sizes(module)
        module.llama_backend_init()
        _install_log_callback(module)
        guard = load_guard(module, path)
        _state.update(module=module, info=LibraryInfo(mode, path), guard=guard)
        log.info("loaded libllama (%s) from %s", mode, path)
        return module


def library_info() -> LibraryInfo | None:
    return _state.get("info")  # type: ignore[return-value]


def native_guard() -> Guard:
    """The guarded-call shim of the loaded library (``load_library`` first)."""
    return _state["guard"]  # type: ignore[return-value]


def _check_struct_sizes(module: ModuleType) -> None:
    # The default-params functions return structs by value: a layout mismatch
    # between library and bindings would corrupt memory later, so probe them now.
    try:
        module.llama_model_default_params()
        module.llama_context_default_params()
    except Exception as e:  # pragma: no cover - depends on a broken library
        raise LibraryMismatchError(
            f"libllama and the bindings disagree on struct layout: {e}"
        ) from e


# llama.cpp log capture: forwarded to logging, and the recent lines are kept
# so a failed load can show llama.cpp's own explanation.
_recent_lines: collections.deque[tuple[int, str]] = collections.deque(maxlen=400)
_line_count = [0]
_partial: list[str] = []
_LEVELS = {1: logging.DEBUG, 2: logging.DEBUG, 3: logging.WARNING, 4: logging.ERROR}
_last_level = [logging.DEBUG]
_expected = threading.local()  # warnings the calling thread knows to be harmless


@contextlib.contextmanager
def expected_warnings(*prefixes: str) -> Iterator[None]:
    """Log llama.cpp lines starting with ``prefixes`` at debug level while in the block, on
    this thread (llama.cpp logs from the thread that calls it): warnings the caller has
    made harmless, which would only mislead in the log."""
    before = getattr(_expected, "prefixes", ())
    _expected.prefixes = before + prefixes
    try:
        yield
    finally:
        _expected.prefixes = before


def _on_log(level: int, text: bytes, _user: ctypes.c_void_p) -> None:
    try:
        msg = text.decode("utf-8", errors="replace") if text else ""
        if level != 5:  # 5 = continuation of the previous line
            _last_level[0] = _LEVELS.get(level, logging.DEBUG)
        _partial.append(msg)
        if msg.endswith("\n"):
            line = "".join(_partial).rstrip("\n")
            _partial.clear()
            _line_count[0] += 1
            _recent_lines.append((_line_count[0], line))
            expected = line.startswith(getattr(_expected, "prefixes", ()))
            llama_log.log(logging.DEBUG if expected else _last_level[0], "%s", line)
    except Exception:  # never let an exception cross into C
        pass


_log_callback_ref: list[object] = []


def _install_log_callback(module: ModuleType) -> None:
    cb = module.llama_log_callback(_on_log)
    _log_callback_ref.append(cb)  # keep alive for the life of the process
    module.llama_log_set(cb, ctypes.c_void_p())


def log_mark() -> int:
    """A position in the captured llama.cpp log; pass it to ``log_lines_since``."""
    return _line_count[0]


def log_lines_since(mark: int, limit: int = 40) -> list[str]:
    """llama.cpp log lines captured after ``mark`` (the last ``limit`` of them)."""
    return [line for i, line in _recent_lines if i > mark][-limit:]
