"""`ferrousforge rpc-worker`: lend this machine's CPU and memory to a head's model.

llama.cpp's rpc-server, started from the bundled library (ggml_backend_rpc_start_server).
The RPC protocol has no authentication: whoever reaches the port can allocate memory and
run computations here, so only loopback and private addresses are accepted unless
--allow-public is given.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading

log = logging.getLogger(__name__)

EPILOG = """security: the RPC protocol has no authentication and no encryption. Bind to a
private interface that only the head can reach, never to the internet.

example:
  ferrousforge rpc-worker --host 10.0.0.2 --port 50052     on each worker
  ferrousforge serve --rpc 10.0.0.2:50052,10.0.0.3:50052    on the head
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "rpc-worker",
        help="serve this machine's CPU to a head running a model with --rpc",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback)")
    p.add_argument("--port", type=int, default=50052, help="TCP port (default 50052)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    p.add_argument(
        "--cache-dir",
        default=None,
        help="keep tensors the head sends here, so a reload skips sending them again",
    )
    p.add_argument(
        "--allow-public",
        action="store_true",
        help="listen on a public or wildcard address (0.0.0.0, ::) although anyone who "
        "reaches it can use this machine: there is no authentication",
    )
    p.add_argument("--llama-lib", default=None, metavar="PATH", help="use this libllama")
    p.set_defaults(func=run_worker)


def check_host(host: str, allow_public: bool) -> None:
    from ferrousforge.inference.backends.llama_cpp.rpc import is_private

    if is_private(host):
        return
    if allow_public:
        log.warning("rpc-worker: listening on %s, which is not private: no authentication", host)
        return
    raise ValueError(
        f"--host {host}: not a loopback or private address. llama.cpp's RPC protocol has "
        "no authentication, so anyone who can reach the port can use this machine; bind "
        "to a private interface, or pass --allow-public if a firewall guards it"
    )


def run_worker(args: argparse.Namespace) -> int:
    from ferrousforge.errors import FerrousForgeError
    from ferrousforge.inference.backends.llama_cpp.library import load_library
    from ferrousforge.inference.backends.llama_cpp.rpc import check_bind, ggml_for, start_server

    threads = args.threads or os.cpu_count() or 1
    try:
        if not 0 < args.port < 65536:
            raise ValueError(f"--port {args.port}: must be between 1 and 65535")
        if threads < 1:
            raise ValueError("--threads: must be >= 1")
        check_host(args.host, args.allow_public)
        lib = load_library(args.llama_lib)
        ggml_for(lib).rpc_reg()  # RpcUnavailableError before anything listens
        check_bind(args.host, args.port)
    except (ValueError, OSError, FerrousForgeError) as e:
        print(f"ferrousforge rpc-worker: {e}", file=sys.stderr)
        return 2
    host = f"[{args.host}]" if ":" in args.host else args.host
    endpoint = f"{host}:{args.port}"
    stopped = threading.Event()

    def serve() -> None:
        start_server(lib, endpoint, threads, args.cache_dir)
        log.error("rpc-worker: llama.cpp's server on %s stopped", endpoint)
        stopped.set()  # it returns only when it could not listen or accept

    # ggml's loop never returns while serving: a daemon thread, and the main thread waits for
    # a signal (Python runs handlers only on the main thread).
    threading.Thread(target=serve, name="rpc-server", daemon=True).start()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopped.set())
    print(f"rpc-worker listening on {endpoint} ({threads} threads)", file=sys.stderr, flush=True)
    stopped.wait()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # the server thread is inside C and cannot be joined
