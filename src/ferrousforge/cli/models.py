"""`ferrousforge pull | list | rm`: models from the Hugging Face Hub and on disk."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ferrousforge.errors import FerrousForgeError

PULL_EPILOG = """examples:
  ferrousforge pull bartowski/SmolLM2-135M-Instruct-GGUF            # its Q4_K_M file
  ferrousforge pull bartowski/SmolLM2-135M-Instruct-GGUF:Q8_0
  ferrousforge pull unsloth/gemma-3-270m-it-GGUF/gemma-3-270m-it-Q4_K_M.gguf
  ferrousforge run bartowski/SmolLM2-135M-Instruct-GGUF:Q8_0 "Hello"

HF_TOKEN, HF_ENDPOINT, HF_HOME and HF_HUB_OFFLINE work as for huggingface_hub.
"""

LIST_EPILOG = """examples:
  ferrousforge list                        # models pulled into the Hugging Face cache
  ferrousforge list --models-dir ~/models  # and every .gguf under a folder
  ferrousforge list --json
"""

RM_EPILOG = """examples:
  ferrousforge rm bartowski/SmolLM2-135M-Instruct-GGUF:Q8_0
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pull",
        help="download a GGUF model from the Hugging Face Hub",
        description="Download REPO[:QUANT] (default quant Q4_K_M, else the smallest file) or "
        "REPO/path/file.gguf into the Hugging Face cache; a split model downloads every part.",
        epilog=PULL_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", help="REPO[:QUANT] or REPO/path/file.gguf")
    p.set_defaults(func=run_pull)

    p = sub.add_parser(
        "list",
        help="list pulled models (and the models in a folder)",
        description="Name, size, quantization, architecture and context length of every "
        "pulled model, read from the GGUF headers without loading anything.",
        epilog=LIST_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--models-dir", metavar="DIR", help="also list every .gguf under DIR")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run_list)

    p = sub.add_parser(
        "rm",
        help="delete a pulled model from the Hugging Face cache",
        epilog=RM_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", help="a name `ferrousforge list` shows (REPO:QUANT)")
    p.set_defaults(func=run_rm)


def _size(n: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def run_pull(args: argparse.Namespace) -> int:
    from ferrousforge.models import hub

    try:
        local = hub.pull(args.model)
    except FerrousForgeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    parts = f" in {len(local.paths)} parts" if len(local.paths) > 1 else ""
    print(f"pulled {local.name} ({_size(local.size)}{parts}): {local.path}")
    return 0


def _row(name: str, path: Path, size: int) -> dict:
    """One model's facts from its GGUF header (columns stay empty for a file it cannot read)."""
    from ferrousforge.inference.gguf import read_gguf

    row = {"name": name, "size_bytes": size, "quantization": None, "architecture": None}
    row |= {"context_length": None, "path": str(path)}
    try:
        info = read_gguf(path)
    except FerrousForgeError:
        return row
    row |= {
        "quantization": info.file_type,
        "architecture": info.architecture,
        "context_length": info.arch_value("context_length"),
    }
    return row


def run_list(args: argparse.Namespace) -> int:
    from ferrousforge.models import hub
    from ferrousforge.models.files import models_in_dir, split_stem

    rows = [_row(m.name, m.path, m.size) for m in hub.pulled_models()]
    if args.models_dir:
        folder = Path(args.models_dir).expanduser()
        if not folder.is_dir():
            print(f"error: --models-dir {folder}: no such folder", file=sys.stderr)
            return 1
        for m in models_in_dir(folder):
            if m.is_model:
                rows.append(_row(split_stem(m.first), folder / m.first, m.size))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no models: `ferrousforge pull REPO[:QUANT]` downloads one", file=sys.stderr)
        return 0
    table = [("NAME", "SIZE", "QUANT", "ARCH", "CONTEXT")]
    for r in rows:
        cells = (r["quantization"], r["architecture"], r["context_length"])
        table.append((r["name"], _size(r["size_bytes"]), *(str(c or "-") for c in cells)))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return 0


def run_rm(args: argparse.Namespace) -> int:
    from ferrousforge.models import hub

    try:
        local = hub.remove(args.model)
    except FerrousForgeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"deleted {local.name} ({_size(local.size)})")
    return 0
