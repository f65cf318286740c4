"""Rendering a conversation with tools through the model's chat template.

Templates are given what Hugging Face's ``apply_chat_template`` gives them (``tools``, assistant
``tool_calls`` with object arguments, ``tool`` messages), so a model sees its tools the way its
authors wrote. What a template cannot show is polyfilled into plain messages: which
capabilities a template has is found by rendering sentinel conversations, never from a model's
or a template's name.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

from ferrousforge.chat.formats import ToolFormat, detect_format
from ferrousforge.chat.tools import Tool, ToolChoice
from ferrousforge.errors import ChatTemplateError
from ferrousforge.inference.backends.llama_cpp.chat_template import render_chat

log = logging.getLogger(__name__)

RESERVED_KWARGS = frozenset(
    {"messages", "tools", "bos_token", "eos_token", "add_generation_prompt"}
)


class JsonObject(dict):
    """A dict that prints as JSON: ``{{ arguments }}`` and ``{{ arguments | tojson }}`` agree."""

    __slots__ = ()

    def __str__(self) -> str:
        return json.dumps(self, ensure_ascii=False)


class JsonArray(list):
    """A list that prints as JSON (arrays nested in call arguments)."""

    __slots__ = ()

    def __str__(self) -> str:
        return json.dumps(self, ensure_ascii=False)


def _printable(value: Any) -> Any:
    if isinstance(value, dict):
        return JsonObject((k, _printable(v)) for k, v in value.items())
    if isinstance(value, list):
        return JsonArray(_printable(v) for v in value)
    return value


def parsed_arguments(arguments: Any) -> Any:
    """OpenAI's arguments string as an object templates can index, print or ``tojson``;
    anything that is not a JSON object text stays as it came."""
    try:
        value = json.loads(arguments) if isinstance(arguments, str) else arguments
        return _printable(value) if isinstance(value, dict) else arguments
    except (ValueError, RecursionError):  # not JSON, or nested too deep to walk
        return arguments


# ---- capabilities ------------------------------------------------------------------------

_SYSTEM = "ffprobe-system-text"
_USER = "ffprobe-user-text"
_TOOL = "ffprobe_tool"
_ARG = "ffprobe_arg"
_VALUE = "ffprobe-value"
_RESULT = "ffprobe-result-text"
_ROLE = "ffprobe_role"


@dataclass(frozen=True, slots=True)
class TemplateCaps:
    """What a chat template can show: system messages, tool definitions, assistant tool calls
    and tool results. ``short_call_ids``: it shows calls only when their ids are 9 letters
    and digits (it refuses OpenAI's ``call_...`` ids), so ids are shortened for it."""

    system: bool
    tools: bool
    tool_calls: bool
    tool_responses: bool
    short_call_ids: bool = False


def _probe(template: str, messages: list[dict[str, Any]], **extra: Any) -> str | None:
    try:
        return render_chat(
            template, messages, bos_token="", eos_token="", add_generation_prompt=False, **extra
        )
    except Exception:  # a probe that fails means "not supported", whatever the failure
        return None


_USER_TURN = {"role": "user", "content": _USER}


def _call_turns(call_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """An assistant turn calling the sentinel tool, and that call's result."""
    call = {
        "id": call_id,
        "type": "function",
        "function": {"name": _TOOL, "arguments": JsonObject({_ARG: _VALUE})},
    }
    calling = {"role": "assistant", "content": "", "tool_calls": [call]}
    return calling, {"role": "tool", "tool_call_id": call_id, "name": _TOOL, "content": _RESULT}


def _shows_calls(template: str, call_id: str) -> tuple[bool, bool]:
    """(shows the call, shows its result) with calls of id ``call_id``."""
    calling, result = _call_turns(call_id)
    out = _probe(template, [_USER_TURN, calling])
    calls = out is not None and _TOOL in out and _VALUE in out
    out = _probe(template, [_USER_TURN, calling, result])
    if out is None or _RESULT not in out:
        return calls, False
    # A template that prints every role alike shows a "tool" turn the model never learnt.
    echo = _probe(template, [_USER_TURN, calling, {**result, "role": _ROLE}])
    return calls, echo is None or echo.replace(_ROLE, "tool") != out


@lru_cache(maxsize=32)
def template_caps(template: str) -> TemplateCaps:
    """Probe ``template`` with sentinel conversations (cached by its text)."""
    tool = {
        "type": "function",
        "function": {
            "name": _TOOL,
            "description": "probe",
            "parameters": {"type": "object", "properties": {_ARG: {"type": "string"}}},
        },
    }
    out = _probe(template, [{"role": "system", "content": _SYSTEM}, _USER_TURN])
    system = out is not None and _SYSTEM in out
    out = _probe(template, [_USER_TURN], tools=[tool])
    tools = out is not None and _TOOL in out
    calls, responses = _shows_calls(template, "call_ffprobe0123456789abcdef")
    short = False
    if not (calls or responses):
        calls, responses = _shows_calls(template, short_call_id("call_ffprobe"))
        short = calls or responses
    return TemplateCaps(system, tools, calls, responses, short)


def short_call_id(call_id: str) -> str:
    """A 9-character alphanumeric id standing for ``call_id`` (the same one every time)."""
    return hashlib.sha256(call_id.encode()).hexdigest()[:9]


# ---- rendering ---------------------------------------------------------------------------


def render_with_tools(
    template: str | None,
    messages: list[dict[str, Any]],
    *,
    tools: list[Tool],
    choice: ToolChoice,
    fmt: ToolFormat,
    bos_token: str,
    eos_token: str,
    add_generation_prompt: bool = True,
    template_kwargs: dict[str, Any] | None = None,
) -> str:
    """Render an OpenAI conversation (tools, tool calls, tool results) with ``template``.

    Tools go to the template as ``tools`` when it shows them and teaches ``fmt`` (with
    ``tool_choice`` none they are neither passed nor described); otherwise a system message
    describes them and how to call them in ``fmt``. Calls and results the template cannot show
    become plain text turns. ``template_kwargs`` (``chat_template_kwargs``) are extra template
    variables. Raises ChatTemplateError when the template fails, ValueError on bad kwargs.
    """
    extra = checked_kwargs(template_kwargs)
    if not template:  # render_chat explains the missing template
        return render_chat(template, messages, bos_token=bos_token, eos_token=eos_token)
    caps = template_caps(template)
    if fmt.name == "generic" or detect_format(template).name != fmt.name:
        # Its own tool prompt would teach another syntax than the grammar forces. Results
        # go as text too: templates attach them to the native call they answer (Gemma 4
        # dropped a result that followed a call written as text).
        caps = replace(caps, tools=False, tool_calls=False, tool_responses=False)
    offered = tools if choice.mode != "none" else []
    if offered and caps.tools:
        extra["tools"] = [t.as_openai() for t in offered]
    first_error = None
    for shown in _fallbacks(caps, messages):
        msgs = _conversation(messages, shown, offered, choice, fmt)
        try:
            return render_chat(
                template,
                msgs,
                bos_token=bos_token,
                eos_token=eos_token,
                add_generation_prompt=add_generation_prompt,
                **extra,
            )
        except ChatTemplateError as e:
            first_error = first_error or e
            log.info("chat template refused the conversation (%s); retrying with less", e)
    assert first_error is not None
    raise first_error


def _fallbacks(caps: TemplateCaps, messages: list[dict[str, Any]]) -> list[TemplateCaps]:
    """``caps``, then less and less of the history shown natively: probes pass one call, but a
    template may still refuse a conversation's (several calls at once, say)."""
    out = [caps]
    if caps.tool_calls and any(m.get("tool_calls") for m in messages):
        out.append(replace(caps, tool_calls=False))
    if caps.tool_responses and any(m.get("role") == "tool" for m in messages):
        out.append(replace(out[-1], tool_responses=False))
    return out


def _conversation(
    messages: list[dict[str, Any]],
    caps: TemplateCaps,
    offered: list[Tool],
    choice: ToolChoice,
    fmt: ToolFormat,
) -> list[dict[str, Any]]:
    """The messages to render: what ``caps`` lacks written as plain turns."""
    msgs = [_prepared(m, short_ids=caps.short_call_ids) for m in messages]
    names = _call_names(msgs)
    if not caps.tool_calls:
        msgs = [_calls_as_text(m, fmt) for m in msgs]
    if not caps.tool_responses:
        msgs = _responses_as_user(msgs, names)
    if offered and not caps.tools:
        msgs = _with_system_text(msgs, describe_tools(offered, choice, fmt))
    if not caps.system:
        msgs = _system_into_user(msgs)
    return msgs


def checked_kwargs(kwargs: dict[str, Any] | None) -> dict[str, Any]:
    """``chat_template_kwargs`` as template variables (ValueError for a reserved or invalid
    name)."""
    if kwargs is None:
        return {}
    if not isinstance(kwargs, dict):
        raise ValueError("chat_template_kwargs: must be an object")
    for key in kwargs:
        if not isinstance(key, str) or not key.isidentifier():
            raise ValueError(f"chat_template_kwargs: {key!r} is not a valid variable name")
        if key in RESERVED_KWARGS:
            raise ValueError(f"chat_template_kwargs: '{key}' is set by the server")
    return dict(kwargs)


def _text(content: Any) -> str:
    """Message content as text (None -> "", text parts joined)."""
    if content is None:
        return ""
    if isinstance(content, list):
        return "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)
    return content if isinstance(content, str) else str(content)


def _prepared(message: dict[str, Any], *, short_ids: bool) -> dict[str, Any]:
    """A copy with content "" for None, call arguments as objects, ids shortened if asked."""
    m = dict(message)
    if m.get("content") is None:
        m["content"] = ""
    calls = m.get("tool_calls")
    if isinstance(calls, list):
        m["tool_calls"] = [_prepared_call(c, short_ids) for c in calls]
    if short_ids and isinstance(m.get("tool_call_id"), str):
        m["tool_call_id"] = short_call_id(m["tool_call_id"])
    return m


def _prepared_call(call: Any, short_ids: bool) -> Any:
    if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
        return call
    fn = dict(call["function"])
    fn["arguments"] = parsed_arguments(fn.get("arguments", "{}"))
    call = {**call, "function": fn}
    if short_ids and isinstance(call.get("id"), str):
        call["id"] = short_call_id(call["id"])
    return call


def _call_names(messages: list[dict[str, Any]]) -> dict[str, str]:
    """tool_call_id -> function name, from the assistant turns."""
    names = {}
    for m in messages:
        for c in m.get("tool_calls") or ():
            fn = c.get("function") if isinstance(c, dict) else None
            if isinstance(fn, dict) and isinstance(c.get("id"), str):
                names[c["id"]] = fn.get("name")
    return names


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def calls_text(calls: list[Any], fmt: ToolFormat) -> str:
    """Calls written the way ``fmt`` tells the model to write them."""
    objs = []
    for c in calls:
        fn = c.get("function", {}) if isinstance(c, dict) else {}
        args = parsed_arguments(fn.get("arguments", {}))
        objs.append({"name": fn.get("name"), fmt.args_key: args})
    if fmt.name == "generic":
        return _json({"tool_calls": objs})
    if fmt.per_call:
        return "\n".join(f"{fmt.start}\n{_json(o)}\n{fmt.end or ''}".rstrip() for o in objs)
    if fmt.array:
        return f"{fmt.start or ''}{_json(objs)}"
    sep = f"{fmt.separator or ';'} "
    return sep.join(_json(o) for o in objs)


def _calls_as_text(message: dict[str, Any], fmt: ToolFormat) -> dict[str, Any]:
    calls = message.get("tool_calls")
    if message.get("role") != "assistant" or not calls:
        return message
    m = {k: v for k, v in message.items() if k != "tool_calls"}
    content = _text(m.get("content"))
    text = calls_text(calls, fmt)
    m["content"] = f"{content}\n{text}" if content.strip() else text
    return m


def _responses_as_user(
    messages: list[dict[str, Any]], names: dict[str, str]
) -> list[dict[str, Any]]:
    """``tool`` turns -> one ``user`` turn of ``{"tool_response": ...}`` lines per run of them
    (a user turn right after such a run joins it: strict templates want roles to alternate)."""
    out: list[dict[str, Any]] = []
    merging = False
    for m in messages:
        if m.get("role") == "tool":
            call_id = m.get("tool_call_id")
            response: dict[str, Any] = {}
            name = names.get(call_id) if isinstance(call_id, str) else None
            if name or m.get("name"):
                response["name"] = name or m.get("name")
            if call_id is not None:
                response["tool_call_id"] = call_id
            response["content"] = _text(m.get("content"))
            text = _json({"tool_response": response})
        elif m.get("role") == "user" and merging:
            text = _text(m.get("content"))
        else:
            out.append(m)
            merging = False
            continue
        if merging:
            out[-1] = {**out[-1], "content": f"{out[-1]['content']}\n{text}"}
        else:
            out.append({"role": "user", "content": text})
        merging = True
    return out


def _with_system_text(messages: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    """``text`` after the first system message's text, or as a new first system message."""
    if messages and messages[0].get("role") == "system":
        own = _text(messages[0].get("content"))
        joined = f"{own}\n\n{text}" if own.strip() else text
        return [{**messages[0], "content": joined}, *messages[1:]]
    return [{"role": "system", "content": text}, *messages]


def _system_into_user(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """System text prepended to the next user turn (templates that refuse a system role)."""
    out: list[dict[str, Any]] = []
    pending: list[str] = []
    for m in messages:
        if m.get("role") == "system":
            pending.append(_text(m.get("content")))
            continue
        if m.get("role") == "user" and pending:
            m = {**m, "content": "\n\n".join([*pending, _text(m.get("content"))])}
            pending = []
        out.append(m)
    if pending:
        out.append({"role": "user", "content": "\n\n".join(pending)})
    return out


# ---- tool descriptions (templates that do not render tools) -----------------------------


def describe_tools(tools: list[Tool], choice: ToolChoice, fmt: ToolFormat) -> str:
    """A system text listing ``tools`` and how to call them in ``fmt``'s syntax."""
    listing = "\n".join(_json(t.as_openai()) for t in tools)
    head = f"You can call these tools (JSON definitions, one per line):\n{listing}\n\n"
    if fmt.name == "generic":
        return head + _generic_rules(choice)
    how = {
        "hermes": (
            "To call a tool, write its name and arguments as a JSON object inside "
            "<tool_call></tool_call> tags, one pair of tags per call:\n"
            '<tool_call>\n{"name": "<tool name>", "arguments": {<arguments>}}\n</tool_call>'
        ),
        "llama3": (
            'To call a tool, answer with a JSON object {"name": "<tool name>", "parameters": '
            "{<arguments>}}, optionally after <|python_tag|>; separate several calls with ;"
        ),
        "mistral": (
            "To call tools, write [TOOL_CALLS] followed by a JSON array of calls:\n"
            '[TOOL_CALLS][{"name": "<tool name>", "arguments": {<arguments>}}]'
        ),
    }.get(fmt.name, f"To call a tool, write {fmt.start or ''} and a JSON object")
    return head + how + "\n" + _choice_rule(choice)


def _choice_rule(choice: ToolChoice) -> str:
    if choice.name is not None:
        return f"You must call the tool {choice.name}."
    if choice.forces_call:
        return "You must call at least one tool."
    return "If no tool is needed, answer normally."


def _generic_rules(choice: ToolChoice) -> str:
    calls = '{"tool_calls": [{"name": "<tool name>", "arguments": {<arguments>}}]}'
    if choice.forces_call:
        return f"Answer ONLY with a JSON object that calls tools:\n{calls}\n" + _choice_rule(choice)
    return (
        "Answer ONLY with a JSON object, either to call tools:\n"
        f"{calls}\n"
        'or to answer the user directly:\n{"response": "<your answer>"}'
    )
