"""JSON Schema -> GBNF grammar, so constrained output always parses (response_format).

Supports the subset real clients send: object/properties/required (declared
properties only, in declared order), array/items/minItems/maxItems, tuples
(prefixItems, or a list of item schemas), string (minLength/maxLength), number,
integer, boolean, null, enum, const, anyOf/oneOf, type lists, local $ref
(#/$defs/..., #/definitions/...) and single-item allOf. Validation keywords it
cannot enforce (pattern, format, minimum...) are ignored; structures it cannot
express, and schemas that no JSON text (or only an empty output) would match,
raise GrammarError (a ValueError).
"""

from __future__ import annotations

import json
import re
from typing import Any

from ferrousforge.chat.tools import nesting
from ferrousforge.errors import GrammarError
from ferrousforge.inference.backends.llama_cpp.gbnf import MAX_REPETITION, check_grammar

# Nesting of schemas inside schemas (properties, items, anyOf, $ref hops): deeper
# ones would exhaust Python's recursion here; real schemas stay under 20.
MAX_SCHEMA_DEPTH = 64

# Bounded whitespace: unbounded whitespace lets a small model loop on newlines forever.
_PRIMITIVES = {
    "space": r'| " " | "\n" [ \t]{0,20}',
    "char": r'[^"\\\x7F\x00-\x1F] | [\\] (["\\bfnrt/] | "u" [0-9a-fA-F]{4})',
    "string": r'"\"" char* "\"" space',
    "integral": r'"0" | [1-9] [0-9]{0,15}',
    "integer": r'"-"? integral space',
    "number": r'"-"? integral ("." [0-9]+)? ([eE] [-+]? [0-9]+)? space',
    "boolean": r'("true" | "false") space',
    "null": r'"null" space',
    "value": r"object | array | string | number | boolean | null",
    "object": r'"{" space (string ":" space value ("," space string ":" space value)*)? "}" space',
    "array": r'"[" space (value ("," space value)*)? "]" space',
}
_DEPENDS = {
    "string": ["char", "space"],
    "integer": ["integral", "space"],
    "number": ["integral", "space"],
    "boolean": ["space"],
    "null": ["space"],
    "value": ["object", "array", "string", "number", "boolean", "null"],
    "object": ["string", "value", "space"],
    "array": ["value", "space"],
}


def gbnf_literal(text: str) -> str:
    """A GBNF string literal matching ``text`` exactly."""
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _fail(why: str) -> None:
    raise GrammarError(f"response_format: {why}")


