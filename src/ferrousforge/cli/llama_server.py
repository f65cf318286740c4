"""llama-server's command line on `ferrousforge serve`, and the `ferrousforge-server` binary.

Most llama-server flags are spellings of our settings (declared on the settings model). The
ones here have no setting behind them: either what FerrousForge always does (continuous
batching, Jinja templates, a full-size SWA cache), or another way to name one (``-hf``). Any
other llama-server flag is an argparse error that names it: none is silently ignored.
"""

from __future__ import annotations

import argparse
import os
import sys

# Flags that ask for what FerrousForge always does; accepted so llama-server scripts run.
ALWAYS_ON = {
    ("-cb", "--cont-batching"): "continuous batching is always on",
    ("--swa-full",): "sliding-window models always get a full-size KV cache",
    ("--no-webui", "--no-ui"): "there is no web UI",
    ("--cache-prompt",): "prompts are always cached",
}


def add_llama_server_flags(parser: argparse.ArgumentParser) -> None:
    """The llama-server flags that are not settings (see the module docstring)."""
    group = parser.add_argument_group(
        "llama-server spellings", "accepted so scripts written for llama-server run unchanged"
    )
    for names, why in ALWAYS_ON.items():
        group.add_argument(*names, action="store_true", dest="_compat", help=f"({why})")
    group.add_argument(
        "-hf",
        "-hfr",
        "--hf-repo",
        dest="hf_repo",
        metavar="REPO[:QUANT]",
        help="a Hugging Face model, downloaded if missing: --model REPO[:QUANT] --pull",
    )
    group.add_argument(
        "-hff", "--hf-file", dest="hf_file", metavar="FILE", help="with -hf: that file of the repo"
    )
    group.add_argument(
        "-v",
        "--verbose",
        "--log-verbose",
        dest="verbose",
        action="store_true",
        default=argparse.SUPPRESS,  # keep `ferrousforge -v serve`
        help="debug logging (as -v)",
    )


def apply_llama_server_flags(args: argparse.Namespace) -> None:
    """Turn -hf/-hff into --model and --pull."""
    repo, file = getattr(args, "hf_repo", None), getattr(args, "hf_file", None)
    if file and not repo:
        raise ValueError("--hf-file needs --hf-repo")
    if repo:
        if args.model is not None:
            raise ValueError("--hf-repo and --model name two models: give one")
        args.model = f"{repo.split(':')[0]}/{file}" if file else repo
        if args.pull is None:
            args.pull = True  # llama-server downloads -hf models; --offline says otherwise


def llama_server_defaults(argv: list[str]) -> list[str]:
    """llama-server's defaults where they differ from `ferrousforge serve`'s, unless the
    command line or env sets them: /metrics off unless --metrics, CORS allows any origin
    (``--cors-origins '*'``), a request's model name is not checked when one --model is
    served (``--any-model-name``), and response header names keep their casing
    (``--http h11``)."""
    defaults = []
    if not _given(argv, "--metrics", "FERROUSFORGE_METRICS", "--no-metrics"):
        defaults.append("--no-metrics")  # llama-server serves /metrics on --metrics only
    if not _given(argv, "--cors-origins", "FERROUSFORGE_CORS_ORIGINS"):
        defaults += ["--cors-origins", "*"]
    if not _given(argv, "--any-model-name", "FERROUSFORGE_ANY_MODEL_NAME", "--no-any-model-name"):
        defaults.append("--any-model-name")
    if not _given(argv, "--http", "FERROUSFORGE_HTTP"):
        defaults += ["--http", "h11"]  # response header names keep their casing
    return [*defaults, *argv]


def _given(argv: list[str], flag: str, env: str, *others: str) -> bool:
    flags = (flag, *others)
    return bool(os.environ.get(env)) or any(a.split("=")[0] in flags for a in argv)


def main(argv: list[str] | None = None) -> int:
    """`ferrousforge-server ARGS`: `ferrousforge serve ARGS` with llama-server's defaults,
    for llama-server's scripts."""
    from ferrousforge.cli.main import main as ferrousforge_main

    args = llama_server_defaults(sys.argv[1:] if argv is None else argv)
    return ferrousforge_main(["serve", *args])


if __name__ == "__main__":
    sys.exit(main())
