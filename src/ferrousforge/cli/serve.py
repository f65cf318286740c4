"""`ferrousforge serve`: the OpenAI-compatible HTTP server (flags generated from the settings)."""

from __future__ import annotations

import argparse
import logging
import socket
import sys

from pydantic import ValidationError

from ferrousforge.cli.llama_server import add_llama_server_flags, apply_llama_server_flags
from ferrousforge.cli.loading import LoadProgress
from ferrousforge.errors import FerrousForgeError
from ferrousforge.inference.gguf import validate_gguf
from ferrousforge.settings import (
    ServerSettings,
    add_settings_arguments,
    load_settings,
    read_config,
    settings_from_args,
)

EPILOG = """examples:
  ferrousforge serve                                   # the bundled SmolLM2-135M on :8080
  ferrousforge serve --model ./qwen2.5-0.5b-q4_k_m.gguf --parallel 8 --ctx-size 8192
  ferrousforge serve --config models.toml --api-key sk-local
  ferrousforge serve --models-dir ~/models --max-loaded-models 2 --idle-unload 300
  FERROUSFORGE_API_KEY=k1,k2 FERROUSFORGE_PORT=9000 ferrousforge serve
  ferrousforge serve --ray --replicas 2                # two engine replicas on Ray Serve
  ferrousforge serve --ray --min-replicas 1 --max-replicas 4   # autoscaled on queue length

then:
  curl http://127.0.0.1:8080/v1/chat/completions -H 'Content-Type: application/json' \\
       -d '{"messages": [{"role": "user", "content": "Hello"}]}'
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve models over an OpenAI-compatible HTTP API",
        description="Serve GGUF models over an OpenAI-compatible HTTP API. "
        "Every flag is also an env var FERROUSFORGE_<NAME>.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--config",
        metavar="TOML",
        help="config file with [server] settings and [[models]] (see docs/server.md)",
    )
    add_settings_arguments(p, ServerSettings)
    add_llama_server_flags(p)
    p.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn  # imported here: `ferrousforge info` should not pay for it

    from ferrousforge.api.app import create_app
    from ferrousforge.api.vertex import vertex_routes
    from ferrousforge.models.registry import model_specs

    try:
        apply_llama_server_flags(args)
        config = read_config(args.config) if args.config else None
        settings = load_settings(settings_from_args(args), config)
        if settings.ray:  # before the models are resolved: the replicas' threads change
            from ferrousforge.serving_ray import require_ray

            require_ray()
            from ferrousforge.serving_ray.launcher import replica_settings

            settings = replica_settings(settings)
        specs = model_specs(settings, config.models if config else None)
        for spec in specs:
            if spec.preload:  # a bad file should stop us here, not after the server is up
                validate_gguf(spec.path, check_architecture=False)
            spec.config.progress_callback = LoadProgress(spec.id)
    except ValidationError as e:
        for err in e.errors():
            where = ".".join(str(p) for p in err["loc"])
            print(f"error: {where}: {err['msg']}", file=sys.stderr)
        return 2
    except (FerrousForgeError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.verbose:  # llama-server's --verbose: debug logs, and __verbose in answers
        settings.log_level = "debug"
    level = getattr(logging, settings.log_level.upper())
    logging.getLogger("ferrousforge").setLevel(level)
    if settings.ray:
        from ferrousforge.serving_ray.launcher import serve_on_ray

        return serve_on_ray(settings, specs)
    # A server whose model cannot load would answer 503 forever: stop it instead (with a
    # config file too, since a configured model would be missing).
    app = create_app(settings, specs, on_load_error=lambda _: setattr(server, "should_exit", True))
    hosts = settings.hosts
    port = settings.port
    vertex = vertex_routes()
    if vertex is not None and vertex.port != port:  # Vertex AI decides where we listen
        logging.getLogger("ferrousforge").warning(
            "Vertex AI: listening on AIP_HTTP_PORT %d instead of port %d", vertex.port, port
        )
        port = vertex.port
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=hosts[0],
            port=port,
            log_level=settings.log_level,
            http=settings.http,
            timeout_graceful_shutdown=5,
        )
    )
    uvicorn_exit = server.handle_exit

    def handle_exit(sig: int, frame: object) -> None:
        for hook in app.state.exit_hooks:  # e.g. MCP tool calls in flight answer at once
            hook()
        uvicorn_exit(sig, frame)

    server.handle_exit = handle_exit  # type: ignore[method-assign]
    try:
        # Several addresses (llama-server's --host a,b): one socket each, one server.
        sockets = [_bind(h, port) for h in hosts] if len(hosts) > 1 else None
    except OSError as e:
        print(f"error: cannot listen: {e}", file=sys.stderr)
        return 3
    try:
        server.run(sockets=sockets)
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it shut down on
        pass
    load_error = app.state.ff.load_error
    if load_error:
        first, *rest = load_error.splitlines()
        print(f"error: {first}{' (details in the log above)' if rest else ''}", file=sys.stderr)
        return 1
    return 0 if server.started else 3  # 3: uvicorn's code for a failed startup (port in use)


def _bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (IPv4 or IPv6)."""
    info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(info[0], info[1], info[2])
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(info[4])
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock
