"""Tool-call formats: how each model family writes a call, found from its chat template.

Every format writes a call as a JSON object ``{"name": ..., "arguments": {...}}`` (Llama 3
says ``parameters``); they differ in what surrounds it:

- ``hermes`` (Hermes, Qwen 2.5, Qwen 3): ``<tool_call>{...}</tool_call>`` per call.
- ``llama3`` (Llama 3.1-3.3): the bare object after the header, optionally after
  ``<|python_tag|>``; several calls separated by ``;``.
- ``mistral``: ``[TOOL_CALLS]`` then a JSON array of calls.
- ``generic`` (templates that know nothing of tools): the whole answer is one JSON object,
  ``{"tool_calls": [...]}`` or ``{"response": "..."}``; the tools are described in a system
  message.

The grammars here force every call to name an offered tool and to carry arguments valid for
its ``parameters`` schema (as far as GBNF can express it: ``json_schema``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ferrousforge.api.json_schema import checked_grammar, gbnf_literal, schema_rules
from ferrousforge.chat.reasoning import ReasoningMarkers
from ferrousforge.chat.tools import Tool, ToolChoice
from ferrousforge.errors import GrammarError

FORMAT_NAMES = ("hermes", "llama3", "mistral", "generic")


@dataclass(frozen=True, slots=True)
class ToolFormat:
    """What surrounds the call objects in one family's output."""

    name: str
    start: str | None = None  # marker before each call (per_call) or before all of them
    end: str | None = None  # marker after each call
    per_call: bool = False  # start/end wrap every call (hermes) rather than the list
    array: bool = False  # the calls are a JSON array after ``start`` (mistral)
    separator: str | None = None  # between bare calls (llama3: ";")
    args_key: str = "arguments"
    start_optional: bool = False  # llama3's <|python_tag|> may be left out
    # Llama 3.x takes one call per turn (its template refuses several): parallel_tool_calls
    # cannot ask for more, or a small model repeats the same call until max_tokens.
    single_call: bool = False

    @property
    def markers(self) -> tuple[str, ...]:
        """Marker texts that must reach the output even when they are special tokens."""
        return tuple(m for m in (self.start, self.end) if m)


FORMATS: dict[str, ToolFormat] = {
    "hermes": ToolFormat("hermes", "<tool_call>", "</tool_call>", per_call=True),
    "llama3": ToolFormat(
        "llama3",
        "<|python_tag|>",
        separator=";",
        args_key="parameters",
        start_optional=True,
        single_call=True,
    ),
    "mistral": ToolFormat("mistral", "[TOOL_CALLS]", array=True),
    "generic": ToolFormat("generic"),
}


def detect_format(template: str | None) -> ToolFormat:
    """The format a chat template's source teaches its model (``generic`` if none)."""
    src = template or ""
    if "<tool_call>" in src:
        return FORMATS["hermes"]
    if "[TOOL_CALLS]" in src:
        return FORMATS["mistral"]
    if "<|python_tag|>" in src or ("<|start_header_id|>" in src and "ipython" in src):
        return FORMATS["llama3"]
    return FORMATS["generic"]


def format_named(name: str | None, template: str | None) -> ToolFormat:
    """A configured format name (or ``auto``/None: detect from the template)."""
    if name in (None, "auto"):
        return detect_format(template)
    if name not in FORMATS:
        raise ValueError(f"tool_format: must be auto or one of {', '.join(FORMAT_NAMES)}")
    return FORMATS[name]


@dataclass(frozen=True, slots=True)
class ToolConstraint:
    """How generation is constrained for a tool request.

    ``lazy``: the grammar applies from the first match of a ``triggers`` regex (a Python
    pattern over the generated text) outside the reasoning spans; otherwise from the first
    token. ``preserved``: marker texts rendered in the output even if they are special tokens.
    """

    grammar: str
    lazy: bool
    triggers: tuple[str, ...] = ()
    preserved: tuple[str, ...] = ()


_WS = "ws ::= [ \\t\\n]{0,4}"


def _char_class(ch: str) -> str:
    return "\\" + ch if ch in "]\\^-[" else ch


def _reasoning_rules(marks: ReasoningMarkers, *, already_open: bool) -> tuple[str, list[str]]:
    """An expression for an optional reasoning block (or the rest of an open one)."""
    close = marks.close
    # Reasoning text may not contain the close marker's first two characters together
    # except as the close marker itself: enough to find where it ends.
    c0, c1 = _char_class(close[0]), _char_class(close[1]) if len(close) > 1 else ""
    body = f"[^{c0}]" + (f" | [{c0}] [^{c1}]" if c1 else "")
    rules = [f"think-body ::= ({body})*", f"think-close ::= {gbnf_literal(close)} ws"]
    if already_open:
        return "think-body think-close", rules
    rules.append(f"think ::= {gbnf_literal(marks.open)} think-body think-close")
    return "think?", rules


