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


# llama-server's defaults where they differ from ours, given before the caller's flags (a
# flag given later wins) unless the setting's environment variable says otherwise.
LLAMA_SERVER_DEFAULTS = {
    "metrics": "--no-metrics",  # llama-server serves /metrics on --metrics only
    "any_model_name": "--any-model-name",  # one model answers whatever name a request gives
}


def main(argv: list[str] | None = None) -> int:
    """`ferrousforge-server ARGS`: `ferrousforge serve ARGS`, for llama-server's scripts."""
    from ferrousforge.cli.main import main as ferrousforge_main
    from ferrousforge.settings import ENV_PREFIX

    defaults = [
        flag
        for name, flag in LLAMA_SERVER_DEFAULTS.items()
        if f"{ENV_PREFIX}{name.upper()}" not in os.environ
    ]
    return ferrousforge_main(["serve", *defaults, *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
