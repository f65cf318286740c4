"""`ferrousforge doctor`: is the library loadable here, and does a decode run?

The decode runs in a child process so a SIGILL (a build that uses
instructions this CPU cannot execute, e.g. AMX from -march=native on some
VMs) or a missing library becomes an explained failure with its remedy.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import subprocess
import sys

_CHILD = r"""
import asyncio, sys
from pathlib import Path
from ferrousforge.inference.backends.llama_cpp import LlamaCppBackend
from ferrousforge.inference.backend import BackendConfig, BackendInput
from ferrousforge.api.request import InferenceOptions
from ferrousforge.models.default_model import default_model_path

async def main(path):
    b = LlamaCppBackend()
    h = await b.load_model(path, BackendConfig(num_threads=1, context_size=256, max_parallel=1))
    opts = InferenceOptions(temperature=0, max_tokens=1)
    out = await b.infer(h, BackendInput.Text("Hello"), opts)
    await b.unload_model(h)
    print(f"decoded {out.usage.completion_tokens} token(s): {out.text!r}")

asyncio.run(main(Path(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1] else default_model_path()))
"""

_INTERESTING = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "bmi2",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx512vbmi",
    "avx_vnni",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
)

SIGILL_HELP = (
    "the library was killed by SIGILL: it was compiled for instructions this CPU cannot "
    "execute. A common cause is llama.cpp's default -march=native picking AMX (`tilezero`) on a "
    "VM that advertises AMX but traps it. Rebuild without AMX: `make rebuild-llama` (uses "
    "scripts/llama_cmake_args.sh: -DGGML_NATIVE=OFF with explicit AVX2/AVX512 flags), or "
    "`CMAKE_ARGS='-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON' pip install "
    "--no-cache-dir --force-reinstall llama-cpp-python==0.3.36`."
)


def cpu_features() -> list[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return [x for x in _INTERESTING if x in flags]
    except OSError:
        pass
    return []


def decode_check(model: str | None = None, timeout: float = 120.0) -> tuple[bool, str]:
    """Load a model and decode one token in a child process. Returns (ok, explanation)."""
    try:
        r = subprocess.run(
            [sys.executable, "-c", _CHILD, model or ""],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=os.environ.copy(),
        )
    except subprocess.TimeoutExpired:
        return False, f"the one-token decode did not finish in {timeout:.0f} s"
    if r.returncode == 0:
        return True, r.stdout.strip().splitlines()[-1] if r.stdout.strip() else "ok"
    if r.returncode == -signal.SIGILL:
        return False, SIGILL_HELP
    if r.returncode < 0:
        return False, f"the decode was killed by signal {-r.returncode}:\n{r.stderr[-1500:]}"
    tail = r.stderr.strip().splitlines()
    return False, "the decode failed:\n" + "\n".join(tail[-12:])


def run_guard_check() -> int:
    """Build the C++ guard for the library in use; 0 if it is on (``make install`` runs it)."""
    from ferrousforge.errors import LibraryNotFoundError
    from ferrousforge.inference.backends.llama_cpp.library import load_library, native_guard

    try:
        load_library()
    except LibraryNotFoundError as e:
        print(f"library       NOT LOADED: {e}")
        return 1
    status = native_guard().status
    print(f"c++ guard     {'on' if status.active else 'OFF'}: {status.detail}")
    return 0 if status.active else 1


def run_doctor(model: str | None = None) -> int:
    """Print the library mode and path, system info and CPU features; run a decode."""
    from ferrousforge.errors import LibraryNotFoundError
    from ferrousforge.inference.backends.llama_cpp.library import (
        library_info,
        load_library,
        native_guard,
    )
    from ferrousforge.inference.backends.llama_cpp.model import has_gpu
    from ferrousforge.inference.backends.llama_cpp.rpc import supports_rpc

    print(f"python        {sys.version.split()[0]} ({platform.machine()})")
    print(f"cpu features  {' '.join(cpu_features()) or 'unknown'}")
    ok = True
    try:
        lib = load_library()
        info = library_info()
        print(f"library mode  {info.mode}")
        print(f"library path  {info.path}")
        print(f"system info   {lib.llama_print_system_info().decode().strip()}")
        print(f"gpu offload   {'yes' if has_gpu(lib) else 'no'}")
        # llama_supports_gpu_offload is true for a build with the RPC backend alone.
        print(f"rpc backend   {'yes' if supports_rpc(lib) else 'no'} (ferrousforge rpc-worker)")
        ok = _report_cxx_runtime(info.path) and ok
        guard = native_guard().status
        if guard.active:
            print(f"c++ guard     on: {guard.detail}")
        else:
            print(
                f"c++ guard     OFF: {guard.detail}. An exception inside llama.cpp (e.g. from a "
                "bad grammar) will end the process; install a C++ compiler, or point "
                "FERROUSFORGE_LLAMA_INCLUDE at the include/ directory of your llama.cpp"
            )
    except LibraryNotFoundError as e:
        print(f"library       NOT LOADED: {e}")
        return 1
    good, detail = decode_check(model)  # in a subprocess: a crash there is reported here
    print(f"decode check  {'OK: ' if good else 'FAILED: '}{detail}")
    return 0 if ok and good else 1


def _report_cxx_runtime(lib_path) -> bool:
    """Print which C++ runtime the library uses; False when it carries its own."""
    from ferrousforge.inference.backends.llama_cpp.cxx_runtime import libraries_with_own_runtime

    own = libraries_with_own_runtime(lib_path)
    if not own:
        print("c++ runtime   shared (one C++ runtime in the process)")
        return True
    names = ", ".join(p.name for p in own)
    print(
        f"c++ runtime   OWN COPY in {names}: a second C++ runtime beside the system one "
        "(numpy loads it) crashes llama.cpp's tokenizer (std::regex) when a model loads. "
        "Rebuild with the system compiler: CC=/usr/bin/gcc CXX=/usr/bin/g++ "
        "CUDAHOSTCXX=/usr/bin/g++ (the default CXX on some CUDA hosts is a wrapper that "
        "links libstdc++ statically)"
    )
    return False


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "doctor",
        help="check the llama.cpp library and run a one-token decode",
        description="Print the library mode and path, llama.cpp's system info and "
        "the CPU features, then decode one token in a subprocess.",
        epilog="example: ferrousforge doctor --model ./model.gguf",
    )
    p.add_argument("--model", help="GGUF file to decode with (default: the bundled model)")
    p.add_argument(
        "--guard-only",
        action="store_true",
        help="only build (if needed) and check the C++ guard; exit 1 if it is off",
    )
    p.set_defaults(
        func=lambda args: run_guard_check() if args.guard_only else run_doctor(args.model)
    )
