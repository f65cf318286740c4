"""Reasoning blocks: which markers a model thinks between, and whether the prompt opened one."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ReasoningMarkers:
    open: str
    close: str


THINK = ReasoningMarkers("<think>", "</think>")
# Other families' markers, recognised when the chat template uses them.
KNOWN = (
    THINK,
    ReasoningMarkers("<seed:think>", "</seed:think>"),
    ReasoningMarkers("[THINK]", "[/THINK]"),
    ReasoningMarkers("<|START_THINKING|>", "<|END_THINKING|>"),
    ReasoningMarkers("<|begin_of_thought|>", "<|end_of_thought|>"),
)


def markers_for(template: str | None) -> ReasoningMarkers:
    """The template's own reasoning markers, else ``<think>``/``</think>``.

    ``<think>`` is the default because distilled reasoning models write it whatever their
    template says; a model that never thinks simply never opens a block.
    """
    src = template or ""
    for m in KNOWN[1:]:
        if m.open in src and m.close in src:
            return m
    return THINK


def template_thinks(template: str | None) -> bool:
    """Whether the template itself knows a reasoning block (grammars then allow one)."""
    src = template or ""
    return any(m.open in src and m.close in src for m in KNOWN)


def opened_in_prompt(prompt: str, marks: ReasoningMarkers) -> bool:
    """The generation prompt ends inside a reasoning block (templates that write ``<think>``
    themselves, so the model's output starts with the reasoning text)."""
    tail = prompt.rstrip()
    if not tail.endswith(marks.open):
        return False
    return tail.rfind(marks.open) > tail.rfind(marks.close)
