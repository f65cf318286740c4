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


def fit_inputs(inputs: list[list[int]], max_tokens: int, truncate: bool) -> list[list[int]]:
    """Every input within ``max_tokens``: cut when ``truncate``, else a ValueError naming it."""
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
            ids = ids[:max_tokens]
        out.append(ids)
    return out


def finish_vectors(
    vectors: list[np.ndarray], normalize: bool = True, dimensions: int | None = None
) -> np.ndarray:
    """Stack, cut to ``dimensions`` and L2-normalise (a zero vector stays zero)."""
    mat = np.stack(vectors).astype(np.float32, copy=False)
    if dimensions is not None:
        if not 1 <= dimensions <= mat.shape[1]:
            raise ValueError(
                f"dimensions: must be between 1 and the model's {mat.shape[1]}, got {dimensions}"
            )
        mat = mat[:, :dimensions]
    if normalize:
        norms = np.linalg.norm(mat, axis=1, keepdims=True)
        mat = mat / np.where(norms > 0, norms, 1.0)
    return mat
