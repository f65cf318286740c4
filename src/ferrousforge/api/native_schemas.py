"""Request bodies of llama-server's native generation routes: POST /completion and /infill.

The sampling fields are the OpenAI routes' (``SamplingFields``), under llama.cpp's names;
llama-server's own fields are added here. A llama-server field that would change the output
but that this server cannot honour is a 400 naming it when set to anything but its default.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, StrictBool, StrictInt, StrictStr, model_validator

from ferrousforge.api.request import INT32_MAX, MAX_LOGPROBS, MAX_SEED
from ferrousforge.api.schemas import MAX_TEXT_CHARS, SamplingFields, _Body

MAX_RESPONSE_FIELDS = 64
MAX_EXTRA_CHUNKS = 256

# llama-server fields with no counterpart here, and the values that mean "off" (their
# defaults): any other value is refused rather than silently ignored.
UNSUPPORTED: dict[str, tuple[Any, ...]] = {
    "n_keep": (0, -1),
    "n_discard": (0,),
    "n_indent": (0,),
    "n_cmpl": (1,),
    "n_cache_reuse": (0,),
    "t_max_prompt_ms": (-1,),
    "t_max_predict_ms": (-1,),
    "min_keep": (0,),
    "top_n_sigma": (-1, -1.0, 0, 0.0),
    "dynatemp_range": (0, 0.0),
    "adaptive_target": (-1, -1.0),
    "lora": ((), []),
    "grammar_lazy": (False,),
    "grammar_triggers": ((), []),
    "return_progress": (False,),
    "backend_sampling": (False,),
    "post_sampling_probs": (False,),
    "verbose": (False,),
    "multimodal_data": ((), []),
}


def _refuse_unsupported(data: Any) -> Any:
    if isinstance(data, dict):
        for name, allowed in UNSUPPORTED.items():
            if name in data and data[name] is not None and data[name] not in allowed:
                if isinstance(data[name], bool) != isinstance(allowed[0], bool):
                    raise ValueError(f"{name}: not supported")
                raise ValueError(f"{name}: not supported (only {allowed[0]!r}, the default)")
    return data


class NativeCompletionRequest(SamplingFields):
    """POST /completion: llama-server's native completion request."""

    # A string, token ids, a list mixing both (one prompt), {"prompt_string": ...}, or a
    # list of those (one result each): see native.read_native_prompts.
    prompt: str | list[Any] | dict[str, Any] = Field(default="")
    n_predict: StrictInt | None = Field(None, ge=-1, le=INT32_MAX)
    # -1: a random seed (llama.cpp's default)
    seed: StrictInt | None = Field(None, ge=-1, le=MAX_SEED)
    # [[token id or text, bias or false], ...] or {"id or text": bias or false}
    logit_bias: list[Any] | dict[str, Any] | None = None  # type: ignore[assignment]
    cache_prompt: StrictBool = True
    return_tokens: StrictBool = False
    n_probs: StrictInt = Field(0, ge=0, le=MAX_LOGPROBS)
    timings_per_token: StrictBool = False
    response_fields: Annotated[list[StrictStr], Field(max_length=MAX_RESPONSE_FIELDS)] | None = None
    samplers: list[StrictStr] | StrictStr | None = None
    id_slot: StrictInt = Field(-1, ge=-1, le=INT32_MAX, description="-1: any slot")
    json_schema: dict[str, Any] | StrictBool | None = None
    preserved_tokens: Annotated[list[StrictStr], Field(max_length=256)] | None = None
    dynatemp_exponent: float | None = None  # only used with dynatemp_range, which is refused
    adaptive_decay: float | None = None  # only used with adaptive_target, which is refused

    @model_validator(mode="before")
    @classmethod
    def _refuse(cls, data: Any) -> Any:
        return _refuse_unsupported(data)

    @model_validator(mode="after")
    def _check(self) -> NativeCompletionRequest:
        if self.n != 1:
            raise ValueError("n: /completion makes one completion per prompt; send a list")
        if self.json_schema is not None and self.grammar is not None:
            raise ValueError("json_schema: give a grammar or a json_schema, not both")
        return self


class ExtraChunk(_Body):
    """One file of /infill's ``input_extra``."""

    text: Annotated[StrictStr, Field(max_length=MAX_TEXT_CHARS)]
    filename: Annotated[StrictStr, Field(max_length=1024)] = "tmp"


class InfillRequest(NativeCompletionRequest):
    """POST /infill: fill in the middle between ``input_prefix`` and ``input_suffix``."""

    input_prefix: Annotated[StrictStr, Field(max_length=MAX_TEXT_CHARS)]
    input_suffix: Annotated[StrictStr, Field(max_length=MAX_TEXT_CHARS)]
    input_extra: Annotated[list[ExtraChunk], Field(max_length=MAX_EXTRA_CHUNKS)] = Field(
        default_factory=list
    )
    prompt: Annotated[StrictStr, Field(max_length=MAX_TEXT_CHARS)] = ""  # type: ignore[assignment]
