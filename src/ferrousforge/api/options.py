"""From an OpenAI request body to InferenceOptions: defaults, the max_tokens ceiling, extras."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ferrousforge.api.request import InferenceOptions
from ferrousforge.api.schemas import SamplingFields

# Request fields that map one-to-one onto InferenceOptions when the client sets them.
_SAME_NAME = (
    "temperature",
    "top_p",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "top_k",
    "min_p",
    "typical_p",
    "repeat_penalty",
    "repeat_last_n",
    "min_tokens",
    "ignore_eos",
    "mirostat",
    "mirostat_tau",
    "mirostat_eta",
    "grammar",
    "dry_multiplier",
    "dry_base",
    "dry_allowed_length",
    "dry_penalty_last_n",
    "dry_sequence_breakers",
    "xtc_probability",
    "xtc_threshold",
    "draft_max",
)


@dataclass(slots=True)
class GenerationPlan:
    """The options to submit."""

    options: InferenceOptions


def _logit_bias(bias: dict[str, float] | None) -> dict[int, float]:
    out: dict[int, float] = {}
    for k, v in (bias or {}).items():
        try:
            out[int(k)] = float(v)
        except ValueError:
            raise ValueError(f"logit_bias: keys must be token ids, got {k!r}") from None
    return out


def seq_context(lm) -> int:
    """Tokens one request may hold (prompt plus output): the engine's per-sequence limit."""
    return lm.n_ctx_seq


def max_tokens_for(
    req: SamplingFields, *, default: int | None, prompt_len: int, n_ctx: int, ceiling: int
) -> int:
    """The client's max_tokens, capped at the ceiling; unset means as much as fits."""
    asked = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    if asked is None:
        asked = default
    room = n_ctx - prompt_len
    if ceiling < 0:  # no ceiling (llama-server's --n-predict -1): as much as the context holds
        ceiling = max(room, 1)  # no room: the engine says overflow
    if asked is None:
        return min(ceiling, room) if room > 0 else ceiling  # no room: the engine says overflow
    return min(asked, ceiling)


def plan_generation(
    req: SamplingFields,
    *,
    max_tokens: int,
    grammar: str | None = None,
    logprobs: int | None = None,
    echo_logprobs: bool = False,
    defaults: dict[str, Any] | None = None,
) -> GenerationPlan:
    """InferenceOptions for a request; ValueError names the first bad field.

    ``defaults`` are the server's sampling settings, for the fields the request leaves out.
    """
    kwargs = dict(defaults or {})
    kwargs.update(
        {name: getattr(req, name) for name in _SAME_NAME if getattr(req, name) is not None}
    )
    if req.stop is not None:
        kwargs["stop"] = [req.stop] if isinstance(req.stop, str) else list(req.stop)
    if req.logit_bias:
        kwargs["logit_bias"] = _logit_bias(req.logit_bias)
    if grammar is not None:
        if req.grammar is not None:
            raise ValueError("grammar: cannot be combined with response_format")
        kwargs["grammar"] = grammar
    if max_tokens == 0:  # prompt only (e.g. echo with logprobs): nothing is sampled
        kwargs["min_tokens"] = 0
    options = InferenceOptions(
        max_tokens=max_tokens,
        logprobs=logprobs,
        echo_logprobs=echo_logprobs,
        **kwargs,
    )
    return GenerationPlan(options)
