"""Request bodies of Anthropic's Messages API (POST /v1/messages and its count_tokens).

Bounds are the chat route's (``schemas``). Metadata that does not change the output
(``metadata``, ``cache_control``, ``citations``, ``service_tier``...) is accepted and ignored;
what this server cannot honour (images, documents, server tools, MCP servers) is a 400 that
says so, never silently dropped.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
)

from ferrousforge.api.request import INT32_MAX, MAX_STOP
from ferrousforge.api.schemas import (
    MAX_MESSAGES,
    MAX_NAME_CHARS,
    MAX_TOOLS,
    KeepAlive,
    StopString,
    Text,
    _bounded,
)

# Anthropic block types with no meaning here, each with the reason it is refused.
_UNSUPPORTED_BLOCKS = {
    "image": "image input is not supported: this server has no vision",
    "document": "document content is not supported: this server has no vision",
    "search_result": "search_result content is not supported",
    "server_tool_use": "server tools are not supported",
    "web_search_tool_result": "server tools are not supported",
    "container_upload": "container uploads are not supported",
}


def _known_block(value: Any) -> Any:
    """A clear 400 for a block type we cannot serve, before the union lists its members."""
    kind = value.get("type") if isinstance(value, dict) else None
    if kind in _UNSUPPORTED_BLOCKS:
        raise ValueError(_UNSUPPORTED_BLOCKS[kind])
    return value


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


class TextBlock(_Body):
    type: Literal["text"]
    text: Text


class ToolUseBlock(_Body):
    """A call the assistant made earlier in the conversation."""

    type: Literal["tool_use"]
    id: str = Field(max_length=MAX_NAME_CHARS)
    name: str = Field(max_length=MAX_NAME_CHARS)
    input: dict[str, Any]


ResultPart = Annotated[TextBlock, BeforeValidator(_known_block)]


class ToolResultBlock(_Body):
    """What a tool returned, in the user turn after the call."""

    type: Literal["tool_result"]
    tool_use_id: str = Field(max_length=MAX_NAME_CHARS)
    content: Text | Annotated[list[ResultPart], Field(max_length=MAX_MESSAGES)] | None = None
    is_error: StrictBool = False


class ThinkingBlock(_Body):
    """Earlier reasoning handed back by a client; not shown to the model again."""

    type: Literal["thinking"]
    thinking: Text
    signature: str | None = None


class RedactedThinkingBlock(_Body):
    type: Literal["redacted_thinking"]
    data: Text


ContentBlock = Annotated[
    TextBlock | ToolUseBlock | ToolResultBlock | ThinkingBlock | RedactedThinkingBlock,
    Field(discriminator="type"),
    BeforeValidator(_known_block),
]


class MessageParam(_Body):
    role: Literal["user", "assistant"]
    content: Text | Annotated[list[ContentBlock], Field(max_length=MAX_MESSAGES)]


def _custom_tool(value: Any) -> Any:
    kind = value.get("type") if isinstance(value, dict) else None
    if kind not in (None, "custom"):
        raise ValueError(f"tool type {kind!r} is not supported: only custom tools (input_schema)")
    return value


class ToolDef(_Body):
    """A client tool: Anthropic's ``{"name", "description", "input_schema"}``."""

    name: str = Field(max_length=MAX_NAME_CHARS)
    description: Text | None = None
    input_schema: dict[str, Any]
    type: Literal["custom"] | None = None


class ToolChoiceAuto(_Body):
    type: Literal["auto"]
    disable_parallel_tool_use: StrictBool = False


class ToolChoiceAny(_Body):
    type: Literal["any"]
    disable_parallel_tool_use: StrictBool = False


class ToolChoiceTool(_Body):
    type: Literal["tool"]
    name: str = Field(max_length=MAX_NAME_CHARS)
    disable_parallel_tool_use: StrictBool = False


class ToolChoiceNone(_Body):
    type: Literal["none"]


ToolChoice = Annotated[
    ToolChoiceAuto | ToolChoiceAny | ToolChoiceTool | ToolChoiceNone, Field(discriminator="type")
]


class ThinkingEnabled(_Body):
    type: Literal["enabled"]
    budget_tokens: StrictInt = Field(ge=1, le=INT32_MAX)  # not enforced: within max_tokens


class ThinkingAdaptive(_Body):
    type: Literal["adaptive"]


class ThinkingDisabled(_Body):
    type: Literal["disabled"]


Thinking = Annotated[
    ThinkingEnabled | ThinkingAdaptive | ThinkingDisabled, Field(discriminator="type")
]


class JSONOutputFormat(_Body):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False, populate_by_name=True)

    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")


class OutputConfig(_Body):
    """Structured output (``format``, compiled to a grammar); ``effort`` is ignored."""

    format: JSONOutputFormat | None = None


def _no_mcp(value: Any) -> None:
    if value is not None:
        raise ValueError("MCP servers are not supported")


class CountTokensRequest(_Body):
    """POST /v1/messages/count_tokens: what the prompt of a Messages request holds."""

    # Optional, as llama-server has it: the server's (first) model.
    model: str | None = Field(None, max_length=MAX_NAME_CHARS)
    messages: Annotated[list[MessageParam], Field(min_length=1, max_length=MAX_MESSAGES)]
    system: Text | Annotated[list[TextBlock], Field(max_length=MAX_MESSAGES)] | None = None
    tools: (
        Annotated[
            list[Annotated[ToolDef, BeforeValidator(_custom_tool)]], Field(max_length=MAX_TOOLS)
        ]
        | None
    ) = None
    tool_choice: ToolChoice | None = None
    thinking: Thinking | None = None
    mcp_servers: Annotated[None, BeforeValidator(_no_mcp)] = None

    @property
    def thinks(self) -> bool:
        """Whether the reasoning the model writes comes back as thinking blocks."""
        return isinstance(self.thinking, ThinkingEnabled | ThinkingAdaptive)


class MessagesRequest(CountTokensRequest):
    """POST /v1/messages."""

    max_tokens: StrictInt = Field(ge=1, le=INT32_MAX)
    stop_sequences: Annotated[list[StopString], Field(max_length=MAX_STOP)] | None = None
    temperature: StrictFloat | None = _bounded("temperature")
    top_p: StrictFloat | None = _bounded("top_p")
    top_k: StrictInt | None = _bounded("top_k")
    stream: StrictBool = False
    keep_alive: KeepAlive = None  # Ollama's, as on the OpenAI routes
    metadata: dict[str, Any] | None = None
    output_config: OutputConfig | None = None
