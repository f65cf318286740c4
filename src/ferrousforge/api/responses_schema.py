"""Request body of POST /v1/responses (OpenAI's Responses API), with llama.cpp's extras.

Unknown fields are a 400 naming them. Fields that could change the output but are not
supported (built-in tools' options, reasoning effort, background mode...) accept only null or
their default, so a client that relies on them hears about it. A few are accepted and ignored
because ignoring them changes nothing a client sees (docs/server.md lists them).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    StrictInt,
    Tag,
)

from ferrousforge.api.request import BOUNDS
from ferrousforge.api.schemas import (
    MAX_MESSAGES,
    MAX_NAME_CHARS,
    MAX_TOOLS,
    SamplingFields,
    Text,
)

MAX_METADATA = 16  # OpenAI's limit: 16 pairs, keys up to 64 characters, values up to 512
MAX_ITEMS = MAX_MESSAGES
# Harmless to ignore: we never return encrypted reasoning, so asking for it changes nothing.
IGNORED_INCLUDES = ("reasoning.encrypted_content",)


def _only(allowed: tuple[Any, ...], what: str) -> Any:
    """A field that accepts only ``allowed`` values (null always): else a 400 naming it."""

    def check(value: object) -> object:
        if value is not None and value not in allowed:
            raise ValueError(f"{what} is not supported")
        return value

    return Annotated[Any, BeforeValidator(check), Field(description=f"not supported: {what}")]


Verbosity = _only(("medium",), "text.verbosity other than 'medium'")
IgnoredInclude = _only(IGNORED_INCLUDES, "including anything but 'reasoning.encrypted_content'")
NoAutoTruncation = _only(("disabled",), "truncation 'auto'")
NoReasoning = _only((), "reasoning (effort and summaries)")
NoBackground = _only((False,), "background mode")
NoTopLogprobs = _only((0,), "top_logprobs")
NoMaxToolCalls = _only((), "max_tool_calls")
NoPrompt = _only((), "prompt (stored prompt templates)")
NoConversation = _only((), "conversation (use previous_response_id)")
NoContextManagement = _only((), "context_management")
NoMaxTokens = _only((), "max_tokens (the Responses API calls it max_output_tokens)")
NoMaxCompletionTokens = _only((), "max_completion_tokens (use max_output_tokens)")
OneOutput = _only((1,), "n (a response has one output)")


class _Item(BaseModel):
    # Items replayed from an earlier response carry ids, statuses and the like: harmless.
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


class TextPart(_Item):
    type: Literal["input_text", "output_text"]
    text: Text


class RefusalPart(_Item):
    type: Literal["refusal"]
    refusal: Text


Part = Annotated[TextPart | RefusalPart, Field(discriminator="type")]
Parts = Annotated[list[Part], Field(max_length=MAX_MESSAGES)]


class MessageItem(_Item):
    """A message: OpenAI's EasyInputMessage (no ``type``) or a replayed output message."""

    type: Literal["message"] = "message"
    role: Literal["user", "system", "developer", "assistant"]
    content: Text | Parts


class FunctionCallItem(_Item):
    """A call the model made (replayed so the conversation holds it)."""

    type: Literal["function_call"]
    call_id: str = Field(min_length=1, max_length=MAX_NAME_CHARS)
    name: str = Field(min_length=1, max_length=MAX_NAME_CHARS)
    arguments: Text


class FunctionCallOutputItem(_Item):
    """The client's result of a call, matched to it by ``call_id``."""

    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1, max_length=MAX_NAME_CHARS)
    output: Text | Parts


class ReasoningItem(_Item):
    """Reasoning replayed from an earlier output: accepted, and left out of the prompt (chat
    templates drop earlier turns' reasoning too)."""

    type: Literal["reasoning"]


_ITEM_TAGS = {
    "message": "Message",
    "function_call": "FunctionCall",
    "function_call_output": "FunctionCallOutput",
    "reasoning": "Reasoning",
}


