"""Request bodies of the OpenAI-compatible endpoints (pydantic), with llama.cpp's extras.

Every number and list has a bound (docs/server.md lists them; the numeric ones are
``request.BOUNDS``, shared with InferenceOptions). Integers and booleans are strict: ``true``
is not a token id. Harmless unknown fields (user, metadata, store...) are ignored, as OpenAI
clients send many; fields that would change the output but are not supported are declared
null-only, so they are a 400 rather than silently ignored. Sampling fields left unset take
InferenceOptions' defaults.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    model_validator,
)

from ferrousforge.api.request import (
    BOUNDS,
    INT32_MAX,
    MAX_BIAS,
    MAX_BREAKER_CHARS,
    MAX_BREAKERS,
    MAX_DRAFT,
    MAX_LOGIT_BIAS,
    MAX_LOGPROBS,
    MAX_STOP,
    MAX_STOP_CHARS,
)
from ferrousforge.inference.backends.llama_cpp.gbnf import MAX_GRAMMAR_CHARS
from ferrousforge.models.units import parse_duration

MAX_N = 16  # choices per prompt
MAX_TEXT_CHARS = 1 << 24  # any one text; --max-body-bytes usually binds first
MAX_PROMPTS = 256  # prompts in one /v1/completions request
MAX_PROMPT_TOKENS = 1 << 20  # token ids in one prompt (or one /detokenize call)
MAX_MESSAGES = 4096
MAX_TOOLS = 128
MAX_NAME_CHARS = 256

TokenId = Annotated[StrictInt, Field(ge=0, le=INT32_MAX)]
Text = Annotated[str, Field(max_length=MAX_TEXT_CHARS)]
NonEmptyText = Annotated[str, Field(min_length=1, max_length=MAX_TEXT_CHARS)]
TokenIds = Annotated[list[TokenId], Field(min_length=1, max_length=MAX_PROMPT_TOKENS)]
StopString = Annotated[str, Field(min_length=1, max_length=MAX_STOP_CHARS)]
Breaker = Annotated[str, Field(min_length=1, max_length=MAX_BREAKER_CHARS)]
Bias = Annotated[StrictFloat, Field(ge=-MAX_BIAS, le=MAX_BIAS)]


def _bounded(name: str) -> Any:
    """Field(None, ge/gt=..., le=...) from the option's shared Bound."""
    return Field(None, **BOUNDS[name].field())


def _unsupported(what: str) -> Any:
    """A type that accepts only null: anything else is a 400 naming the field, never ignored."""

    def reject(value: object) -> None:
        if value is not None:
            raise ValueError(f"{what} is not supported")

    return Annotated[None, BeforeValidator(reject), Field(description=f"not supported: {what}")]


NoAudio = _unsupported("audio output")
NoPrediction = _unsupported("predicted outputs")
NoWebSearch = _unsupported("web search")
NoSuffix = _unsupported("suffix (insertion)")


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


def _duration(value):
    parse_duration(value)  # a bad duration is a 400 before anything runs
    return value


# Ollama's: how long the model stays loaded once idle ("5m", seconds; 0: unload after this
# request; negative: keep it loaded). Read with models.units.parse_duration.
KeepAlive = Annotated[
    Annotated[StrictInt, Field(ge=-INT32_MAX, le=INT32_MAX)]
    | Annotated[StrictFloat, Field(ge=-INT32_MAX, le=INT32_MAX)]
    | Annotated[str, Field(max_length=32)]
    | None,
    AfterValidator(_duration),
]


class StreamOptions(_Body):
    include_usage: StrictBool = False