class _Converter:
    def __init__(self, root_schema: dict[str, Any], prefix: str = "") -> None:
        self.root = root_schema
        self.prefix = prefix  # keeps rule names of several schemas in one grammar apart
        self.rules: dict[str, str] = {}
        self.refs: dict[str, str] = {}  # $ref -> rule name
        self.depth = 0

    def literal(self, value: Any, hint: str) -> str:
        """A JSON value's exact text, then optional whitespace (which pulls in ``space``)."""
        if nesting(value) > MAX_SCHEMA_DEPTH:
            _fail(f"a const or enum value at '{hint}' is nested over {MAX_SCHEMA_DEPTH} deep")
        text = json.dumps(value, ensure_ascii=False)
        try:
            text.encode()
        except UnicodeEncodeError:
            _fail(f"a string at '{hint}' holds a lone surrogate, which UTF-8 cannot encode")
        return gbnf_literal(text) + " " + self.primitive("space")

    def primitive(self, name: str) -> str:
        if name not in self.rules:
            self.rules[name] = _PRIMITIVES[name]
            for dep in _DEPENDS.get(name, []):
                self.primitive(dep)
        return name

    def add(self, hint: str, body: str) -> str:
        base = re.sub(r"[^a-zA-Z0-9-]+", "-", self.prefix + hint).strip("-") or "r"
        name, i = base, 1
        while name in self.rules or name in _PRIMITIVES:
            i += 1
            name = f"{base}{i}"
        self.rules[name] = body
        return name

    def visit(self, schema: Any, hint: str) -> str:
        """An expression (usually a rule name) for values matching ``schema``."""
        if self.depth >= MAX_SCHEMA_DEPTH:
            _fail(f"the schema is nested more than {MAX_SCHEMA_DEPTH} levels deep")
        self.depth += 1
        try:
            return self.visit_schema(schema, hint)
        finally:
            self.depth -= 1

    def visit_schema(self, schema: Any, hint: str) -> str:
        if schema is True or schema == {}:
            return self.primitive("value")
        if schema is False:
            _fail(f"the 'false' schema at '{hint}' matches nothing")
        if not isinstance(schema, dict):
            _fail(f"schema at '{hint}' must be an object")
        if "$ref" in schema:
            return self.ref(schema["$ref"], hint)
        if "const" in schema:
            return self.add(hint, self.literal(schema["const"], hint))
        if "enum" in schema:
            values = _nonempty_list(schema, "enum", hint)
            return self.add(hint, " | ".join(self.literal(v, hint) for v in values))
        for key in ("anyOf", "oneOf"):
            if key in schema:
                subs = _nonempty_list(schema, key, hint)
                alts = [self.visit(s, f"{hint}-{i}") for i, s in enumerate(subs)]
                return self.add(hint, " | ".join(alts))
        if "allOf" in schema:
            subs = _nonempty_list(schema, "allOf", hint)
            if len(subs) != 1:
                _fail(f"allOf with several schemas (at '{hint}') is not supported")
            return self.visit(subs[0], hint)
        return self.typed(schema, hint)

    def typed(self, schema: dict[str, Any], hint: str) -> str:
        t = schema.get("type")
        if isinstance(t, list):
            types = _nonempty_list(schema, "type", hint)
            if not all(isinstance(x, str) for x in types):
                _fail(f"type list at '{hint}' must hold type names")
            alts = [self.typed({**schema, "type": x}, f"{hint}-{x}") for x in types]
            return self.add(hint, " | ".join(alts))
        if t is None:
            t = "object" if "properties" in schema else None
            if t is None and ("items" in schema or "prefixItems" in schema):
                t = "array"
        if t == "object":
            return self.object(schema, hint)
        if t == "array":
            return self.array(schema, hint)
        if t == "string":
            return self.string(schema, hint)
        if t in ("number", "integer", "boolean", "null"):
            return self.primitive(t)
        if t is None:
            return self.primitive("value")
        _fail(f"unsupported type {t!r} at '{hint}'")

    def string(self, schema: dict[str, Any], hint: str) -> str:
        lo, hi = _bounds(schema, "minLength", "maxLength", hint)
        if not lo and hi is None:
            return self.primitive("string")
        self.primitive("char")
        self.primitive("space")
        rep = f"{{{lo},{hi}}}" if hi is not None else f"{{{lo},}}"
        return self.add(hint, f'"\\"" char{rep} "\\"" space')

    def array(self, schema: dict[str, Any], hint: str) -> str:
        self.primitive("space")
        # A list of schemas (draft 2020's prefixItems, or draft 4's items array): a tuple of
        # exactly those elements, as llama.cpp's converter reads it.
        key = "items" if "items" in schema else "prefixItems"
        if isinstance(schema.get(key), list):
            parts = [self.visit(s, f"{hint}-tuple-{i}") for i, s in enumerate(schema[key])]
            inner = ' "," space '.join(parts)
            return self.add(
                hint, f'"[" space {inner} "]" space' if parts else '"[" space "]" space'
            )
        lo, hi = _bounds(schema, "minItems", "maxItems", hint)
        if hi == 0 or (schema.get("items") is False and lo == 0):
            return self.add(hint, '"[" space "]" space')
        item = self.visit(schema.get("items", True), f"{hint}-item")
        more_hi = "" if hi is None else str(hi - 1)
        tail = f'("," space {item}){{{max(lo - 1, 0)},{more_hi}}}'
        inner = f"{item} {tail}"
        body = f'"[" space {inner} "]" space' if lo > 0 else f'"[" space ({inner})? "]" space'
        return self.add(hint, body)

    def object(self, schema: dict[str, Any], hint: str) -> str:
        props = schema.get("properties", {})
        if not isinstance(props, dict):
            _fail(f"properties at '{hint}' must be an object")
        must = schema.get("required", [])
        if not isinstance(must, list) or not all(isinstance(k, str) for k in must):
            _fail(f"required at '{hint}' must be a list of property names")
        # a required name with no declared schema may hold any value
        props = {**props, **{k: True for k in must if k not in props}}
        # an optional property whose schema is false must be absent: leave it out
        props = {k: v for k, v in props.items() if v is not False or k in must}
        if not props:
            return self.primitive("object")
        self.primitive("space")
        required = [k for k in props if k in set(must)]
        optional = [k for k in props if k not in required]
        kv = {
            k: f'{self.literal(k, hint)} ":" space {self.visit(v, f"{hint}-{k}")}'
            for k, v in props.items()
        }
        parts = ' "," space '.join(kv[k] for k in required)
        if required:
            inner = parts + "".join(f' ("," space {kv[k]})?' for k in optional)
        else:
            inner = f"({self.optional_chain(optional, kv, hint)})?"
        return self.add(hint, f'"{{" space {inner} "}}" space')

    def optional_chain(self, keys: list[str], kv: dict[str, str], hint: str) -> str:
        """Any in-order subset of ``keys``, commas between: first one present, then the rest."""
        alts = []
        for i, k in enumerate(keys):
            rest = "".join(f' ("," space {kv[r]})?' for r in keys[i + 1 :])
            alts.append(f"{kv[k]}{rest}")
        return " | ".join(alts)

    def ref(self, ref: Any, hint: str) -> str:
        if not isinstance(ref, str):
            _fail(f"$ref at '{hint}' must be a string")
        if ref in self.refs:
            return self.refs[ref]
        m = re.fullmatch(r"#/(\$defs|definitions)/(.+)", ref)
        defs = self.root.get(m.group(1)) if m else None
        if ref == "#":
            target, name = self.root, "root-ref"
        elif m and isinstance(defs, dict) and m.group(2) in defs:
            target, name = defs[m.group(2)], m.group(2)
        else:
            _fail(f"unsupported $ref {ref!r} at '{hint}' (only local #/$defs/... and #)")
        # Reserve the name first: recursive schemas refer to themselves.
        rule = self.add(f"def-{name}", "")
        self.refs[ref] = rule
        self.rules[rule] = self.visit(target, f"def-{name}-body")
        return rule


