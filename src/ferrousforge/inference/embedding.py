"""Embedding inputs and outputs: token ids per input, then vectors as clients expect them.

The engine pools raw vectors; what surrounds it is here, shared by the library call
(``LlamaCppBackend.embed``) and the HTTP routes: an input longer than one embedding decode
is refused or cut (``truncate``), vectors are L2-normalised by default (OpenAI's are unit
length, so cosine similarity is a dot product), and ``dimensions`` keeps the first d
components and normalises again (Matryoshka-style models are trained for exactly that).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(slots=True)
class EmbeddingResult:
    """One vector per input (rows of ``vectors``), and the tokens they took."""

    vectors: np.ndarray  # float32, (n_inputs, dim)
    prompt_tokens: int
    token_counts: list[int]


def fit_inputs(
    inputs: list[list[int]], max_tokens: int, truncate: bool, tails: list[int] | None = None
) -> list[list[int]]:
    """Every input within ``max_tokens``: cut when ``truncate``, else a ValueError naming it.

    ``tails[i]`` tokens at the end of input i are kept when it is cut (the [SEP] or EOS the
    tokenizer appended: an encoder was trained on inputs that end with it, and Hugging
    Face's truncation keeps it too); the text before them is what goes.
    """
    out = []
    for i, ids in enumerate(inputs):
        if not ids:
            raise ValueError(f"input: item {i} is empty (nothing to embed)")
        if len(ids) > max_tokens:
            if not truncate:
                raise ValueError(
                    f"input: item {i} has {len(ids)} tokens, more than the {max_tokens} one "
                    "embedding can hold (send 'truncate': true to cut it)"
                )
            tail = min(tails[i] if tails else 0, max_tokens - 1)
            ids = ids[: max_tokens - tail] + (ids[len(ids) - tail :] if tail else [])
        out.append(ids)
    return out


def scale_rows(mat: np.ndarray, norm: int) -> np.ndarray:
    """llama-server's ``embd_normalize`` on each row: -1 none, 0 max absolute scaled to the
    int16 range, 1 taxicab, 2 Euclidean (L2), p > 2 the p-norm. A zero row stays zero."""
    if norm < -1:
        raise ValueError(f"embd_normalize: must be -1 or more, got {norm}")
    if norm == -1:
        return mat
    x = np.abs(mat.astype(np.float64))
    if norm == 0:
        sums = x.max(axis=1, keepdims=True) / 32760.0
    else:
        sums = (x**norm).sum(axis=1, keepdims=True) ** (1.0 / norm)
    return (mat / np.where(sums > 0, sums, np.inf)).astype(np.float32)


def finish_vectors(
    vectors: list[np.ndarray],
    normalize: bool = True,
    dimensions: int | None = None,
    norm: int = 2,
) -> np.ndarray:
    """Stack, cut to ``dimensions`` and normalise (``norm``: see scale_rows) unless not
    ``normalize``."""
    mat = np.stack(vectors).astype(np.float32, copy=False)
    if dimensions is not None:
        if not 1 <= dimensions <= mat.shape[1]:
            raise ValueError(
                f"dimensions: must be between 1 and the model's {mat.shape[1]}, got {dimensions}"
            )
        mat = mat[:, :dimensions]
    return scale_rows(mat, norm) if normalize else mat
