"""`ferrousforge info [MODEL]`: a GGUF file's metadata, read without loading it."""

from __future__ import annotations

import argparse
import json
import sys

from ferrousforge.errors import FerrousForgeError
from ferrousforge.inference.gguf import GGUFInfo, read_gguf

EPILOG = """examples:
  ferrousforge info                       # the bundled default model
  ferrousforge info ./model.gguf --json
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "info",
        help="show a model's GGUF metadata",
        description="Architecture, parameters, context length, quantization, "
        "vocabulary size and chat template of a GGUF file.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", nargs="?", default=None, help="model path or alias (default: bundled)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run_info)


def _human(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def summary(info: GGUFInfo) -> dict:
    """The facts a user wants first, as a dict (also the --json output)."""
    return {
        "path": str(info.path),
        "name": info.metadata.get("general.name"),
        "architecture": info.architecture,
        "parameters": info.n_params,
        "context_length": info.arch_value("context_length"),
        "embedding_length": info.arch_value("embedding_length"),
        "layers": info.arch_value("block_count"),
        "quantization": info.file_type,
        "vocab_size": info.vocab_size,
        "has_chat_template": info.chat_template is not None,
        "file_size_bytes": info.file_size,
        "gguf_version": info.version,
    }


def run_info(args: argparse.Namespace) -> int:
    from ferrousforge.models.registry import resolve_model_path

    try:
        _, path = resolve_model_path(args.model)
        s = summary(read_gguf(path))
    except FerrousForgeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(s, indent=2))
        return 0
    shown = {
        **s,
        "parameters": _human(s["parameters"]),
        "has_chat_template": "yes" if s["has_chat_template"] else "no",
    }
    shown["file_size"] = f"{shown.pop('file_size_bytes') / 1e6:.1f} MB"
    width = max(len(k) for k in shown)
    for k, v in shown.items():
        print(f"{k.replace('_', ' '):<{width}}  {v if v is not None else '-'}")
    return 0
