"""`ferrousforge bench engine | serve`: argument parsing and terminal output only."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path

from ferrousforge.errors import FerrousForgeError


def _ints(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("expected positive integers")
    return values


def register(sub: argparse._SubParsersAction) -> None:
    """Add `bench` with its `engine` and `serve` subcommands to the CLI."""
    p = sub.add_parser("bench", help="benchmark the engine or any OpenAI-compatible server")
    bsub = p.add_subparsers(dest="bench_command", required=True)
    _register_engine(bsub)
    _register_serve(bsub)


def _register_engine(bsub: argparse._SubParsersAction) -> None:
    e = bsub.add_parser(
        "engine", help="offline: engine vs raw llama_decode and llama.cpp's tools (no HTTP)"
    )
    e.add_argument("--model", type=Path, default=None, help="GGUF file (default: bundled model)")
    e.add_argument(
        "--levels",
        type=_ints,
        default=[1, 2, 4, 8, 16],
        help="concurrent sequences, comma-separated (default 1,2,4,8,16)",
    )
    e.add_argument("--prompt-tokens", type=int, default=128)
    e.add_argument("--gen-tokens", type=int, default=128)
    e.add_argument("--threads", type=int, default=2)
    e.add_argument("--pp", type=int, default=512, help="pp test prompt length (0: skip)")
    e.add_argument("--tg", type=int, default=128, help="tg test length (0: skip)")
    e.add_argument("--repeat", type=int, default=1, help="runs per level (median kept)")
    e.add_argument("--json", type=Path, default=None, help="write the report here")
    e.add_argument(
        "--gpu", action="store_true", help="offload to the library's GPU backend (default: CPU)"
    )
    e.add_argument("--n-gpu-layers", type=int, default=-1, help="with --gpu (-1: all layers)")
    e.add_argument("--main-gpu", type=int, default=0, help="with --gpu: device index")
    e.add_argument(
        "--draft-max",
        type=int,
        default=0,
        help="speculative decoding in the engine (as serve's --draft-max); default 0: off, "
        "so that every side decodes one token per sequence per step",
    )
    e.add_argument(
        "--llama-tools",
        type=Path,
        default=None,
        help="folder with llama-bench and llama-batched-bench (default: .cache/llama-tools/bin,"
        " where bench/build_peers.sh builds them)",
    )
    e.add_argument(
        "--no-peers",
        action="store_true",
        help="skip llama-bench and llama-batched-bench (engine vs raw only)",
    )
    e.set_defaults(func=_run_engine)


def _run_engine(args: argparse.Namespace) -> int:
    from ferrousforge.bench.engine_bench import EngineBenchConfig, format_report, run_engine_bench
    from ferrousforge.models.default_model import default_model_path

    cfg = _config(
        EngineBenchConfig,
        model=args.model or default_model_path(),
        levels=args.levels,
        prompt_tokens=args.prompt_tokens,
        gen_tokens=args.gen_tokens,
        threads=args.threads,
        pp_tokens=args.pp,
        tg_tokens=args.tg,
        repeat=args.repeat,
        gpu=args.gpu,
        n_gpu_layers=args.n_gpu_layers,
        main_gpu=args.main_gpu,
        draft_max=args.draft_max,
        peers=not args.no_peers,
        llama_tools=args.llama_tools,
    )
    try:
        report = run_engine_bench(cfg)
    except FerrousForgeError as e:  # no GPU in this library, a model that does not load...
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(format_report(report))
    if args.json:
        _write_json(args.json, report.to_dict())
    return 0


def _register_serve(bsub: argparse._SubParsersAction) -> None:
    s = bsub.add_parser("serve", help="load-test OpenAI-compatible servers (streaming completions)")
    s.add_argument(
        "--url",
        action="append",
        required=True,
        help="server base URL, e.g. http://127.0.0.1:8080 (repeatable); NAME=URL labels it",
    )
    s.add_argument("--concurrency", type=_ints, default=[1, 2, 4, 8])
    s.add_argument(
        "--requests",
        type=int,
        default=0,
        help="requests per level (default: 2 x concurrency, at least 4)",
    )
    s.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run every level this many times, alternating servers (figures pool the rounds)",
    )
    s.add_argument(
        "--workload",
        choices=["fresh", "repetitive", "returning"],
        default="fresh",
        help="fresh: unique prompts (default); repetitive: answers that copy the prompt;"
        " returning: every prompt sent twice, the second round's TTFT reported apart",
    )
    s.add_argument(
        "--baseline",
        default=None,
        metavar="NAME",
        help="also print every server's ratios to this one (a NAME of --url NAME=URL)",
    )
    s.add_argument("--max-tokens", type=int, default=128)
    s.add_argument("--prompt-tokens", type=int, default=128, help="approximate prompt length")
    s.add_argument("--model", default=None, help="model name to send (default: the server's first)")
    s.add_argument("--timeout", type=float, default=300.0, help="per request, seconds")
    s.add_argument("--json", type=Path, default=None)
    s.add_argument("--plot", type=Path, default=None, help="PNG chart (needs matplotlib)")
    s.set_defaults(func=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    from ferrousforge.bench.serve_bench import (
        ServeBenchConfig,
        format_ratios,
        format_serve,
        run_serve_bench,
    )

    cfg = _config(
        ServeBenchConfig,
        urls=args.url,
        concurrency=args.concurrency,
        requests=args.requests,
        rounds=args.rounds,
        max_tokens=args.max_tokens,
        prompt_tokens=args.prompt_tokens,
        model=args.model,
        timeout_s=args.timeout,
        workload=args.workload,
    )
    report = asyncio.run(run_serve_bench(cfg))
    print(format_serve(report))
    if args.baseline:
        print()
        print(format_ratios(report, args.baseline))
    if args.json:
        _write_json(args.json, report.to_dict())
    if args.plot:
        from ferrousforge.bench.plot import plot_serve

        plot_serve(report, args.plot)
    failed = any(not lv.all_complete for srv in report.servers for lv in srv.levels)
    return 1 if failed else 0


def _config(factory, **fields):
    """Build a bench config; a value it rejects ends the command as argparse would."""
    try:
        return factory(**fields)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point: `python -m ferrousforge.bench.cli engine|serve ...`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = any(a in ("-v", "--verbose") for a in argv)
    argv = [a for a in argv if a not in ("-v", "--verbose")]
    parser = argparse.ArgumentParser(prog="ferrousforge")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["bench", *argv])
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
