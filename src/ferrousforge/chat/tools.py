"""Tools offered to the model, the caller's tool choice, and the calls that come back."""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal

import jsonschema
import regex

MAX_SCHEMA_NESTING = 128  # objects and lists in parameters or arguments: jsonschema recurses
MAX_TOOL_NAME = 64  # OpenAI's limit; names also become grammar literals and regex alternatives
_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


@dataclass(frozen=True, slots=True)
class Tool:
    """A function the model may call: OpenAI's ``{"type": "function", "function": {...}}``."""

    name: str
    description: str | None = None
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})

    @classmethod
    def from_openai(cls, spec: Any, where: str = "tools") -> Tool:
        """A tool from OpenAI's tool object, or a legacy ``functions`` entry (no wrapper)."""
        if not isinstance(spec, dict):
            raise ValueError(f"{where}: must be an object")
        fn = spec
        if "type" in spec or "function" in spec:
            if spec.get("type") != "function":
                raise ValueError(f"{where}: only tools of type 'function' are supported")
            fn = spec.get("function")
            if not isinstance(fn, dict):
                raise ValueError(f"{where}: 'function' must be an object")
        name = fn.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(
                f"{where}: function name must be 1-64 characters of letters, digits, _ . : -"
            )
        desc = fn.get("description")
        if desc is not None and not isinstance(desc, str):
            raise ValueError(f"{where}: description must be a string")
        params = fn.get("parameters")
        if params is None:
            params = {"type": "object", "properties": {}}
        if not isinstance(params, dict):
            raise ValueError(f"{where}: parameters must be a JSON Schema object")
        if nesting(params) > MAX_SCHEMA_NESTING:
            raise ValueError(f"{where}: parameters nest deeper than {MAX_SCHEMA_NESTING} levels")
        try:
            jsonschema.validators.validator_for(params).check_schema(params)
        except jsonschema.SchemaError as e:
            raise ValueError(
                f"{where}: parameters of '{name}' is not a valid JSON Schema: {e.message}"
            ) from None
        return cls(name, desc, params)

    def as_openai(self) -> dict[str, Any]:
        """The tool as chat templates expect it (Hugging Face's ``tools`` argument)."""
        fn: dict[str, Any] = {"name": self.name}
        if self.description is not None:
            fn["description"] = self.description
        fn["parameters"] = self.parameters
        return {"type": "function", "function": fn}

    def check_arguments(self, arguments: Any) -> str | None:
        """None when ``arguments`` validate against the schema, else why not."""
        if nesting(arguments) > MAX_SCHEMA_NESTING:
            return f"arguments nest deeper than {MAX_SCHEMA_NESTING} levels"
        validator = _validator(json.dumps(self.parameters, sort_keys=True))
        error = jsonschema.exceptions.best_match(validator.iter_errors(arguments))
        return None if error is None else error.message


# Schemas come from clients: a `pattern` like ^(a|a)*$ would take exponential time on the
# generated text in Python's re (on the event loop). Patterns run with a time limit.
PATTERN_TIMEOUT_S = 0.05


def _matches(pattern: str, text: str) -> bool | None:
    """Whether ``pattern`` is found in ``text``; None when checking it took too long."""
    try:
        return regex.search(pattern, text, timeout=PATTERN_TIMEOUT_S) is not None
    except TimeoutError:
        return None


def _pattern(validator, pattern, instance, schema):
    if validator.is_type(instance, "string") and not _matches(pattern, instance):
        yield jsonschema.ValidationError(
            f"{instance!r} does not match {pattern!r} (or took too long)"
        )


def _pattern_properties(validator, patterns, instance, schema):
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        for key, value in instance.items():
            if _matches(pattern, key) is not False:  # too slow to tell: checked anyway
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


def _additional_properties(validator, additional, instance, schema):
    if not validator.is_type(instance, "object"):
        return
    declared = schema.get("properties", {})
    patterns = list(schema.get("patternProperties", {}))
    extra = [k for k in instance if k not in declared and not any(_matches(p, k) for p in patterns)]
    if additional is False and extra:
        yield jsonschema.ValidationError(f"additional properties are not allowed: {extra}")
    elif isinstance(additional, dict):
        for k in extra:
            yield from validator.descend(instance[k], additional, path=k)


_SAFE_KEYWORDS = {
    "pattern": _pattern,
    "patternProperties": _pattern_properties,
    "additionalProperties": _additional_properties,
}


def nesting(value: Any) -> int:
    """How deep lists and objects nest in a JSON value (without recursing)."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        v, d = todo.pop()
        deepest = max(deepest, d)
        if isinstance(v, dict):
            todo += [(x, d + 1) for x in v.values()]
        elif isinstance(v, list):
            todo += [(x, d + 1) for x in v]
    return deepest


@lru_cache(maxsize=256)
def _validator(schema_json: str) -> Any:
    """A compiled validator per schema: building one costs more than most validations."""
    schema = json.loads(schema_json)
    cls = jsonschema.validators.extend(jsonschema.validators.validator_for(schema), _SAFE_KEYWORDS)
    return cls(schema)


def read_tools(specs: list[Any] | None, where: str = "tools") -> list[Tool]:
    """OpenAI tool objects (or legacy ``functions``) -> Tools with distinct names."""
    tools = [Tool.from_openai(t, f"{where}[{i}]") for i, t in enumerate(specs or [])]
    if len({t.name for t in tools}) != len(tools):
        raise ValueError(f"{where}: two tools have the same name")
    return tools


@dataclass(frozen=True, slots=True)
class ToolChoice:
    """``mode`` is OpenAI's auto / none / required; ``name`` is set for a named function."""

    mode: Literal["auto", "none", "required"] = "auto"
    name: str | None = None

    @property
    def forces_call(self) -> bool:
        return self.mode == "required" or self.name is not None


def parse_tool_choice(value: Any, tools: list[Tool], where: str = "tool_choice") -> ToolChoice:
    """OpenAI's tool_choice (or legacy function_call) -> ToolChoice, checked against tools."""
    if value is None:
        return ToolChoice("auto" if tools else "none")
    if isinstance(value, str):
        if value not in ("auto", "none", "required"):
            raise ValueError(f"{where}: must be 'auto', 'none', 'required' or a named function")
        if value == "required" and not tools:
            raise ValueError(f"{where}: 'required' needs at least one tool")
        return ToolChoice(value)  # type: ignore[arg-type]
    if isinstance(value, dict):
        fn = value.get("function") if "function" in value else value
        name = fn.get("name") if isinstance(fn, dict) else None
        if not isinstance(name, str):
            raise ValueError(
                f'{where}: a named choice is {{"type": "function", "function": {{"name": ...}}}}'
            )
        if name not in {t.name for t in tools}:
            raise ValueError(f"{where}: no tool named '{name}' was given")
        return ToolChoice("required", name)
    raise ValueError(f"{where}: must be a string or an object")


@dataclass(slots=True)
class ToolCall:
    """One call the model made; ``arguments`` is JSON text, as OpenAI returns it."""

    name: str
    arguments: str
    id: str = field(default_factory=lambda: new_call_id())

    def as_openai(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


def new_call_id() -> str:
    """``call_`` and 24 random alphanumerics, like OpenAI's ids."""
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    return "call_" + "".join(secrets.choice(alphabet) for _ in range(24))


def arguments_text(value: Any) -> str:
    """Arguments as compact JSON text (what ``function.arguments`` holds)."""
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))