def _item_tag(value: Any) -> str | None:
    kind = value.get("type", "message") if isinstance(value, dict) else getattr(value, "type", None)
    return _ITEM_TAGS.get(kind) if isinstance(kind, str) else None


InputItem = Annotated[
    Annotated[MessageItem, Tag("Message")]
    | Annotated[FunctionCallItem, Tag("FunctionCall")]
    | Annotated[FunctionCallOutputItem, Tag("FunctionCallOutput")]
    | Annotated[ReasoningItem, Tag("Reasoning")],
    Discriminator(
        _item_tag,
        custom_error_type="invalid_item",
        custom_error_message="an input item's type must be 'message', 'function_call', "
        "'function_call_output' or 'reasoning' (other item types are not supported)",
    ),
]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, populate_by_name=True)


class FormatText(_Body):
    type: Literal["text"]


class FormatJSONObject(_Body):
    type: Literal["json_object"]


class FormatJSONSchema(_Body):
    type: Literal["json_schema"]
    name: str = Field("response", max_length=MAX_NAME_CHARS)
    description: str | None = Field(None, max_length=1 << 16)
    schema_: dict[str, Any] = Field(alias="schema")
    strict: StrictBool | None = None


class TextConfig(_Body):
    format: (
        Annotated[FormatText | FormatJSONObject | FormatJSONSchema, Field(discriminator="type")]
        | None
    ) = None
    verbosity: Verbosity = None


class StreamOptions(_Body):
    include_obfuscation: StrictBool = False  # padding against side channels: none is sent


class ResponsesRequest(SamplingFields):
    """POST /v1/responses."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, populate_by_name=True)

    input: Text | Annotated[list[InputItem], Field(max_length=MAX_ITEMS)] | None = None
    instructions: Text | None = None
    previous_response_id: str | None = Field(None, max_length=MAX_NAME_CHARS)
    tools: Annotated[list[dict[str, Any]], Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: (
        Literal["none", "auto", "required"] | Annotated[dict[str, Any], Field(max_length=4)] | None
    ) = None
    parallel_tool_calls: StrictBool = True
    text: TextConfig | None = None
    max_output_tokens: StrictInt | None = Field(None, **BOUNDS["max_tokens"].field())
    store: StrictBool = True
    stream_options: StreamOptions | None = None  # type: ignore[assignment]
    # Echoed back, otherwise ignored (they only label or route the request at OpenAI).
    metadata: (
        Annotated[
            dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]],
            Field(max_length=MAX_METADATA),
        ]
        | None
    ) = None
    user: str | None = Field(None, max_length=MAX_NAME_CHARS)
    safety_identifier: str | None = Field(None, max_length=MAX_NAME_CHARS)
    prompt_cache_key: str | None = Field(None, max_length=MAX_NAME_CHARS)  # our cache is automatic
    service_tier: Literal["auto", "default", "flex", "priority"] | None = None
    include: Annotated[list[IgnoredInclude], Field(max_length=8)] | None = None
    truncation: NoAutoTruncation = None
    # llama.cpp's chat extras, as in /v1/chat/completions.
    chat_template_kwargs: Annotated[dict[str, Any], Field(max_length=64)] | None = None
    reasoning_format: Literal["auto", "deepseek", "none"] | None = None
    # Output-changing fields this server cannot honour: a 400, never ignored.
    reasoning: NoReasoning = None
    background: NoBackground = None
    top_logprobs: NoTopLogprobs = None
    max_tool_calls: NoMaxToolCalls = None
    prompt: NoPrompt = None
    conversation: NoConversation = None
    context_management: NoContextManagement = None
    # Chat Completions' names for what the Responses API calls otherwise.
    max_tokens: NoMaxTokens = None  # type: ignore[assignment]
    max_completion_tokens: NoMaxCompletionTokens = None  # type: ignore[assignment]
    n: OneOutput = None  # type: ignore[assignment]