class SamplingFields(_Body):
    """Fields shared by completions and chat completions."""

    model: str | None = Field(None, max_length=MAX_NAME_CHARS)
    max_tokens: StrictInt | None = _bounded("max_tokens")
    max_completion_tokens: StrictInt | None = _bounded("max_tokens")
    temperature: StrictFloat | None = _bounded("temperature")
    top_p: StrictFloat | None = _bounded("top_p")
    n: StrictInt = Field(1, ge=1, le=MAX_N)
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    stop: StopString | Annotated[list[StopString], Field(max_length=MAX_STOP)] | None = None
    seed: StrictInt | None = _bounded("seed")
    presence_penalty: StrictFloat | None = _bounded("presence_penalty")
    frequency_penalty: StrictFloat | None = _bounded("frequency_penalty")
    logit_bias: (
        Annotated[
            dict[Annotated[str, Field(pattern=r"^[0-9]{1,10}$")], Bias],
            Field(max_length=MAX_LOGIT_BIAS),
        ]
        | None
    ) = None
    # llama.cpp extras
    top_k: StrictInt | None = _bounded("top_k")
    min_p: StrictFloat | None = _bounded("min_p")
    typical_p: StrictFloat | None = _bounded("typical_p")
    repeat_penalty: StrictFloat | None = _bounded("repeat_penalty")
    keep_alive: KeepAlive = None

    repeat_last_n: StrictInt | None = _bounded("repeat_last_n")
    min_tokens: StrictInt | None = _bounded("min_tokens")
    ignore_eos: StrictBool | None = None
    mirostat: StrictInt | None = _bounded("mirostat")
    mirostat_tau: StrictFloat | None = _bounded("mirostat_tau")
    mirostat_eta: StrictFloat | None = _bounded("mirostat_eta")
    grammar: Annotated[str, Field(min_length=1, max_length=MAX_GRAMMAR_CHARS)] | None = None
    dry_multiplier: StrictFloat | None = _bounded("dry_multiplier")
    dry_base: StrictFloat | None = _bounded("dry_base")
    dry_allowed_length: StrictInt | None = _bounded("dry_allowed_length")
    dry_penalty_last_n: StrictInt | None = _bounded("dry_penalty_last_n")
    dry_sequence_breakers: Annotated[list[Breaker], Field(max_length=MAX_BREAKERS)] | None = None
    xtc_probability: StrictFloat | None = _bounded("xtc_probability")
    xtc_threshold: StrictFloat | None = _bounded("xtc_threshold")
    # llama-server's name: speculative decoding's draft length for this request (0: off)
    draft_max: StrictInt | None = Field(None, ge=0, le=MAX_DRAFT, alias="speculative.n_max")

    @property
    def keep_alive_s(self) -> float | None:
        return parse_duration(self.keep_alive)


class CompletionRequest(SamplingFields):
    """POST /v1/completions."""

    prompt: (
        NonEmptyText
        | Annotated[list[NonEmptyText], Field(min_length=1, max_length=MAX_PROMPTS)]
        | TokenIds
        | Annotated[list[TokenIds], Field(min_length=1, max_length=MAX_PROMPTS)]
    )
    echo: StrictBool = False
    logprobs: StrictInt | None = _bounded("logprobs")
    best_of: StrictInt | None = Field(None, ge=1, le=MAX_N, description="must equal n")
    suffix: NoSuffix = None


class JSONSchemaSpec(_Body):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False, populate_by_name=True)

    name: str = Field("response", max_length=MAX_NAME_CHARS)
    description: str | None = Field(None, max_length=MAX_TEXT_CHARS)
    schema_: dict[str, Any] = Field(alias="schema")
    strict: StrictBool | None = None


class TextFormat(_Body):
    type: Literal["text"]


class JSONObjectFormat(_Body):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False, populate_by_name=True)

    type: Literal["json_object"]
    schema_: dict[str, Any] | None = Field(None, alias="schema")  # llama-server's shorthand


class JSONSchemaFormat(_Body):
    type: Literal["json_schema"]
    json_schema: JSONSchemaSpec


ResponseFormat = Annotated[
    TextFormat | JSONObjectFormat | JSONSchemaFormat, Field(discriminator="type")
]


class TextPart(_Body):
    """The only content part supported (no images or audio)."""

    type: Literal["text"]
    text: Text


class ChatMessage(BaseModel):
    # Extra keys (tool_calls, tool_call_id...) reach the chat template as they are.
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "tool", "developer", "function"]
    content: Text | Annotated[list[TextPart], Field(max_length=MAX_MESSAGES)] | None = None
    name: str | None = Field(None, max_length=MAX_NAME_CHARS)


Messages = Annotated[list[ChatMessage], Field(min_length=1, max_length=MAX_MESSAGES)]


