"""JSON Schema -> GBNF grammar, so constrained output always parses (response_format).

Supports the subset real clients send: object/properties/required (declared
properties only, in declared order), array/items/minItems/maxItems,
string (minLength/maxLength), number, integer, boolean, null, enum, const,
anyOf/oneOf, type lists, local $ref (#/$defs/..., #/definitions/...) and
single-item allOf. Validation keywords it cannot enforce (pattern, format,
minimum...) are ignored; structures it cannot express raise ValueError.
"""

from __future__ import annotations

import json
import re
from typing import Any

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


def _json_literal(value: Any) -> str:
    return gbnf_literal(json.dumps(value, ensure_ascii=False)) + " space"


class _Converter:
    def __init__(self, root_schema: dict[str, Any]) -> None:
        self.root = root_schema
        self.rules: dict[str, str] = {}
        self.refs: dict[str, str] = {}  # $ref -> rule name

    def primitive(self, name: str) -> str:
        if name not in self.rules:
            self.rules[name] = _PRIMITIVES[name]
            for dep in _DEPENDS.get(name, []):
                self.primitive(dep)
        return name

    def add(self, hint: str, body: str) -> str:
        base = re.sub(r"[^a-zA-Z0-9-]+", "-", hint).strip("-") or "r"
        name, i = base, 1
        while name in self.rules or name in _PRIMITIVES:
            i += 1
            name = f"{base}{i}"
        self.rules[name] = body
        return name

    def visit(self, schema: Any, hint: str) -> str:
        """An expression (usually a rule name) for values matching ``schema``."""
        if schema is True or schema == {}:
            return self.primitive("value")
        if schema is False:
            raise ValueError("response_format: a 'false' schema matches nothing")
        if not isinstance(schema, dict):
            raise ValueError(f"response_format: schema at '{hint}' must be an object")
        if "$ref" in schema:
            return self.ref(schema["$ref"])
        if "const" in schema:
            return self.add(hint, _json_literal(schema["const"]))
        if "enum" in schema:
            if not schema["enum"]:
                raise ValueError(f"response_format: empty enum at '{hint}'")
            return self.add(hint, " | ".join(_json_literal(v) for v in schema["enum"]))
        for key in ("anyOf", "oneOf"):
            if key in schema:
                alts = [self.visit(s, f"{hint}-{i}") for i, s in enumerate(schema[key])]
                return self.add(hint, " | ".join(alts))
        if "allOf" in schema:
            if len(schema["allOf"]) != 1:
                raise ValueError("response_format: allOf with several schemas is not supported")
            return self.visit(schema["allOf"][0], hint)
        return self.typed(schema, hint)

    def typed(self, schema: dict[str, Any], hint: str) -> str:
        t = schema.get("type")
        if isinstance(t, list):
            alts = [self.typed({**schema, "type": x}, f"{hint}-{x}") for x in t]
            return self.add(hint, " | ".join(alts))
        if t is None:
            t = "object" if "properties" in schema else "array" if "items" in schema else None
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
        raise ValueError(f"response_format: unsupported type {t!r} at '{hint}'")

    def string(self, schema: dict[str, Any], hint: str) -> str:
        lo, hi = _bounds(schema, "minLength", "maxLength", hint)
        if not lo and hi is None:
            return self.primitive("string")
        self.primitive("char")
        self.primitive("space")
        rep = f"{{{lo},{hi}}}" if hi is not None else f"{{{lo},}}"
        return self.add(hint, f'"\\"" char{rep} "\\"" space')

    def array(self, schema: dict[str, Any], hint: str) -> str:
        item = self.visit(schema.get("items", True), f"{hint}-item")
        self.primitive("space")
        lo, hi = _bounds(schema, "minItems", "maxItems", hint)
        if hi == 0:
            return self.add(hint, '"[" space "]" space')
        more_hi = "" if hi is None else str(hi - 1)
        tail = f'("," space {item}){{{max(lo - 1, 0)},{more_hi}}}'
        inner = f"{item} {tail}"
        body = f'"[" space {inner} "]" space' if lo > 0 else f'"[" space ({inner})? "]" space'
        return self.add(hint, body)

    def object(self, schema: dict[str, Any], hint: str) -> str:
        props: dict[str, Any] = schema.get("properties") or {}
        if not props:
            return self.primitive("object")
        self.primitive("space")
        required = [k for k in props if k in set(schema.get("required", []))]
        optional = [k for k in props if k not in required]
        kv = {
            k: f'{_json_literal(k)} ":" space {self.visit(v, f"{hint}-{k}")}'
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

    def ref(self, ref: str) -> str:
        if ref in self.refs:
            return self.refs[ref]
        m = re.fullmatch(r"#/(\$defs|definitions)/(.+)", ref)
        if ref == "#":
            target, name = self.root, "root-ref"
        elif m and m.group(2) in (self.root.get(m.group(1)) or {}):
            target, name = self.root[m.group(1)][m.group(2)], m.group(2)
        else:
            raise ValueError(f"response_format: unsupported $ref {ref!r} (only local #/$defs)")
        # Reserve the name first: recursive schemas refer to themselves.
        rule = self.add(f"def-{name}", "")
        self.refs[ref] = rule
        self.rules[rule] = self.visit(target, f"def-{name}-body")
        return rule


def schema_to_gbnf(schema: dict[str, Any] | bool) -> str:
    """A GBNF grammar (root rule ``root``) whose sentences are JSON matching ``schema``."""
    conv = _Converter(schema if isinstance(schema, dict) else {})
    top = conv.visit(schema, "root-value")
    lines = [f"root ::= {top}"]
    lines += [f"{name} ::= {body}" for name, body in conv.rules.items()]
    return "\n".join(lines) + "\n"


def json_object_gbnf() -> str:
    """Any JSON object (response_format type json_object)."""
    return schema_to_gbnf({"type": "object"})


def _bounds(schema: dict[str, Any], lo_key: str, hi_key: str, hint: str) -> tuple[int, int | None]:
    """A schema's (min, max) count pair, checked: whole numbers, min <= max."""
    lo, hi = schema.get(lo_key, 0), schema.get(hi_key)
    for key, v in ((lo_key, lo), (hi_key, hi)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
            raise ValueError(f"response_format: {key} at '{hint}' must be a whole number >= 0")
    if hi is not None and lo > hi:
        raise ValueError(f"response_format: {lo_key} ({lo}) exceeds {hi_key} ({hi}) at '{hint}'")
    return lo, hi
