"""plan_chat: one chat request -> prompt, generation options and an output parser.

The conversion every chat surface shares (the OpenAI route, the library's
``BackendInput.Chat``): render the template with the tools, pick the grammar for the tool
choice, and parse the generated text back into content, reasoning and tool calls.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ferrousforge.api.request import GrammarTrigger, InferenceOptions
from ferrousforge.chat.formats import ToolConstraint, ToolFormat, build_constraint, format_named
from ferrousforge.chat.parser import ChatParser, ParsedMessage, parse_message
from ferrousforge.chat.reasoning import (
    ReasoningMarkers,
    markers_for,
    opened_in_prompt,
    template_thinks,
)
from ferrousforge.chat.rendering import checked_kwargs, render_with_tools
from ferrousforge.chat.tools import Tool, ToolChoice
from ferrousforge.inference.backends.llama_cpp.chat_template import render_chat


@dataclass(slots=True)
class ChatSpec:
    """What a chat request asks beyond its messages (all optional)."""

    tools: list[Tool] = field(default_factory=list)
    choice: ToolChoice | None = None  # None: auto with tools, none without
    parallel: bool = True
    template_kwargs: dict[str, Any] | None = None
    reasoning: bool = True  # False: reasoning stays in the content (reasoning_format none)
    tool_format: str | None = None  # hermes, llama3, mistral, generic; None: from template

    @property
    def tool_choice(self) -> ToolChoice:
        if self.choice is not None:
            return self.choice
        return ToolChoice("auto" if self.tools else "none")


@dataclass(slots=True)
class ChatPlan:
    """A rendered chat request: its prompt, its constraint and how to read its output."""

    prompt: str
    tools: list[Tool]
    fmt: ToolFormat | None  # None: no tool calls are parsed (tool_choice none)
    parallel: bool
    constraint: ToolConstraint | None
    reasoning: ReasoningMarkers | None
    in_reasoning: bool

    def options(self, base: InferenceOptions) -> InferenceOptions:
        """``base`` with the tool grammar (lazy under auto) and the markers to keep."""
        c = self.constraint
        preserved = list(c.preserved) if c else []
        if self.reasoning is not None:
            preserved += [self.reasoning.open, self.reasoning.close]
        if c is None:
            return base.replace(preserved_tokens=preserved)
        trigger = None
        if c.lazy:
            skip = (self.reasoning.open, self.reasoning.close) if self.reasoning else None
            trigger = GrammarTrigger(c.triggers, skip, self.in_reasoning)
        return base.replace(grammar=c.grammar, grammar_trigger=trigger, preserved_tokens=preserved)

    def parser(self) -> ChatParser:
        return ChatParser(
            self.fmt,
            self.tools,
            reasoning=self.reasoning,
            in_reasoning=self.in_reasoning,
            parallel=self.parallel,
        )

    def parse(self, text: str) -> ParsedMessage:
        return parse_message(
            text,
            self.fmt,
            self.tools,
            reasoning=self.reasoning,
            in_reasoning=self.in_reasoning,
            parallel=self.parallel,
        )


def _uses_tools(messages: list[dict[str, Any]]) -> bool:
    return any(m.get("tool_calls") or m.get("role") == "tool" for m in messages)


def plan_chat(
    template: str | None,
    messages: list[dict[str, Any]],
    spec: ChatSpec,
    *,
    bos_token: str,
    eos_token: str,
    add_generation_prompt: bool = True,
) -> ChatPlan:
    """Render ``messages`` with ``template`` for ``spec`` (ValueError / GrammarError /
    ChatTemplateError for what cannot be served)."""
    kwargs = checked_kwargs(spec.template_kwargs)
    choice = spec.tool_choice
    fmt = format_named(spec.tool_format, template)
    if spec.tools or _uses_tools(messages):
        prompt = render_with_tools(
            template,
            messages,
            tools=spec.tools,
            choice=choice,
            fmt=fmt,
            bos_token=bos_token,
            eos_token=eos_token,
            add_generation_prompt=add_generation_prompt,
            template_kwargs=kwargs,
        )
    else:
        prompt = render_chat(
            template,
            messages,
            bos_token=bos_token,
            eos_token=eos_token,
            add_generation_prompt=add_generation_prompt,
            **kwargs,
        )
    marks = markers_for(template) if spec.reasoning else None
    in_reasoning = marks is not None and opened_in_prompt(prompt, marks)
    calls = bool(spec.tools) and choice.mode != "none"
    constraint = None
    if calls:
        # A grammar from the first token must leave room for the reasoning block the
        # template asks for; a lazy one never sees it (the trigger skips reasoning).
        thinks = marks is not None and (in_reasoning or template_thinks(template))
        constraint = build_constraint(
            fmt,
            spec.tools,
            choice,
            parallel=spec.parallel,
            reasoning=marks if thinks else None,
            in_reasoning=in_reasoning,
        )
    return ChatPlan(
        prompt=prompt,
        tools=spec.tools,
        fmt=fmt if calls else None,
        parallel=spec.parallel and not fmt.single_call,
        constraint=constraint,
        reasoning=marks,
        in_reasoning=in_reasoning,
    )