class ChatCompletionRequest(SamplingFields):
    """POST /v1/chat/completions."""

    # OpenAI and llama-server refuse top_logprobs without logprobs: true; the schema says so.
    model_config = ConfigDict(
        extra="ignore",
        allow_inf_nan=False,
        json_schema_extra={
            "if": {
                "required": ["top_logprobs"],
                "properties": {"top_logprobs": {"type": "integer"}},
            },
            "then": {"required": ["logprobs"], "properties": {"logprobs": {"const": True}}},
        },
    )

    @model_validator(mode="after")
    def _check_together(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs: requires logprobs to be true")
        if self.tools is not None and self.functions is not None:
            raise ValueError("functions: give tools or the legacy functions, not both")
        if self.function_call is not None and self.functions is None:
            raise ValueError("function_call: needs functions")
        if self.tool_choice not in (None, "none", "auto") and not self.tools:
            raise ValueError("tool_choice: a tool choice other than none or auto needs tools")
        return self

    messages: Messages
    logprobs: StrictBool = False
    top_logprobs: StrictInt | None = Field(None, ge=0, le=MAX_LOGPROBS)
    response_format: ResponseFormat | None = None
    # llama-server's shorthand for response_format {"type": "json_object", "schema": ...}.
    json_schema: dict[str, Any] | None = None
    tools: Annotated[list[dict[str, Any]], Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: (
        Literal["none", "auto", "required"] | Annotated[dict[str, Any], Field(max_length=4)] | None
    ) = None
    parallel_tool_calls: StrictBool = True
    # Legacy function calling (one call per answer), mapped onto tools.
    functions: Annotated[list[dict[str, Any]], Field(max_length=MAX_TOOLS)] | None = None
    function_call: (
        Literal["none", "auto"] | Annotated[dict[str, Any], Field(max_length=4)] | None
    ) = None
    # Extra variables for the chat template, e.g. {"enable_thinking": false}.
    chat_template_kwargs: Annotated[dict[str, Any], Field(max_length=64)] | None = None
    # llama-server's: "none" leaves <think>...</think> in the content.
    reasoning_format: Literal["auto", "deepseek", "none"] | None = None
    # Template controls (llama-server, vLLM): end the prompt with the assistant's header, or
    # inside the last message to continue it (the default when the last message is the
    # assistant's: a prefill).
    add_generation_prompt: StrictBool = True
    continue_final_message: StrictBool | None = None
    # llama-server's: the answer carries "__verbose" (the prompt as the model read it, the raw
    # output); unset: on when the server logs at debug level (--verbose).
    verbose: StrictBool | None = None
    # Output-changing OpenAI fields this server cannot honour: a 400, never ignored.
    audio: NoAudio = None
    modalities: list[Literal["text"]] | None = Field(None, max_length=1)
    prediction: NoPrediction = None
    web_search_options: NoWebSearch = None


class TokenizeRequest(_Body):
    """POST /tokenize: llama-server's ``content`` or vLLM's ``prompt``, or chat ``messages``.

    With none of them the answer is no tokens, as llama-server's. Whether to add the model's
    BOS is llama-server's ``add_special`` or vLLM's ``add_special_tokens`` (lm-eval sends it).
    """

    model: str | None = Field(None, max_length=MAX_NAME_CHARS)
    content: Text | None = None
    prompt: Text | None = None
    messages: Messages | None = None
    add_special: StrictBool = True
    add_special_tokens: StrictBool | None = None
    with_pieces: StrictBool = False

    @property
    def adds_special(self) -> bool:
        """vLLM's name wins where a client sends it; else llama-server's (default true)."""
        return self.add_special if self.add_special_tokens is None else self.add_special_tokens


class DetokenizeRequest(_Body):
    """POST /detokenize: token ids back to text."""

    model: str | None = Field(None, max_length=MAX_NAME_CHARS)
    tokens: Annotated[list[TokenId], Field(max_length=MAX_PROMPT_TOKENS)]


class ModelActionRequest(_Body):
    """POST /models/load and /models/unload: which model."""

    model: str = Field(max_length=MAX_NAME_CHARS)
