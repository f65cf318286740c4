"""JSON Schema -> GBNF: the converter's output, and (with the model) that samples validate."""

from __future__ import annotations

import asyncio
import json
import re

import jsonschema
import pytest
from gbnf_matcher import Grammar
from model_traits import chat_template_for_tests

from ferrousforge.api.json_schema import (
    MAX_SCHEMA_DEPTH,
    gbnf_literal,
    json_object_gbnf,
    schema_to_gbnf,
)
from ferrousforge.errors import GrammarError
from ferrousforge.inference.backends.llama_cpp.gbnf import MAX_REPETITION


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


NODE = {
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
    "$ref": "#/$defs/Node",
}

# (what the schema tests, schema, texts its grammar must accept, texts it must reject)
LANGUAGE = [
    (
        "required properties first, in declared order; optional ones after, in order",
        {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "nick": {"type": "string"},
                "age": {"type": "integer"},
            },
            "required": ["name", "age"],
        },
        ['{"name":"a","age":3}', '{"name": "a", "age": 3, "nick": "b"}'],
        [
            '{"name":"a"}',  # age is required
            '{"age":3}',
            '{"age":3,"name":"a"}',  # order
            '{"name":"a","age":3,"extra":1}',  # undeclared
            '{"name":"a","age":3,"nick":"b","nick":"c"}',
            '{"name":"a","age":3,}',
        ],
    ),
    (
        "all optional: any in-order subset, commas only between",
        {
            "type": "object",
            "properties": {"a": {"type": "boolean"}, "b": {"type": "null"}, "c": {}},
        },
        ["{}", '{"a":true}', '{"b":null}', '{"a":false,"c":[1]}', '{"a":true,"b":null,"c":"x"}'],
        ['{"c":1,"a":true}', "{,}", '{"a":true,}', '{"b":1}', '{"a":"true"}'],
    ),
    (
        "integer: no fraction, no exponent, no leading zero",
        {"type": "integer"},
        ["0", "-7", "1234567890"],
        ["1.5", "1.0", "1e3", "01", '"1"', "+1", "", "1 2"],
    ),
    (
        "number: JSON's number syntax",
        {"type": "number"},
        ["0", "1.5", "-0.25e-3", "10", "1E+2"],
        [".5", "1.", "+1", "01.5", "1e", "NaN", '"1.5"'],
    ),
    (
        "top-level enum",
        {"enum": ["yes", "no"]},
        ['"yes"', '"no"', '"no" '],
        ['"maybe"', "yes", '"yes""no"', '"Yes"'],
    ),
    (
        "enum of mixed types",
        {"enum": ["a", 1, None]},
        ['"a"', "1", "null"],
        ['"1"', "2", '"null"'],
    ),
    (
        "top-level const",
        {"const": {"k": [1, 2]}},
        ['{"k": [1, 2]}'],
        ['{"k": [1, 3]}', '{"k": [1, 2], "j": 0}'],
    ),
    (
        "top-level oneOf of consts",
        {"oneOf": [{"const": "a"}, {"const": 2}]},
        ['"a"', "2"],
        ['"b"', "3", '"2"'],
    ),
    (
        "minItems / maxItems",
        {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 3},
        ["[1,2]", "[1, 2, 3]"],
        ["[]", "[1]", "[1,2,3,4]", '[1,"a"]', "[1,2,]"],
    ),
    (
        "prefixItems: a tuple of exactly those items, as llama.cpp reads it",
        {"type": "array", "prefixItems": [{"const": 1}]},
        ["[1]"],
        ["[]", "[1,1]", "[2]"],
    ),
    (
        "array without bounds",
        {"type": "array", "items": {"type": "boolean"}},
        ["[]", "[true]", "[true, false, true, true]"],
        ["[true false]", "[1]", "[,]"],
    ),
    (
        "minLength / maxLength count characters, an escape is one",
        {"type": "string", "minLength": 2, "maxLength": 4},
        ['"ab"', '"abcd"', '"a\\nb"', '"é\\u00e9"'],
        ['"a"', '"abcde"', '""', '"a\\qb"', '"a\nb"'],
    ),
    (
        "nested objects keep their own required properties",
        {
            "type": "object",
            "properties": {
                "p": {
                    "type": "object",
                    "properties": {"x": {"type": "number"}},
                    "required": ["x"],
                }
            },
            "required": ["p"],
        },
        ['{"p":{"x":1}}', '{"p": {"x": -2.5}}'],
        ['{"p":{}}', '{"p":{"x":"1"}}', "{}", '{"p":1}'],
    ),
    (
        "recursive $ref",
        NODE,
        ['{"name":"a"}', '{"name":"a","children":[{"name":"b","children":[]}]}'],
        ['{"name":"a","children":[{}]}', '{"children":[]}'],
    ),
    (
        "anyOf",
        {"anyOf": [{"type": "integer"}, {"const": "none"}]},
        ["5", '"none"'],
        ['"some"', "1.5", "null"],
    ),
    (
        "type list",
        {"type": ["integer", "null"]},
        ["3", "null"],
        ['"3"', "true", "3.5"],
    ),
    (
        "bounded whitespace: one space, or a newline and up to 20 blanks",
        {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
        ['{"a":1}', '{ "a" : 1 }', '{\n  "a": 1\n}', '{"a": 1}\n', "{\n" + " " * 20 + '"a":1}'],
        [' {"a":1}', '{"a":  1}', "{\n" + " " * 21 + '"a":1}', '{"a": 1}\n\n', '{"a":1}\t'],
    ),
    (
        "a required property with no schema may hold any value",
        {"type": "object", "required": ["a"]},
        ['{"a":1}', '{"a": {"x": [null]}}'],
        ["{}", '{"b":1}'],
    ),
    (
        "an optional property whose schema is false is left out",
        {"type": "object", "properties": {"a": False, "b": {"type": "null"}}},
        ["{}", '{"b":null}'],
        ['{"a":1}', '{"a":1,"b":null}'],
    ),
    (
        "json_object",
        {"type": "object"},
        ["{}", '{"a":[1,{"b":null}],"c":"d"}'],
        ["[]", '"x"', '{"a":}', '{"a" 1}', "{'a':1}"],
    ),
]


