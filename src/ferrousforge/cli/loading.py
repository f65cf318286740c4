"""Loading a model from the command line: a progress bar on a terminal, log lines otherwise."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable
from typing import TextIO

log = logging.getLogger("ferrousforge")


class LoadProgress:
    """A progress callback for BackendConfig: redraws one bar on a TTY, else logs milestones."""

    def __init__(self, name: str, stream: TextIO | None = None, width: int = 30) -> None:
        self.name = name
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.width = width
        self.started = time.perf_counter()
        self._last_logged = -1

    def __call__(self, fraction: float) -> None:
        fraction = min(max(fraction, 0.0), 1.0)
        if self.tty:
            percent = int(fraction * 100)
            if percent == self._last_logged:
                return  # llama.cpp reports per tensor: redraw only when the figure changes
            self._last_logged = percent
            done = int(fraction * self.width)
            bar = "#" * done + "-" * (self.width - done)
            end = "\n" if fraction >= 1.0 else ""
            self.stream.write(f"\rloading {self.name} [{bar}] {fraction:4.0%}{end}")
            self.stream.flush()
            return
        step = int(fraction * 4)  # 0%, 25%, 50%, 75%, 100%: enough for a log file
        if step > self._last_logged:
            self._last_logged = step
            log.info("loading %s: %d%%", self.name, step * 25)

    def finished(self) -> None:
        log.info("loaded %s in %.2f s", self.name, time.perf_counter() - self.started)


def progress_for(name: str) -> Callable[[float], None]:
    return LoadProgress(name)


def add_model_arguments(p) -> None:
    """Flags shared by run and chat: how to load the model and how to sample."""
    g = p.add_argument_group("model")
    g.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    g.add_argument("--ctx-size", type=int, default=4096, help="context size in tokens")
    g.add_argument(
        "--pull",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="download a Hugging Face model REPO[:QUANT] not pulled yet [env FERROUSFORGE_PULL]",
    )
    g.add_argument(
        "--llama-lib",
        default=None,
        metavar="PATH",
        help="use this libllama instead of the bundled one [env FERROUSFORGE_LLAMA_LIB]",
    )
    g.add_argument(
        "--rpc",
        default=None,
        metavar="HOST:PORT,...",
        help="run the model's layers on these `ferrousforge rpc-worker`s [env FERROUSFORGE_RPC]",
    )
    g.add_argument(
        "-ts",
        "--tensor-split",
        default=None,
        metavar="W,...",
        help="with --rpc: each worker's share of the layers (default: by free memory)",
    )
    s = p.add_argument_group("sampling")
    s.add_argument("--max-tokens", type=int, default=512, help="most tokens per answer")
    s.add_argument("--temperature", type=float, default=0.7, help="0 for greedy decoding")
    s.add_argument("--top-p", type=float, default=0.95)
    s.add_argument("--seed", type=int, default=None)
    s.add_argument("--system", default=None, help="system message")


def load_cli_model(model: str | None, args, parallel: int = 1):
    """Load MODEL (path, alias or None for the default) for run/chat: (backend, loaded, id)."""
    import os

    from ferrousforge.inference.backend import AcceleratorType, BackendConfig
    from ferrousforge.inference.backends.llama_cpp.backend import LlamaCppBackend
    from ferrousforge.models.registry import resolve_model_path
    from ferrousforge.settings import load_settings

    # --pull over FERROUSFORGE_PULL over the default, as for `serve`
    given = {"pull": args.pull, "rpc": args.rpc, "tensor_split": args.tensor_split}
    settings = load_settings({k: v for k, v in given.items() if v is not None})
    mid, path = resolve_model_path(model, pull=settings.pull)
    progress = LoadProgress(mid)
    kwargs = dict(
        context_size=args.ctx_size,
        max_parallel=parallel,
        max_waiting=1,
        library_path=args.llama_lib or os.environ.get("FERROUSFORGE_LLAMA_LIB"),
        progress_callback=progress,
        rpc_servers=list(settings.rpc),
        tensor_split=settings.tensor_split,
        rpc_step_timeout_s=settings.rpc_timeout,
    )
    if args.threads:
        kwargs["num_threads"] = args.threads
    backend = LlamaCppBackend()
    lm = backend.load_model_sync(path, BackendConfig(**kwargs), AcceleratorType.Cpu())
    progress.finished()
    return backend, lm, mid
