"""JSON Schema -> GBNF: the converter's output, and (with the model) that samples validate."""

from __future__ import annotations

import asyncio
import json
import re

import jsonschema
import pytest

from ferrousforge.api.json_schema import gbnf_literal, json_object_gbnf, schema_to_gbnf


def _rules(grammar: str) -> dict[str, str]:
    return dict(line.split(" ::= ", 1) for line in grammar.strip().splitlines())


def test_every_referenced_rule_is_defined() -> None:
    schema = {
        "$defs": {
            "Node": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "children": {"type": "array", "items": {"$ref": "#/$defs/Node"}},
                },
                "required": ["name"],
            }
        },
        "type": "object",
        "properties": {
            "root": {"$ref": "#/$defs/Node"},
            "kind": {"enum": ["a", 1, None]},
            "n": {"type": ["integer", "null"]},
            "x": {"anyOf": [{"type": "number"}, {"const": "none"}]},
        },
    }
    rules = _rules(schema_to_gbnf(schema))
    assert "root" in rules
    for body in rules.values():
        # drop literals and character classes; what is left names rules
        bare = re.sub(r'"(?:\\.|[^"\\])*"|\[(?:\\.|[^\]\\])*\]|\{[0-9,]*\}', " ", body)
        for name in re.findall(r"[a-zA-Z][a-zA-Z0-9-]*", bare):
            assert name in rules, f"{name} is used but not defined"


def test_literals_escape_quotes_and_control_characters() -> None:
    assert gbnf_literal('a"b\\c\n') == r'"a\"b\\c\n"'
    assert gbnf_literal("\x01") == r'"\x01"'


def test_unsupported_schemas_raise_value_error() -> None:
    with pytest.raises(ValueError):
        schema_to_gbnf({"$ref": "http://example.com/schema"})
    with pytest.raises(ValueError):
        schema_to_gbnf({"allOf": [{"type": "string"}, {"type": "number"}]})
    with pytest.raises(ValueError):
        schema_to_gbnf({"type": "tuple"})
    with pytest.raises(ValueError):
        schema_to_gbnf({"enum": []})
    with pytest.raises(ValueError, match="minItems"):
        schema_to_gbnf({"type": "array", "minItems": 3, "maxItems": 1})
    with pytest.raises(ValueError, match="maxLength"):
        schema_to_gbnf({"type": "string", "maxLength": -1})


def test_json_object_is_a_generic_object_grammar() -> None:
    rules = _rules(json_object_gbnf())
    assert rules["root"] == "object" and "value" in rules


SCHEMAS = [
    {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer"}},
        "required": ["name", "age"],
    },
    {
        "type": "object",
        "properties": {"a": {"type": "boolean"}, "b": {"type": "null"}, "c": {"enum": ["x", "y"]}},
    },  # all optional
    {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 3},
    {
        "type": "object",
        "properties": {
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 2},
            "score": {"type": "number"},
            "kind": {"const": "pt"},
        },
        "required": ["kind", "score"],
    },
]


@pytest.mark.integration
@pytest.mark.parametrize("schema", SCHEMAS)
def test_sampled_output_validates(schema: dict) -> None:
    """llama.cpp accepts the grammar, and what it samples under it is valid JSON for the schema."""
    from ferrousforge.api.request import InferenceOptions
    from ferrousforge.inference.backend import BackendConfig, BackendInput
    from ferrousforge.inference.backends.llama_cpp import LlamaCppBackend
    from ferrousforge.models.default_model import default_model_path

    async def main() -> list:
        b = LlamaCppBackend()
        h = await b.load_model(
            default_model_path(), BackendConfig(num_threads=2, context_size=1024, max_parallel=3)
        )
        try:
            opts = InferenceOptions(
                temperature=0.9, max_tokens=120, seed=1, grammar=schema_to_gbnf(schema)
            )
            msgs = [{"role": "user", "content": "Reply with JSON."}]
            return await b.infer_batch(h, [BackendInput.Chat(msgs)] * 3, opts)
        finally:
            await b.unload_model(h)

    for out in asyncio.run(main()):
        if out.finish_reason == "stop":  # a cut-off document cannot parse; the rest must
            jsonschema.validate(json.loads(out.text), schema)
