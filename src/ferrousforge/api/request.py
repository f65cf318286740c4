"""Per-request generation options (sampling, stopping, grammar)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any


def _check(cond: bool, name: str, rule: str) -> None:
    if not cond:
        raise ValueError(f"{name}: must be {rule}")


@dataclass(slots=True)
class InferenceOptions:
    """How to generate: sampling parameters, limits and stop conditions.

    Every field is optional. ``temperature=0`` is greedy decoding. Invalid
    values raise ``ValueError`` naming the field.
    """

    max_tokens: int | None = 256  # None: until end of generation or the context is full
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    typical_p: float = 1.0
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    min_tokens: int = 0
    ignore_eos: bool = False
    logit_bias: dict[int, float] = field(default_factory=dict)
    mirostat: int = 0  # 0 off, 1 Mirostat, 2 Mirostat 2.0
    mirostat_tau: float = 5.0
    mirostat_eta: float = 0.1
    dry_multiplier: float = 0.0  # 0 disables DRY
    dry_base: float = 1.75
    dry_allowed_length: int = 2
    dry_penalty_last_n: int = -1  # -1: the whole context
    dry_sequence_breakers: list[str] = field(default_factory=lambda: ["\n", ":", '"', "*"])
    xtc_probability: float = 0.0  # 0 disables XTC
    xtc_threshold: float = 0.1
    grammar: str | None = None  # GBNF, root rule "root"
    logprobs: int | None = None  # top-N log-probabilities per generated token
    echo_logprobs: bool = False  # also log-probabilities of the prompt tokens

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first invalid field."""
        _check(self.max_tokens is None or self.max_tokens >= 0, "max_tokens", ">= 0")
        _check(math.isfinite(self.temperature) and self.temperature >= 0, "temperature", ">= 0")
        _check(self.top_k >= 0, "top_k", ">= 0 (0 disables)")
        _check(0.0 <= self.top_p <= 1.0, "top_p", "between 0 and 1")
        _check(0.0 <= self.min_p <= 1.0, "min_p", "between 0 and 1")
        _check(0.0 < self.typical_p <= 1.0, "typical_p", "in (0, 1]")
        _check(
            self.repeat_penalty > 0 and math.isfinite(self.repeat_penalty), "repeat_penalty", "> 0"
        )
        _check(self.repeat_last_n >= -1, "repeat_last_n", ">= -1")
        _check(-2.0 <= self.presence_penalty <= 2.0, "presence_penalty", "between -2 and 2")
        _check(-2.0 <= self.frequency_penalty <= 2.0, "frequency_penalty", "between -2 and 2")
        _check(self.seed is None or self.seed >= 0, "seed", ">= 0")
        _check(all(isinstance(s, str) and s for s in self.stop), "stop", "non-empty strings")
        _check(len(self.stop) <= 16, "stop", "at most 16 strings")
        _check(self.min_tokens >= 0, "min_tokens", ">= 0")
        _check(
            self.max_tokens is None or self.min_tokens <= self.max_tokens,
            "min_tokens",
            "<= max_tokens",
        )
        _check(
            all(math.isfinite(b) or b == -math.inf for b in self.logit_bias.values()),
            "logit_bias",
            "finite numbers or -inf",
        )
        _check(self.mirostat in (0, 1, 2), "mirostat", "0, 1 or 2")
        _check(self.mirostat_tau > 0, "mirostat_tau", "> 0")
        _check(self.mirostat_eta > 0, "mirostat_eta", "> 0")
        _check(self.dry_multiplier >= 0, "dry_multiplier", ">= 0")
        _check(self.dry_base >= 1.0, "dry_base", ">= 1")
        _check(self.dry_allowed_length >= 0, "dry_allowed_length", ">= 0")
        _check(self.dry_penalty_last_n >= -1, "dry_penalty_last_n", ">= -1")
        _check(0.0 <= self.xtc_probability <= 1.0, "xtc_probability", "between 0 and 1")
        _check(0.0 <= self.xtc_threshold <= 1.0, "xtc_threshold", "between 0 and 1")
        _check(self.logprobs is None or 0 <= self.logprobs <= 20, "logprobs", "between 0 and 20")
        _check(self.grammar is None or bool(self.grammar.strip()), "grammar", "a non-empty GBNF")

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    def replace(self, **changes: Any) -> InferenceOptions:
        return replace(self, **changes)

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in fields(cls)}
