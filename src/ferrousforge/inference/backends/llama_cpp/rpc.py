"""llama.cpp's RPC backend (ggml-rpc): a worker's server, and a head's remote devices.

The protocol has no authentication and no encryption: anyone who reaches a worker's port
can make it allocate memory and run graphs. Workers bind to loopback or private addresses
unless told otherwise (``allow_public``).

ggml-rpc aborts the whole process when a worker cannot be reached or disappears, and its
sockets have no timeouts: only a child process may hold RPC devices (see remote.py).
"""

from __future__ import annotations

import ctypes
import ipaddress
import socket
from pathlib import Path
from types import ModuleType

from ferrousforge.errors import RemoteWorkerError, RpcUnavailableError

RPC_MISSING = (
    "this libllama was built without llama.cpp's RPC backend (GGML_RPC). The bundled "
    "library has it (`make install`); a CMAKE_ARGS of your own replaces FerrousForge's "
    "flags, so add -DGGML_RPC=ON to it"
)
CPU_DEVICE = 0  # GGML_BACKEND_DEVICE_TYPE_CPU
GPU_DEVICES = (1, 2)  # GGML_BACKEND_DEVICE_TYPE_GPU, _IGPU
_LIBS = ("libggml.so", "libggml-base.so", "libggml.dylib", "libggml-base.dylib")


def parse_endpoint(text: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6) as (host, port); ValueError naming it."""
    text = text.strip()
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"rpc: {text!r} is not host:port")
    return host.strip("[]"), int(port)


def parse_endpoints(value: str | list[str] | None) -> list[str]:
    """A comma list (or list of comma lists) of endpoints, each checked."""
    if not value:
        return []
    items = value.split(",") if isinstance(value, str) else [p for v in value for p in v.split(",")]
    out = [i.strip() for i in items if i.strip()]
    for e in out:
        parse_endpoint(e)
    return out


def is_private(host: str) -> bool:
    """Loopback or private (RFC 1918, ULA, link-local) for every address ``host`` names.

    0.0.0.0 and :: (every interface) are not: they include the public ones.
    """
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    addrs = {ipaddress.ip_address(i[4][0].split("%")[0]) for i in infos}
    return bool(addrs) and all(
        not a.is_unspecified and (a.is_loopback or a.is_private or a.is_link_local) for a in addrs
    )


def check_bind(host: str, port: int) -> None:
    """Bind the address ourselves first: ggml's server only prints when it cannot."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise OSError(f"rpc-worker: cannot listen on {host}:{port}: {e.strerror}") from e


def check_reachable(endpoints: list[str], timeout: float = 3.0) -> None:
    """A plain TCP connect to each worker: ggml-rpc would abort the process instead."""
    for ep in endpoints:
        host, port = parse_endpoint(ep)
        try:
            socket.create_connection((host, port), timeout=timeout).close()
        except OSError as e:
            raise RemoteWorkerError(
                f"rpc worker {ep} is not reachable ({e.strerror or e}); start it with "
                f"`ferrousforge rpc-worker --host {host} --port {port}`"
            ) from e


class Ggml:
    """The few ggml-backend functions llama-cpp-python does not bind."""

    def __init__(self, lib_dir: Path) -> None:
        self._dlls = [ctypes.CDLL(str(lib_dir / n)) for n in _LIBS if (lib_dir / n).exists()]
        vp, cp, sz = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t
        self.reg_by_name = self._fn("ggml_backend_reg_by_name", [cp], vp)
        self.reg_get_proc_address = self._fn("ggml_backend_reg_get_proc_address", [vp, cp], vp)
        self.reg_dev_count = self._fn("ggml_backend_reg_dev_count", [vp], sz)
        self.reg_dev_get = self._fn("ggml_backend_reg_dev_get", [vp, sz], vp)
        self.dev_by_type = self._fn("ggml_backend_dev_by_type", [ctypes.c_int], vp)
        self.dev_name = self._fn("ggml_backend_dev_name", [vp], cp)

    def _fn(self, name: str, argtypes: list, restype):
        for dll in self._dlls:
            try:
                fn = getattr(dll, name)
            except AttributeError:
                continue
            fn.argtypes, fn.restype = argtypes, restype
            return fn
        raise RpcUnavailableError(f"{name} not found in libggml: {RPC_MISSING}")

    def rpc_reg(self) -> int:
        reg = self.reg_by_name(b"RPC")
        if not reg:
            raise RpcUnavailableError(RPC_MISSING)
        return reg

    def rpc_proc(self, name: str, argtypes: list, restype):
        addr = self.reg_get_proc_address(self.rpc_reg(), name.encode())
        if not addr:
            raise RpcUnavailableError(f"{name}: {RPC_MISSING}")
        return ctypes.CFUNCTYPE(restype, *argtypes)(addr)


def ggml_for(lib: ModuleType) -> Ggml:
    from ferrousforge.inference.backends.llama_cpp.library import library_info

    info = library_info()
    assert info is not None, "load_library first"
    return Ggml(info.path.parent if info.path.is_file() else info.path)


def supports_rpc(lib: ModuleType) -> bool:
    try:
        ggml_for(lib).rpc_reg()
    except RpcUnavailableError:
        return False
    return True


def rpc_devices(lib: ModuleType, endpoints: list[str], local_cpu: bool = False):
    """A NULL-terminated ggml_backend_dev_t array: each worker's devices, in order.

    Only in a process that may die with a worker: ggml aborts on a connection error.
    The RPC registries are not registered globally, so other models stay local.
    """
    g = ggml_for(lib)
    add_server = g.rpc_proc("ggml_backend_rpc_add_server", [ctypes.c_char_p], ctypes.c_void_p)
    devs: list[int] = []
    for ep in endpoints:
        reg = add_server(ep.encode())
        if not reg:
            raise RemoteWorkerError(f"rpc worker {ep} reported no devices")
        devs += [g.reg_dev_get(reg, i) for i in range(g.reg_dev_count(reg))]
    if local_cpu:
        devs.append(g.dev_by_type(CPU_DEVICE))
    return (ctypes.c_void_p * (len(devs) + 1))(*devs, None)


def start_server(lib: ModuleType, endpoint: str, threads: int, cache_dir: str | None) -> None:
    """Serve this machine's CPU to RPC clients; returns only if the server could not start."""
    g = ggml_for(lib)
    start = g.rpc_proc(
        "ggml_backend_rpc_start_server",
        [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_void_p],
        None,
    )
    cpu = g.dev_by_type(CPU_DEVICE)
    devices = (ctypes.c_void_p * 1)(cpu)
    start(endpoint.encode(), cache_dir.encode() if cache_dir else None, threads, 1, devices)
