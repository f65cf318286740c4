"""plan_chat: one chat request -> prompt, generation options and an output parser.

The conversion every chat surface shares (the OpenAI route, the library's
``BackendInput.Chat``): render the template with the tools, pick the grammar for the tool
choice, and parse the generated text back into content, reasoning and tool calls.
"""

from __future__ import annotations

from collections.abc import Callable
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
from ferrousforge.errors import ChatTemplateError
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


def render_continued(render: Callable[[list[dict[str, Any]], bool], str], messages) -> str:
    """The conversation rendered up to the end of its last message's text (what the template
    writes after it, such as an end-of-turn marker, is left out)."""
    last = messages[-1] if messages else {}
    text = last.get("content")
    if not isinstance(text, str) or not text:
        # Nothing to continue: the answer starts where a new turn of that role would.
        return render(messages[:-1], True)
    full = render(messages, False)
    at = full.rfind(text)
    if at < 0:
        raise ChatTemplateError(
            "continue_final_message: the chat template rewrites the last message, so the "
            "prompt cannot end inside it"
        )
    return full[: at + len(text)]


def _uses_tools(messages: list[dict[str, Any]]) -> bool:
    return any(m.get("tool_calls") or m.get("role") == "tool" for m in messages)


def developer_as_system(template: str | None, messages: list[dict[str, Any]]) -> list[dict]:
    """OpenAI's "developer" role (what the Responses API and Codex-style agents send) as
    "system", which templates know, as llama.cpp maps it; harmony templates (GPT-OSS, with
    ``<|channel|>``) have a developer role of their own and keep it."""
    if template and "<|channel|>" in template:
        return messages
    return [{**m, "role": "system"} if m.get("role") == "developer" else m for m in messages]


def plan_chat(
    template: str | None,
    messages: list[dict[str, Any]],
    spec: ChatSpec,
    *,
    bos_token: str,
    eos_token: str,
    add_generation_prompt: bool = True,
    continue_final_message: bool = False,
) -> ChatPlan:
    """Render ``messages`` with ``template`` for ``spec`` (ValueError / GrammarError /
    ChatTemplateError for what cannot be served). ``continue_final_message``: the prompt ends
    inside the last (assistant) message, so that the answer continues it."""
    kwargs = checked_kwargs(spec.template_kwargs)
    choice = spec.tool_choice
    fmt = format_named(spec.tool_format, template)
    messages = developer_as_system(template, messages)

    def render(msgs: list[dict[str, Any]], add_generation: bool) -> str:
        if spec.tools or _uses_tools(msgs):
            return render_with_tools(
                template,
                msgs,
                tools=spec.tools,
                choice=choice,
                fmt=fmt,
                bos_token=bos_token,
                eos_token=eos_token,
                add_generation_prompt=add_generation,
                template_kwargs=kwargs,
            )
        return render_chat(
            template,
            msgs,
            bos_token=bos_token,
            eos_token=eos_token,
            add_generation_prompt=add_generation,
            **kwargs,
        )

    if continue_final_message:
        prompt = render_continued(render, messages)
    else:
        prompt = render(messages, add_generation_prompt)
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
