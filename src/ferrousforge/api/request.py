"""Per-request generation options (sampling, stopping, grammar)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any

INT32_MAX = 2**31 - 1  # llama.cpp takes these counts as int32
MAX_WINDOW = 1 << 20  # penalty windows; the sampler also caps them at the context
MAX_SEED = 2**32 - 1  # llama.cpp seeds are uint32
MAX_STOP = 16  # stop strings per request
MAX_STOP_CHARS = 1024
MAX_LOGIT_BIAS = 1024  # logit_bias entries per request
MAX_BIAS = 100.0  # |bias| as OpenAI; the library also takes -inf (ban)
MAX_BREAKERS = 32  # each costs a scan of the vocabulary when the sampler is built
MAX_BREAKER_CHARS = 40  # llama.cpp's DRY cuts longer breakers at 40 characters
MAX_LOGPROBS = 20
MAX_DRAFT = 256  # draft tokens per step (the model's own setting caps it further)


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


@dataclass(frozen=True, slots=True)
class Bound:
    """A closed numeric range (open at the bottom when ``lo_open``), shared with the HTTP schema."""

    lo: float
    hi: float
    lo_open: bool = False

    def holds(self, v: float) -> bool:
        low_ok = v > self.lo if self.lo_open else v >= self.lo
        return low_ok and v <= self.hi and math.isfinite(v)

    @property
    def rule(self) -> str:
        return f"{'>' if self.lo_open else '>='} {_num(self.lo)} and <= {_num(self.hi)}"

    def field(self) -> dict[str, float]:
        """Keyword arguments for pydantic's Field (ge/gt, le)."""
        return {"gt" if self.lo_open else "ge": self.lo, "le": self.hi}


# Every numeric option's range: InferenceOptions.validate and the request schemas use these.
BOUNDS: dict[str, Bound] = {
    "max_tokens": Bound(0, INT32_MAX),
    "temperature": Bound(0, 2),
    "top_k": Bound(0, INT32_MAX),
    "top_p": Bound(0, 1),
    "min_p": Bound(0, 1),
    "typical_p": Bound(0, 1, lo_open=True),
    "repeat_penalty": Bound(0, 100, lo_open=True),
    "repeat_last_n": Bound(-1, MAX_WINDOW),
    "presence_penalty": Bound(-2, 2),
    "frequency_penalty": Bound(-2, 2),
    "seed": Bound(0, MAX_SEED),
    "min_tokens": Bound(0, INT32_MAX),
    "mirostat": Bound(0, 2),
    "mirostat_tau": Bound(0, 100, lo_open=True),
    "mirostat_eta": Bound(0, 1, lo_open=True),
    "dry_multiplier": Bound(0, 100),
    "dry_base": Bound(1, 100),
    "dry_allowed_length": Bound(0, MAX_WINDOW),
    "dry_penalty_last_n": Bound(-1, MAX_WINDOW),
    "xtc_probability": Bound(0, 1),
    "xtc_threshold": Bound(0, 1),
    "logprobs": Bound(0, MAX_LOGPROBS),
}
_INTS = {
    "max_tokens",
    "top_k",
    "repeat_last_n",
    "seed",
    "min_tokens",
    "mirostat",
    "dry_allowed_length",
    "dry_penalty_last_n",
    "logprobs",
}


def _check(cond: bool, name: str, rule: str) -> None:
    if not cond:
        raise ValueError(f"{name}: must be {rule}")


def _check_number(name: str, value: object) -> None:
    if value is None and name in ("max_tokens", "seed", "logprobs"):
        return
    bound = BOUNDS[name]
    if name in _INTS:
        _check(isinstance(value, int) and not isinstance(value, bool), name, "an integer")
    else:
        _check(isinstance(value, int | float) and not isinstance(value, bool), name, "a number")
    _check(bound.holds(value), name, bound.rule)  # type: ignore[arg-type]


def _check_strings(name: str, items: list[str], count: int, chars: int) -> None:
    _check(len(items) <= count, name, f"at most {count} strings")
    _check(
        all(isinstance(s, str) and 0 < len(s) <= chars for s in items),
        name,
        f"non-empty strings of at most {chars} characters",
    )


@dataclass(frozen=True, slots=True)
class GrammarTrigger:
    """Makes ``InferenceOptions.grammar`` lazy: free generation until one of ``patterns``
    (Python regular expressions) matches the generated text; the grammar then applies from
    the start of that match, which it must accept (tool calls under ``tool_choice="auto"``).

    Text between ``skip`` markers (a reasoning block: open, close) never triggers;
    ``inside_skip`` says the generation starts inside such a block.
    """

    patterns: tuple[str, ...]
    skip: tuple[str, str] | None = None
    inside_skip: bool = False


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
    grammar_trigger: GrammarTrigger | None = None  # lazy grammar: applies from a trigger on
    # Texts of special tokens that appear in the output when sampled (tool-call markers that
    # some vocabularies hold as control tokens, which would otherwise render as nothing).
    preserved_tokens: list[str] = field(default_factory=list)
    logprobs: int | None = None  # top-N log-probabilities per generated token
    echo_logprobs: bool = False  # also log-probabilities of the prompt tokens
    # False: evaluate the whole prompt, reusing no cached prefix (llama-server's cache_prompt)
    cache_prompt: bool = True
    # The slot to run in (llama-server's id_slot; None: any); it waits until that one is free
    slot: int | None = None
    # Speculative decoding: most tokens drafted per step (None: the model's setting; 0: off
    # for this request). Outputs are the same either way; only the speed differs.
    draft_max: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first invalid field (bounds: ``BOUNDS`` and MAX_*)."""
        for name in BOUNDS:
            _check_number(name, getattr(self, name))
        _check_strings("stop", self.stop, MAX_STOP, MAX_STOP_CHARS)
        _check(
            self.max_tokens is None or self.min_tokens <= self.max_tokens,
            "min_tokens",
            "<= max_tokens",
        )
        _check(
            len(self.logit_bias) <= MAX_LOGIT_BIAS,
            "logit_bias",
            f"at most {MAX_LOGIT_BIAS} entries",
        )
        _check(
            all(abs(b) <= MAX_BIAS or b == -math.inf for b in self.logit_bias.values()),
            "logit_bias",
            f"between -{MAX_BIAS:g} and {MAX_BIAS:g} (or -inf)",
        )
        _check(self.mirostat in (0, 1, 2), "mirostat", "0, 1 or 2")
        _check(
            self.draft_max is None
            or (type(self.draft_max) is int and 0 <= self.draft_max <= MAX_DRAFT),
            "draft_max",
            f"None or an integer >= 0 and <= {MAX_DRAFT}",
        )
        _check_strings(
            "dry_sequence_breakers", self.dry_sequence_breakers, MAX_BREAKERS, MAX_BREAKER_CHARS
        )
        _check(self.grammar is None or bool(self.grammar.strip()), "grammar", "a non-empty GBNF")
        _check(
            self.grammar_trigger is None
            or (self.grammar is not None and self.grammar_trigger.patterns),
            "grammar_trigger",
            "given with a grammar and at least one pattern",
        )

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    def replace(self, **changes: Any) -> InferenceOptions:
        return replace(self, **changes)

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in fields(cls)}