def schema_to_gbnf(schema: dict[str, Any] | bool) -> str:
    """A GBNF grammar (root rule ``root``) whose sentences are JSON matching ``schema``.

    Raises GrammarError (a ValueError, message ``response_format: ...``) for a schema
    it cannot express, one nested too deep, or one whose grammar would match nothing
    (e.g. a required property that contains itself) or be over a grammar limit.
    """
    conv = _Converter(schema if isinstance(schema, dict) else {})
    top = conv.visit(schema, "root-value")
    lines = [f"root ::= {top}"]
    lines += [f"{name} ::= {body}" for name, body in conv.rules.items()]
    return checked_grammar(lines, "response_format: the schema's grammar")


def checked_grammar(lines: list[str], what: str) -> str:
    """The rules as one grammar, within the grammar limits (GrammarError naming ``what``)."""
    grammar = "\n".join(lines) + "\n"
    try:
        check_grammar(grammar, must_end=True)
    except GrammarError as e:
        why = str(e).removeprefix("grammar: ")
        raise GrammarError(f"{what} is not usable: {why}") from e
    return grammar


def schema_rules(schema: dict[str, Any] | bool, prefix: str) -> tuple[str, dict[str, str]]:
    """An expression for JSON matching ``schema`` and the rules it needs, for embedding in a
    larger grammar (tool calls). Rule names start with ``prefix``; the shared primitives
    (``space``, ``string``...) do not, and have the same body in every schema.
    """
    conv = _Converter(schema if isinstance(schema, dict) else {}, prefix)
    top = conv.visit(schema, "value")
    return top, conv.rules


def json_object_gbnf() -> str:
    """Any JSON object (response_format type json_object)."""
    return schema_to_gbnf({"type": "object"})


def _nonempty_list(schema: dict[str, Any], key: str, hint: str) -> list[Any]:
    """``schema[key]`` as a list; an empty one would match nothing (or only empty output)."""
    value = schema[key]
    if not isinstance(value, list):
        _fail(f"{key} at '{hint}' must be a list")
    if not value:
        _fail(f"{key} at '{hint}' is empty, so nothing matches it")
    return value


def _bounds(schema: dict[str, Any], lo_key: str, hi_key: str, hint: str) -> tuple[int, int | None]:
    """A schema's (min, max) count pair, checked: whole numbers, min <= max.

    A maximum above the grammar's repetition limit is not enforced (None): the
    output still parses. A minimum above it cannot be expressed and is an error.
    """
    lo, hi = schema.get(lo_key, 0), schema.get(hi_key)
    for key, v in ((lo_key, lo), (hi_key, hi)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
            _fail(f"{key} at '{hint}' must be a whole number >= 0")
    if hi is not None and lo > hi:
        _fail(f"{lo_key} ({lo}) exceeds {hi_key} ({hi}) at '{hint}'")
    if lo > MAX_REPETITION:
        _fail(f"{lo_key} ({lo}) at '{hint}' is over the limit of {MAX_REPETITION}")
    if hi is not None and hi > MAX_REPETITION:
        hi = None
    return lo, hi
