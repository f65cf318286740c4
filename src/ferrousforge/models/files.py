"""GGUF files as models: a split's parts belong together, names carry the quantization.

A model is one ``.gguf`` file or every part of a split (``name-00001-of-00003.gguf`` ...);
llama.cpp loads a split from its first part and finds the others beside it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

_SPLIT = re.compile(r"^(?P<prefix>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$", re.IGNORECASE)
# llama.cpp's quantization names as they appear in file names (Q4_K_M, IQ2_XXS, Q4_0_4_4, BF16...).
_QUANT = re.compile(
    r"(?<![A-Za-z0-9])((?:I?Q|TQ)\d(?:_(?:K|\d|XXS|XS|S|M|L|XL|NL))*|B?F16|F32|MXFP4)"
    r"(?![A-Za-z0-9])",
    re.IGNORECASE,
)
# Files in GGUF repos that are not a language model on their own.
_NOT_MODELS = ("mmproj", "imatrix")


def quant_of(path: str) -> str | None:
    """The quantization named in a file name (upper case), e.g. 'Q4_K_M'; None if none is."""
    found = _QUANT.findall(PurePosixPath(path).name)
    return found[-1].upper() if found else None


def names_quant(path: str, quant: str) -> bool:
    """Whether the file name names ``quant`` as a whole word, case-insensitively
    ('Q4_K' does not match 'Q4_K_M', 'Q4_0' does not match 'IQ4_0')."""
    pattern = rf"(?<![A-Za-z0-9]){re.escape(quant)}(?![A-Za-z0-9]|_[A-Za-z0-9])"
    return re.search(pattern, PurePosixPath(path).name, re.IGNORECASE) is not None


def split_stem(path: str) -> str:
    """The file name without .gguf and without a split's -0000N-of-0000M."""
    name = PurePosixPath(path).name
    m = _SPLIT.match(name)
    return m["prefix"] if m else name.removesuffix(".gguf").removesuffix(".GGUF")


@dataclass(frozen=True, slots=True)
class ModelFiles:
    """One model's files (relative paths, first part first) and their total size."""

    paths: tuple[str, ...]
    size: int

    @property
    def first(self) -> str:
        return self.paths[0]

    @property
    def is_split(self) -> bool:
        return len(self.paths) > 1

    @property
    def quant(self) -> str | None:
        return quant_of(self.first)

    @property
    def is_model(self) -> bool:
        """False for a vision projector or an importance matrix shipped beside the models."""
        name = PurePosixPath(self.first).name.lower()
        return not any(word in name for word in _NOT_MODELS)


def group_files(sizes: dict[str, int]) -> list[ModelFiles]:
    """The models among ``{relative path: size}``: each single .gguf, and each split whose
    parts are all there (an incomplete split is left out)."""
    models: list[ModelFiles] = []
    splits: dict[tuple[str, int], dict[int, str]] = {}
    for path, size in sizes.items():
        if not path.lower().endswith(".gguf"):
            continue
        m = _SPLIT.match(path)
        if m is None:
            models.append(ModelFiles((path,), size))
        else:
            splits.setdefault((m["prefix"], int(m["count"])), {})[int(m["no"])] = path
    for (_, count), parts in splits.items():
        if sorted(parts) == list(range(1, count + 1)):
            paths = tuple(parts[i] for i in range(1, count + 1))
            models.append(ModelFiles(paths, sum(sizes[p] for p in paths)))
    return sorted(models, key=lambda m: m.first)


def models_in_dir(directory: Path) -> list[ModelFiles]:
    """Every model under ``directory`` (recursively), paths relative to it."""
    sizes = {}
    for p in directory.rglob("*"):
        if p.suffix.lower() == ".gguf" and p.is_file():
            sizes[p.relative_to(directory).as_posix()] = p.stat().st_size
    return group_files(sizes)
