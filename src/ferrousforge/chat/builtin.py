"""Chat without Jinja: llama.cpp's built-in templates, as llama-server renders with --no-jinja.

The built-in formats are C++ code that knows roles and text only, so whatever needs the
template itself (tools, a forced tool choice, template variables) is refused with an error that
names the field, as llama-server refuses tools without --jinja; the answer is read as plain
content (no tool calls, no reasoning markers).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from ferrousforge.chat.plan import ChatPlan, ChatSpec, render_continued
from ferrousforge.inference.backends.llama_cpp.builtin_template import apply_builtin_template
from ferrousforge.inference.backends.llama_cpp.chat_template import validate_messages

NO_JINJA = "the server renders chat without Jinja (--no-jinja): start it with --jinja"


def plan_builtin(
    lib: ModuleType,
    template: str,
    messages: list[dict[str, Any]],
    spec: ChatSpec,
    *,
    add_generation_prompt: bool = True,
    continue_final_message: bool = False,
) -> ChatPlan:
    """Render ``messages`` with the built-in format that ``template`` (a built-in name such as
    ``chatml`` or ``llama3``, or a Jinja source) names or resembles."""
    if spec.tools:
        raise ValueError(f"tools: {NO_JINJA} to use tools")
    if spec.choice is not None and spec.choice.mode == "required":
        raise ValueError(f"tool_choice: {NO_JINJA} to use tools")
    if spec.template_kwargs:
        raise ValueError(f"chat_template_kwargs: {NO_JINJA} to pass template variables")
    validate_messages(messages)

    def render(msgs: list[dict[str, Any]], add_generation: bool) -> str:
        return apply_builtin_template(lib, template, msgs, add_generation)

    if continue_final_message:
        prompt = render_continued(render, messages)
    else:
        prompt = render(messages, add_generation_prompt)
    return ChatPlan(
        prompt=prompt,
        tools=[],
        fmt=None,
        parallel=False,
        constraint=None,
        reasoning=None,
        in_reasoning=False,
    )
