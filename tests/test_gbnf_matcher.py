"""The test oracle itself, checked against grammars worked out by hand."""

from __future__ import annotations

import pytest
from gbnf_matcher import Grammar


def test_literals_classes_and_repetitions() -> None:
    g = Grammar('root ::= "a" [0-9]{2,3} ("x" | "y")* # a comment ( {\n  | [^a-c]+ "\\n"\n')
    for text in ["a12", "a123", "a12xyx", "dd\n", "z\n"]:
        assert g.matches(text), text
    for text in ["a1", "a1234", "a12z", "b\n", "dd", ""]:
        assert not g.matches(text), text


def test_escapes_rule_references_and_optional_items() -> None:
    g = Grammar(
        'root ::= item ("," item)?\nitem ::= "\\"" [\\x41-\\x43\\-]+ "\\"" | "\\u00e9" | .\n'
    )
    for text in ['"AB-C"', "é", '"A","-"', "é,%"]:
        assert g.matches(text), text
    for text in ['"AD"', '""', "é,", "é,é,é"]:
        assert not g.matches(text), text


def test_bounded_and_open_repetitions() -> None:
    g = Grammar('root ::= "a"{2} "b"{1,} "c"{0,2}\n')
    assert [g.matches(t) for t in ["aab", "aabbbcc", "ab", "aabccc", "aa"]] == [
        True,
        True,
        False,
        False,
        False,
    ]


def test_undefined_rule_is_an_error() -> None:
    with pytest.raises(AssertionError, match="undefined"):
        Grammar("root ::= nowhere\n")
