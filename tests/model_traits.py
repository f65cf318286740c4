"""What the model-level tests may assume about the model under test (TEST_MODEL_PATH).

The suite runs on the bundled default model (`make test`) and on a second architecture
(`make test-arch2`). Tests that are about something other than chat templates give a
template-less model a generic one; tests of the determinism guarantee (README,
"Determinism") compare outputs with :func:`assert_same_or_near_tie`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from ferrousforge.inference.gguf import read_gguf
from ferrousforge.models.default_model import bundled_model_path, default_model_path

# A plain role-tagged format: for tests of something else on a model whose GGUF has no template.
GENERIC_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
# Logprob gap (nats) between the top two candidates under which a batch shape may flip a
# greedy choice on a model whose kernels round differently by batch shape (measured on
# Gemma 3 270M Q4_K_M: per-token logprobs move by up to 0.16, so a flip needs a gap < 0.33).
NEAR_TIE = 0.5
TOP_N = 8  # logprobs to request where a comparison may need them (ties can be many-way)


@cache
def has_chat_template() -> bool:
    return read_gguf(default_model_path()).chat_template is not None


def chat_template_for_tests() -> str | None:
    """None (the model's own template) if it has one, else the generic template."""
    return None if has_chat_template() else GENERIC_CHAT_TEMPLATE


@cache
def batch_invariant() -> bool:
    """Whether the README promises bit-identical logits across batch shapes: the default model."""
    return default_model_path().resolve() == bundled_model_path().resolve()


requires_chat_template = pytest.mark.skipif(
    not has_chat_template(),
    reason="the model's GGUF has no chat template: chat is refused with a clear error "
    "(test_chat_without_a_template_is_400)",
)


def _first_difference(a: list[int], b: list[int]) -> int | None:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), None)


def assert_same_or_near_tie(ref, other, label: str = "", exact: bool | None = None) -> None:
    """``other``'s greedy tokens equal ``ref``'s over their common length, or the first
    difference is a near-tie: in each run, the other run's token is among the top TOP_N
    candidates within NEAR_TIE of the best, and every token before agrees within NEAR_TIE.

    Both outputs need ``logprobs=TOP_N`` unless the comparison is exact (the default model).
    """
    a, b = ref.token_ids, other.token_ids
    d = _first_difference(a, b)
    if d is None:
        return
    exact = batch_invariant() if exact is None else exact
    assert not exact, f"{label}: outputs differ at token {d}: {a} != {b}"
    for i in range(d):
        drift = abs(ref.logprobs[i].logprob - other.logprobs[i].logprob)
        assert drift <= NEAR_TIE, f"{label}: token {i} logprob moved by {drift:.3f}"
    for x, y in ((ref.logprobs[d], other.logprobs[d]), (other.logprobs[d], ref.logprobs[d])):
        top = {t: lp for t, _, lp in x.top}
        assert y.token in top, f"{label}: token {d} ({y.token}) not in the other run's top"
        gap = max(top.values()) - top[y.token]
        assert gap <= NEAR_TIE, f"{label}: token {d} differs where the gap is {gap:.3f}"


@contextmanager
def loaded_model(path: Path, **config: Any) -> Iterator[tuple[Any, Any]]:
    """(backend, handle) of ``path`` loaded on the CPU with two threads and ``config``."""
    from ferrousforge.inference.backend import AcceleratorType, BackendConfig
    from ferrousforge.inference.backends.llama_cpp import LlamaCppBackend

    backend = LlamaCppBackend()
    lm = backend.load_model_sync(
        path, BackendConfig(num_threads=2, **config), AcceleratorType.Cpu()
    )
    try:
        yield backend, lm.handle
    finally:
        lm.close()