@pytest.mark.parametrize(
    ("schema", "accept", "reject"),
    [pytest.param(s, a, r, id=why) for why, s, a, r in LANGUAGE],
)
def test_grammar_accepts_and_rejects(schema: dict, accept: list[str], reject: list[str]) -> None:
    grammar = Grammar(schema_to_gbnf(schema))  # also asserts every rule is defined
    for text in accept:
        assert grammar.matches(text), f"should accept {text!r}"
        jsonschema.validate(json.loads(text), schema)  # the oracle agrees with the schema
    for text in reject:
        assert not grammar.matches(text), f"should reject {text!r}"


def test_a_list_of_item_schemas_is_a_tuple() -> None:
    # Draft 4's tuple form (llama-server's suite sends it); no validator of today's drafts
    # reads it, so no oracle here.
    g = Grammar(schema_to_gbnf({"items": [{"type": "integer"}, {"type": "string"}]}))
    assert g.matches('[1, "a"]') and g.matches('[ -3000 , "b"]')
    assert not any(g.matches(t) for t in ("[1]", '["a", 1]', '[1, "a", 2]', "[]"))


def test_json_object_grammar_is_the_generic_object() -> None:
    g = Grammar(json_object_gbnf())
    assert g.matches('{"a": [1, {"b": null}]}') and not g.matches("[1]")


def _nested(depth: int) -> dict:
    schema: dict = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"a": schema}, "required": ["a"]}
    return schema


def test_nesting_is_bounded_with_a_clear_error() -> None:
    Grammar(schema_to_gbnf(_nested(MAX_SCHEMA_DEPTH - 1)))
    for depth in (MAX_SCHEMA_DEPTH, 330, 5000):  # 330 was a RecursionError (500)
        with pytest.raises(GrammarError, match=f"nested more than {MAX_SCHEMA_DEPTH}"):
            schema_to_gbnf(_nested(depth))
    deep_const: object = 1
    for _ in range(3000):
        deep_const = [deep_const]
    with pytest.raises(GrammarError, match="nested"):
        schema_to_gbnf({"const": deep_const})


@pytest.mark.parametrize(
    ("schema", "words"),
    [
        ({"anyOf": []}, "anyOf at 'root-value' is empty"),
        ({"oneOf": []}, "oneOf at 'root-value' is empty"),
        ({"type": []}, "type at 'root-value' is empty"),
        ({"allOf": []}, "allOf at 'root-value' is empty"),
        ({"enum": []}, "enum at 'root-value' is empty"),
        ({"type": "object", "properties": {"a": {"anyOf": []}}}, "anyOf at 'root-value-a'"),
        ({"anyOf": 5}, "anyOf at 'root-value' must be a list"),
        ({"enum": "ab"}, "enum at 'root-value' must be a list"),
        ({"type": [["string"]]}, "type names"),
        ({"type": "object", "properties": [1]}, "properties at 'root-value' must be an object"),
        ({"type": "object", "required": "a"}, "required at 'root-value' must be a list"),
        ({"$ref": 5}, "$ref at 'root-value' must be a string"),
        ({"$defs": 5, "$ref": "#/$defs/a"}, "unsupported $ref"),
        ({"enum": ["\ud800"]}, "lone surrogate"),
        ({"type": "array", "minItems": MAX_REPETITION + 1}, "over the limit"),
        ({"type": "string", "minLength": 10**9}, "over the limit"),
        # $ref cycles with nothing in between, and a required property containing itself
        ({"$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}, "left recursion"),
        (
            {
                "$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}},
                "$ref": "#/$defs/a",
            },
            "left recursion",
        ),
        (
            {"type": "object", "properties": {"x": {"$ref": "#"}}, "required": ["x"]},
            "can never end",
        ),
        ({"type": "object", "properties": {"a": False}, "required": ["a"]}, "'false' schema"),
    ],
)
def test_schemas_matching_nothing_or_malformed_are_rejected(schema: dict, words: str) -> None:
    with pytest.raises(GrammarError, match="^response_format: ") as e:
        schema_to_gbnf(schema)
    assert words in str(e.value)


def test_a_maximum_above_the_repetition_limit_is_not_enforced() -> None:
    # the output still parses; llama.cpp cannot expand a bound that large
    g = Grammar(schema_to_gbnf({"type": "string", "maxLength": MAX_REPETITION + 1}))
    assert g.matches('"' + "x" * (MAX_REPETITION + 5) + '"')


def test_optional_self_reference_is_fine() -> None:
    g = Grammar(schema_to_gbnf({"type": "object", "properties": {"x": {"$ref": "#"}}}))
    assert g.matches('{"x":{"x":{}}}') and not g.matches('{"x":1}')


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
            chat = BackendInput.Chat(msgs, chat_template=chat_template_for_tests())
            return await b.infer_batch(h, [chat] * 3, opts)
        finally:
            await b.unload_model(h)

    for out in asyncio.run(main()):
        if out.finish_reason == "stop":  # a cut-off document cannot parse; the rest must
            jsonschema.validate(json.loads(out.text), schema)