def _call_rules(tools: list[Tool], keys: tuple[str, ...], *, response: bool) -> list[str]:
    """``call`` ::= one JSON call object of any of ``tools`` (arguments under any of ``keys``);
    with ``response``, also ``response-text`` ::= a JSON string (the generic format's answer)."""
    lines, alts, primitives = [], [], {}
    key_expr = " | ".join(gbnf_literal(f'"{k}"') for k in keys)
    schemas = [(f"t{i}-", t.name, t.parameters) for i, t in enumerate(tools)]
    if response:
        schemas.append(("response-", None, {"type": "string"}))
    for prefix, name, schema in schemas:
        try:
            expr, rules = schema_rules(schema, prefix)
        except GrammarError as e:
            why = str(e).removeprefix("response_format: ")
            raise GrammarError(f"tools: parameters of '{name}': {why}") from e
        for rule, body in rules.items():
            if rule.startswith(prefix):
                lines.append(f"{rule} ::= {body}")
            else:  # the shared JSON primitives, the same body in every schema
                primitives[rule] = body
        if name is None:
            lines.append(f"response-text ::= {expr}")
            continue
        quoted = gbnf_literal(f'"{name}"')
        lines.append(
            f'call{len(alts)} ::= "{{" space "\\"name\\"" space ":" space {quoted} space '
            f'"," space ({key_expr}) space ":" space {expr} "}}" space'
        )
        alts.append(f"call{len(alts)}")
    lines.append("call ::= " + " | ".join(alts))
    primitives.setdefault("space", r'| " " | "\n" [ \t]{0,20}')
    lines += [f"{rule} ::= {body}" for rule, body in primitives.items()]
    return lines


def _formatted_calls(fmt: ToolFormat, parallel: bool) -> str:
    """``calls`` ::= the format's own syntax around one or more ``call``s."""
    start = gbnf_literal(fmt.start) if fmt.start else None
    if fmt.per_call:
        one = f"{start} ws call ws {gbnf_literal(fmt.end)}" if fmt.end else f"{start} ws call"
        return f"calls ::= {one} (ws {one})*" if parallel else f"calls ::= {one}"
    if fmt.array:
        more = ' (ws "," ws call)*' if parallel else ""
        return f'calls ::= {start} ws "[" ws call{more} ws "]"'
    sep = gbnf_literal(fmt.separator or ";")
    more = f" (ws {sep} ws call)*" if parallel else ""
    head = (f"({start} ws)? " if fmt.start_optional else f"{start} ws ") if start else ""
    return f"calls ::= {head}call{more}"


def _bare_calls(parallel: bool) -> str:
    """Calls written as bare JSON objects, without the format's markers (small models do)."""
    more = ' (ws ("," | ";")? ws call)*' if parallel else ""
    return f'bare ::= call{more} ws ("```" ws)?'


def build_constraint(
    fmt: ToolFormat,
    tools: list[Tool],
    choice: ToolChoice,
    *,
    parallel: bool,
    reasoning: ReasoningMarkers | None = None,
    in_reasoning: bool = False,
) -> ToolConstraint | None:
    """The grammar for a tool request, or None when no call may be made (``none``).

    ``required`` and a named function constrain from the first token (after an optional
    reasoning block) and always write the format's own markers; ``auto`` is lazy: free text
    until a marker, or a bare JSON object naming an offered tool, starts a call.
    """
    if choice.mode == "none" or not tools:
        return None
    parallel = parallel and not fmt.single_call
    offered = [t for t in tools if choice.name is None or t.name == choice.name]
    keys = (fmt.args_key,) if choice.forces_call else ("arguments", "parameters")
    generic = fmt.name == "generic"
    lines = _call_rules(offered, keys, response=generic and not choice.forces_call)
    lines.append(_WS)
    if generic:
        root = _generic_root(parallel, allow_text=not choice.forces_call)
        prefix = ""
        if reasoning is not None:
            prefix, think = _reasoning_rules(reasoning, already_open=in_reasoning)
            lines += think
        lines.insert(0, f"root ::= {prefix} {root}".replace("  ", " "))
        return ToolConstraint(_checked(lines), lazy=False)
    lines.append(_formatted_calls(fmt, parallel))
    if choice.forces_call:
        prefix = ""
        if reasoning is not None:
            prefix, think = _reasoning_rules(reasoning, already_open=in_reasoning)
            lines += think
        lines.insert(0, f"root ::= {prefix} calls".replace("  ", " "))
        return ToolConstraint(_checked(lines), lazy=False, preserved=fmt.markers)
    lines.append(_bare_calls(parallel))
    lines.insert(0, "root ::= calls | bare")
    triggers = [re.escape(fmt.start)] if fmt.start else []
    names = "|".join(re.escape(t.name) for t in offered)
    triggers.append(r'\{\s*"name"\s*:\s*"(?:' + names + ')"')
    return ToolConstraint(
        _checked(lines), lazy=True, triggers=tuple(triggers), preserved=fmt.markers
    )


def _generic_root(parallel: bool, *, allow_text: bool) -> str:
    more = ' ("," space call)*' if parallel else ""
    calls = (
        f'"{{" space "\\"tool_calls\\"" space ":" space "[" space call{more} "]" space "}}" space'
    )
    if not allow_text:
        return f"({calls})"
    text = '"{" space "\\"response\\"" space ":" space response-text "}" space'
    return f"({calls} | {text})"


def _checked(lines: list[str]) -> str:
    return checked_grammar(lines, "tools: the tools' grammar")
