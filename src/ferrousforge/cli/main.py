"""Entry point: `ferrousforge <command>`."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from ferrousforge import __version__
from ferrousforge.cli import chat, doctor, info, models, rpc_worker, run, serve

EPILOG = """examples:
  ferrousforge run "Why is the sky blue?"       answer one prompt with the bundled model
  ferrousforge pull bartowski/SmolLM2-135M-Instruct-GGUF:Q8_0
                                                download a model from the Hugging Face Hub
  ferrousforge list                             pulled models: size, quant, architecture
  ferrousforge chat ./model.gguf                chat interactively
  ferrousforge serve --port 8080                OpenAI-compatible server
  ferrousforge info ./model.gguf                GGUF metadata
  ferrousforge doctor                           check the llama.cpp library on this machine
  ferrousforge rpc-worker --host 10.0.0.2       lend this machine to a model split with --rpc

`ferrousforge COMMAND --help` shows each command's flags.
"""


def _register_optional(sub: argparse._SubParsersAction, module: str) -> None:
    """Commands another package provides (bench) are added only when it is present."""
    try:
        mod = importlib.import_module(module)
    except ImportError:
        return
    if hasattr(mod, "register"):
        mod.register(sub)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ferrousforge",
        description="Run and serve GGUF models on llama.cpp.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"ferrousforge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve.register(sub)
    run.register(sub)
    chat.register(sub)
    info.register(sub)
    models.register(sub)
    doctor.register(sub)
    rpc_worker.register(sub)
    _register_optional(sub, "ferrousforge.bench.cli")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    # serve logs loading and readiness; run/chat/pull show a progress bar on a terminal instead.
    if not args.verbose and (
        args.command == "serve"
        or (args.command in ("run", "chat", "pull") and not sys.stderr.isatty())
    ):
        logging.getLogger("ferrousforge").setLevel(logging.INFO)
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:
        # The reader left (`ferrousforge list | head`): stop quietly, as other tools do.
        # Python would flush stdout again at exit and fail once more: point it at nothing.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for such a pipe


if __name__ == "__main__":
    sys.exit(main())
