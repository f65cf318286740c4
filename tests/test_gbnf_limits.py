"""check_grammar: every bound that keeps a grammar from overflowing llama.cpp's stack or memory."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from ferrousforge.api.json_schema import json_object_gbnf, schema_to_gbnf
from ferrousforge.errors import GrammarError
from ferrousforge.inference.backends.llama_cpp import gbnf
from ferrousforge.inference.backends.llama_cpp.gbnf import check_grammar


def _parens(depth: int) -> str:
    return "root ::= " + "(" * depth + '"a"' + ")" * depth + "\n"


def _left_chain(n: int) -> str:
    """root ::= r0, r0 ::= r1, ...: every reference is leftmost (n + 1 rules in the chain)."""
    lines = ["root ::= r0"] + [f"r{i} ::= r{i + 1}" for i in range(n - 1)]
    return "\n".join([*lines, f'r{n - 1} ::= "a"']) + "\n"


def _doubling(n: int) -> str:
    """Each rule starts with the next one in two alternatives: 2**n leftmost paths."""
    lines = ["root ::= r0"] + [f'r{i} ::= r{i + 1} "a" | r{i + 1} "b"' for i in range(n)]
    return "\n".join([*lines, f'r{n} ::= "c"']) + "\n"


def _rejects(grammar: str, *words: str) -> str:
    with pytest.raises(GrammarError) as e:
        check_grammar(grammar)
    msg = str(e.value)
    assert msg.startswith("grammar: ")
    for w in words:
        assert w in msg, msg
    return msg


REAL_GRAMMARS = [
    json_object_gbnf(),
    schema_to_gbnf(
        {
            "type": "object",
            "properties": {
                "name": {"type": "string", "maxLength": 40},
                "tags": {"type": "array", "items": {"enum": ["a", "b", 3]}, "maxItems": 5},
                "n": {"type": ["integer", "null"]},
            },
            "required": ["name"],
        }
    ),
    'root ::= "yes" | "no"\n',
    # parentheses, braces and '#' inside literals, classes and comments are plain text
    'root ::= "((({{{" [(){}#] "}" | # ((( {9,1} \n  x{2,3}\n'
    'x ::= [^"\\\\]+ | "\\"" [\\x00-\\x1F]\n',
    "root ::= (\n  [a-z]+\n  | [0-9]{1,5}\n)*\n",
    'root ::= <[2]> | !<[2]> "x"\n',
]


@pytest.mark.parametrize("grammar", REAL_GRAMMARS)
def test_real_grammars_pass(grammar: str) -> None:
    assert gbnf._Parser(grammar).parse()  # understood, not left to llama.cpp as a syntax error
    check_grammar(grammar)


def test_deep_parentheses_are_rejected_before_the_parser() -> None:
    # the example: 20,000 levels segfault llama.cpp's recursive parser
    _rejects(_parens(20_000), "nested", str(gbnf.MAX_NESTING))
    check_grammar(_parens(gbnf.MAX_NESTING))
    _rejects(_parens(gbnf.MAX_NESTING + 1), "nested")


def test_total_size_is_bounded() -> None:
    big = 'root ::= "' + "a" * gbnf.MAX_GRAMMAR_CHARS + '"\n'
    _rejects(big, "characters", str(gbnf.MAX_GRAMMAR_CHARS))


def test_number_of_rules_is_bounded() -> None:
    # non-leftmost references, so only the rule count is over
    n = gbnf.MAX_RULES
    lines = ["root ::= r0"] + [f'r{i} ::= "a" r{i + 1}' for i in range(n)] + [f'r{n} ::= "a"']
    _rejects("\n".join(lines), "rules", str(gbnf.MAX_RULES))
    # a repetition's helper rules count too: 20 x {0,1000} adds 20,000 rules
    _rejects("root ::= " + ' "a"{0,1000}' * 20, "rules")


def test_repetition_counts_are_bounded() -> None:
    _rejects('root ::= "a"{1001}', "{1001}", str(gbnf.MAX_REPETITION))
    _rejects('root ::= "a"{0,100000}', "{0,100000}")
    _rejects('root ::= "a"{5000,}', "{5000,}")
    check_grammar('root ::= "a"{1000} "b"{0,1000} "c"{3,}')


def test_repetition_with_minimum_above_maximum_is_rejected() -> None:
    _rejects('root ::= "a"{3,1}', "{3,1}", "minimum above its maximum")
    _rejects('root ::= "a" { 5 , 2 }', "minimum above")
    # a repetition whose minimum exceeds its maximum, with a character class
    with pytest.raises(GrammarError):
        check_grammar("root ::= [a-z]{9,8}")


def test_expanded_copies_are_bounded() -> None:
    # one literal copied 1,000 times: llama.cpp would hold 50 million elements
    _rejects('root ::= "' + "x" * 50_000 + '"{1000}\n', "elements")
    # nested repetitions through rules multiply nothing in memory and pass
    check_grammar('root ::= a{1000}\na ::= b{1000}\nb ::= "xy"{1000}\n')


def test_chains_of_leftmost_references_are_bounded() -> None:
    check_grammar(_left_chain(gbnf.MAX_LEFT_CHAIN - 1))
    _rejects(_left_chain(gbnf.MAX_LEFT_CHAIN), "chain", str(gbnf.MAX_LEFT_CHAIN))
    # a reference after a rule that can match nothing is leftmost too
    lines = ["root ::= r0"] + [f"r{i} ::= e r{i + 1}" for i in range(2000)]
    _rejects("\n".join([*lines, 'r2000 ::= "a"', 'e ::= "b"?']), "chain")
    # references behind a terminal do not recurse in llama.cpp and may chain far
    lines = ["root ::= r0"] + [f'r{i} ::= "a" r{i + 1}' for i in range(5000)]
    check_grammar("\n".join([*lines, 'r5000 ::= "a"']))


def test_alternatives_multiplied_through_leftmost_references_are_bounded() -> None:
    # 2**13 first stacks make llama.cpp's init take seconds; 2**20, hours
    check_grammar(_doubling(12))
    _rejects(_doubling(13), "starts in more than", str(gbnf.MAX_START_PATHS))
    _rejects(_doubling(40), "starts in more than")


def test_left_recursion_through_a_rule_that_matches_nothing_is_rejected() -> None:
    # llama.cpp only sees a literally empty alternative; this one loops until bad_alloc
    _rejects('root ::= e root "x" | "y"\ne ::= "b"?\n', "left recursion", "'root'")
    _rejects('root ::= ("b"?) root "x" | "y"\n', "left recursion")
    _rejects('root ::= a\na ::= b "x"\nb ::= a | "y"\n', "left recursion")


def test_undefined_rule_is_named() -> None:
    _rejects('root ::= "a" missing\n', "'missing'", "never defined")


def test_syntax_errors_are_left_to_llama_cpp() -> None:
    # llama.cpp reports these with a position; the check must not crash or hang on them
    for bad in ['root ::= "abc', "root ::= [a-", "root ::= (", "root = x", 'root ::= "\\q"', "*"]:
        check_grammar(bad)


@pytest.mark.integration
def test_grammars_at_the_limits_build_in_llama_cpp_in_a_worker_thread(model_path) -> None:
    """What passes the check builds without crashing llama.cpp, on a small thread stack.

    A child process, so that a segfault fails this test instead of ending the run.
    """
    grammars = [
        _parens(gbnf.MAX_NESTING),
        _left_chain(gbnf.MAX_LEFT_CHAIN - 1),
        _doubling(12),
        'root ::= "a"{1000} "b"{0,999}\n',
        *REAL_GRAMMARS,
    ]
    for g in grammars:
        check_grammar(g)
    code = textwrap.dedent(
        """
        import sys, threading
        import llama_cpp.llama_cpp as L
        grammars = eval(sys.stdin.read())
        threading.stack_size(512 * 1024)
        p = L.llama_model_default_params()
        p.vocab_only = True
        model = L.llama_model_load_from_file(sys.argv[1].encode(), p)
        vocab = L.llama_model_get_vocab(model)
        built = []
        def build():
            for g in grammars:
                s = L.llama_sampler_init_grammar(vocab, g.encode(), b"root")
                built.append(bool(s))
                L.llama_sampler_free(s)
        t = threading.Thread(target=build)
        t.start()
        t.join()
        print("BUILT", built)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(model_path)],
        input=repr(grammars),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"BUILT {[True] * len(grammars)}" in out.stdout


def test_must_end_rejects_rules_that_only_recurse() -> None:
    endless = 'root ::= "{" root "}"\n'  # every sentence would be infinite
    check_grammar(endless)  # a user's grammar may run to max_tokens
    with pytest.raises(GrammarError, match="'root' can never end"):
        check_grammar(endless, must_end=True)
    check_grammar('root ::= "{" root "}" | "x"\n', must_end=True)
