"""Bounds on GBNF text, checked before llama.cpp's grammar parser sees it.

llama.cpp parses grammars recursively (one C frame per nested parenthesis), checks
left recursion recursively (one frame per rule in a chain of leftmost references),
copies every repeated item ``S{m,n}`` m times plus n - m helper rules, and builds its
first grammar stacks from every leftmost path through the rules. A stack overflow
cannot be caught, and a grammar of a few hundred bytes can make the rest take hours
or all memory, so this module parses the grammar the way llama.cpp does (without
recursion deeper than the nesting bound) and rejects what would go over a limit.

Measured with llama.cpp's parser (llama-cpp-python 0.3.36, 8 MiB stack, main thread
and a worker thread alike): 18,700 nested parentheses or a chain of 65,000 leftmost
rule references overflow the stack; with a 256 KiB thread stack, 565 and 2,000.
"""

from __future__ import annotations

from ferrousforge.errors import GrammarError

MAX_GRAMMAR_CHARS = 256 * 1024
MAX_NESTING = 100  # parentheses; real grammars stay under 30
MAX_RULES = 10_000  # after llama.cpp's expansion: named rules, groups, repetition helpers
MAX_ELEMENTS = 1_000_000  # grammar elements after expansion (8 bytes each in llama.cpp)
MAX_REPETITION = 1_000  # m and n of {m,n}; llama.cpp itself refuses 2,000 and more
MAX_LEFT_CHAIN = 1_000  # rules in a chain of leftmost references
MAX_START_PATHS = 4_096  # leftmost paths through one rule (llama.cpp's grammar stacks)

_WORD = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-")
_ESCAPE_HEX = {"x": 2, "u": 4, "U": 8}
_HEX = frozenset("0123456789abcdefABCDEF")

# A rule is a list of alternatives; an alternative a list of items: a rule id (>= 0)
# or a terminal, written as minus its number of llama.cpp elements.
Rule = list[list[int]]


def check_grammar(grammar: str, *, must_end: bool = False) -> None:
    """Raise GrammarError (a ValueError, message ``grammar: ...``) if ``grammar`` is over a limit.

    Covers the size, nesting depth, rule and element counts after expansion, repetition
    bounds (and ``{m,n}`` with m > n, which llama.cpp expands until memory runs out),
    undefined rules, left recursion (also through rules that can match nothing, which
    llama.cpp misses and then loops on), chains of leftmost references, and the number
    of leftmost paths through a rule. Syntax llama.cpp would reject is left to it.
    With ``must_end``, a rule that can never finish (it always contains itself) is
    rejected too: output entering it could only stop at max_tokens.
    """
    if len(grammar) > MAX_GRAMMAR_CHARS:
        _fail(f"the grammar is {len(grammar)} characters, over the limit of {MAX_GRAMMAR_CHARS}")
    parser = _Parser(grammar)
    if not parser.parse():
        return  # llama.cpp reports the syntax error itself
    undefined = [name for name, i in parser.ids.items() if i not in parser.rules]
    if undefined:
        _fail(f"rule {undefined[0]!r} is used but never defined")
    names = {i: f"rule {n!r}" for n, i in parser.ids.items()}
    names.update({i: f"a group or repetition in {n!r}" for i, n in parser.owner.items()})
    _check_leftmost(parser.rules, names)
    if must_end:
        can_end = _closure(parser.rules, terminals_allowed=True)
        endless = [r for r in parser.rules if r not in can_end]
        if endless:
            _fail(f"{names[min(endless)]} can never end (every way through it recurses)")


def _fail(why: str) -> None:
    raise GrammarError(f"grammar: {why}")


class _SyntaxError(Exception):
    """The text is not GBNF; llama.cpp will say where."""


class _Parser:
    """llama.cpp's grammar parser, rebuilt to count: same rules, same expansion."""

    def __init__(self, src: str) -> None:
        self.src = src
        self.pos = 0
        self.ids: dict[str, int] = {}  # named rules (used or defined)
        self.rules: dict[int, Rule] = {}
        self.n_symbols = 0
        self.n_elements = 0
        self.current = ""  # the rule being parsed
        self.owner: dict[int, str] = {}  # generated rule (group, repetition) -> its rule

    def parse(self) -> bool:
        try:
            self.space(True)
            while self.pos < len(self.src):
                self.rule()
        except _SyntaxError:
            return False
        return True

    # -- lexing -----------------------------------------------------------------

    def peek(self, k: int = 0) -> str:
        i = self.pos + k
        return self.src[i] if i < len(self.src) else ""

    def space(self, newline_ok: bool) -> None:
        while (c := self.peek()) and (c in " \t#" or (newline_ok and c in "\r\n")):
            if c == "#":
                while (c := self.peek()) and c not in "\r\n":
                    self.pos += 1
            else:
                self.pos += 1

    def name(self) -> str:
        start = self.pos
        while self.peek() and self.peek() in _WORD:
            self.pos += 1
        if self.pos == start:
            raise _SyntaxError
        return self.src[start : self.pos]

    def int(self) -> int:
        start = self.pos
        while self.peek().isdigit() and self.peek().isascii():
            self.pos += 1
        if self.pos == start:
            raise _SyntaxError
        return int(self.src[start : self.pos])

    def char(self) -> None:
        if self.peek() == "\\":
            esc = self.peek(1)
            if esc in _ESCAPE_HEX:
                digits = self.src[self.pos + 2 : self.pos + 2 + _ESCAPE_HEX[esc]]
                if len(digits) != _ESCAPE_HEX[esc] or not all(d in _HEX for d in digits):
                    raise _SyntaxError
                self.pos += 2 + _ESCAPE_HEX[esc]
            elif esc and esc in 'trn\\"[]-':
                self.pos += 2
            else:
                raise _SyntaxError
        elif self.peek():
            self.pos += 1
        else:
            raise _SyntaxError

    # -- structure --------------------------------------------------------------

    def symbol(self, name: str | None = None) -> int:
        if name is not None and name in self.ids:
            return self.ids[name]
        self.n_symbols += 1
        if self.n_symbols > MAX_RULES:
            _fail(f"more than {MAX_RULES} rules (counting groups and repetitions)")
        if name is not None:
            self.ids[name] = self.n_symbols - 1
        else:
            self.owner[self.n_symbols - 1] = self.current
        return self.n_symbols - 1

    def add(self, rule_id: int, alts: Rule) -> None:
        self.n_elements += sum(_size(a) for a in alts) + len(alts)
        if self.n_elements > MAX_ELEMENTS:
            _fail(f"more than {MAX_ELEMENTS} grammar elements after expanding repetitions")
        self.rules[rule_id] = alts

    def rule(self) -> None:
        self.current = self.name()
        rule_id = self.symbol(self.current)
        self.space(False)
        if self.src[self.pos : self.pos + 3] != "::=":
            raise _SyntaxError
        self.pos += 3
        self.space(True)
        self.add(rule_id, self.alternates(0, nested=False))
        if self.peek() == "\r":
            self.pos += 2 if self.peek(1) == "\n" else 1
        elif self.peek() == "\n":
            self.pos += 1
        elif self.peek():
            raise _SyntaxError
        self.space(True)

    def alternates(self, depth: int, nested: bool) -> Rule:
        alts = [self.sequence(depth, nested)]
        while self.peek() == "|":
            self.pos += 1
            self.space(True)
            alts.append(self.sequence(depth, nested))
        return alts

    def sequence(self, depth: int, nested: bool) -> list[int]:
        seq: list[int] = []
        last = 0  # where the item a repetition applies to starts
        while c := self.peek():
            start = len(seq)
            if c == '"':
                self.pos += 1
                n = 0
                while self.peek() != '"':
                    self.char()
                    n += 1
                self.pos += 1
                seq += [-n] if n else []
            elif c == "[":
                self.pos += 2 if self.peek(1) == "^" else 1
                n = 0
                while self.peek() != "]":
                    self.char()
                    n += 1
                    if self.peek() == "-" and self.peek(1) not in ("]", ""):
                        self.pos += 1
                        self.char()
                        n += 1
                self.pos += 1
                seq += [-n] if n else []
            elif c == "<" or c == "!":
                self.token()
                seq.append(-1)
            elif c in _WORD:
                seq.append(self.symbol(self.name()))
            elif c == "(":
                if depth + 1 > MAX_NESTING:
                    _fail(f"parentheses nested more than {MAX_NESTING} deep")
                self.pos += 1
                self.space(True)
                sub = self.symbol()
                self.add(sub, self.alternates(depth + 1, nested=True))
                if self.peek() != ")":
                    raise _SyntaxError
                self.pos += 1
                seq.append(sub)
            elif c == ".":
                self.pos += 1
                seq.append(-1)
            elif c in "*+?":
                self.pos += 1
                self.space(nested)
                self.repeat(seq, last, *{"*": (0, None), "+": (1, None), "?": (0, 1)}[c])
                continue
            elif c == "{":
                self.repeat(seq, last, *self.bounds(nested))
                continue
            else:
                break
            last = start
            self.space(nested)
        return seq

    def token(self) -> None:
        if self.peek() == "!":
            self.pos += 1
        if self.peek() != "<":
            raise _SyntaxError
        end = self.src.find(">", self.pos)
        if end < 0:
            raise _SyntaxError
        self.pos = end + 1

    def bounds(self, nested: bool) -> tuple[int, int | None]:
        text_start = self.pos
        self.pos += 1
        self.space(nested)
        lo = self.int()
        self.space(nested)
        hi: int | None = lo
        if self.peek() == ",":
            self.pos += 1
            self.space(nested)
            hi = self.int() if self.peek().isdigit() else None
            self.space(nested)
        if self.peek() != "}":
            raise _SyntaxError
        self.pos += 1
        text = self.src[text_start : self.pos]
        self.space(nested)
        if hi is not None and lo > hi:
            _fail(f"repetition {text} has a minimum above its maximum")
        if max(lo, hi or 0) > MAX_REPETITION:
            _fail(f"repetition {text} is over the limit of {MAX_REPETITION}")
        return lo, hi

    def repeat(self, seq: list[int], last: int, lo: int, hi: int | None) -> None:
        """Expand S{lo,hi} as llama.cpp does: S lo times, then hi - lo optional helper rules."""
        item = seq[last:]
        if not item:
            raise _SyntaxError
        if lo == 0:
            del seq[last:]
        else:
            self.n_elements += _size(item) * (lo - 1)
            if self.n_elements > MAX_ELEMENTS:
                _fail(f"more than {MAX_ELEMENTS} grammar elements after expanding repetitions")
            seq.extend(item * (lo - 1))
        prev = -1
        for i in range(1 if hi is None else hi - lo):
            rec = self.symbol()
            tail = [rec] if hi is None else [prev] if i > 0 else []
            self.add(rec, [item + tail, []])
            prev = rec
        if prev >= 0:
            seq.append(prev)


def _size(items: list[int]) -> int:
    """llama.cpp elements in a list of items (a terminal stands for several)."""
    return sum(-i if i < 0 else 1 for i in items)


def _check_leftmost(rules: dict[int, Rule], names: dict[int, str]) -> None:
    """Left recursion, the longest chain of leftmost references, and leftmost paths per rule.

    A rule that can match nothing lets the reference after it be leftmost too; unlike
    llama.cpp (which only counts a rule with a literally empty alternative), this
    follows that through any depth, so every count is an upper bound of llama.cpp's.
    """
    nullable = _nullable(rules)
    # rule -> its leftmost references, once per occurrence (paths multiply)
    edges: dict[int, list[int]] = {}
    for r, alts in rules.items():
        out = []
        for alt in alts:
            for item in alt:
                if item < 0:
                    break
                out.append(item)
                if item not in nullable:
                    break
        edges[r] = out

    chain: dict[int, int] = {}
    paths: dict[int, int] = {}
    on_path: set[int] = set()
    for start in rules:
        if start in chain:
            continue
        todo = [(start, 0)]  # iterative DFS: (rule, index of the next edge to follow)
        on_path.add(start)
        while todo:
            r, k = todo[-1]
            if k < len(edges[r]):
                todo[-1] = (r, k + 1)
                child = edges[r][k]
                if child in on_path:
                    _fail(f"left recursion through {names[child]}")
                if child not in chain:
                    on_path.add(child)
                    todo.append((child, 0))
                continue
            todo.pop()
            on_path.discard(r)
            chain[r] = 1 + max((chain[c] for c in edges[r]), default=0)
            paths[r] = _paths(rules[r], paths, nullable)
            if chain[r] > MAX_LEFT_CHAIN:
                _fail(f"a chain of leftmost rule references is over {MAX_LEFT_CHAIN} rules long")
            if paths[r] > MAX_START_PATHS:
                _fail(
                    f"{names[r]} starts in more than {MAX_START_PATHS} ways "
                    "(alternatives multiplied through leftmost references)"
                )


def _paths(alts: Rule, paths: dict[int, int], nullable: set[int]) -> int:
    total = 0
    for alt in alts:
        for item in alt:
            if item < 0:
                total += 1
                break
            total += paths[item]
            if item not in nullable:
                break
        else:
            total += 1  # matches nothing: the stack goes on after the reference
    return min(total, MAX_START_PATHS + 1)


def _nullable(rules: dict[int, Rule]) -> set[int]:
    """Rules that can match the empty string."""
    return _closure(rules, terminals_allowed=False)


def _closure(rules: dict[int, Rule], terminals_allowed: bool) -> set[int]:
    """Rules with an alternative made only of rules in the set (and terminals, if allowed).

    With terminals: the rules that can end at all. Without: those that can match
    nothing. A worklist, linear in the grammar's size.
    """
    pending: dict[tuple[int, int], int] = {}  # (rule, alt) -> references not yet in the set
    users: dict[int, list[tuple[int, int]]] = {}
    done: set[int] = set()
    work: list[int] = []
    for r, alts in rules.items():
        for a, alt in enumerate(alts):
            if not terminals_allowed and any(item < 0 for item in alt):
                continue
            refs = [item for item in alt if item >= 0]
            pending[(r, a)] = len(refs)
            for item in refs:
                users.setdefault(item, []).append((r, a))
            if not refs and r not in done:
                done.add(r)
                work.append(r)
    while work:
        for r, a in users.get(work.pop(), []):
            pending[(r, a)] -= 1
            if pending[(r, a)] == 0 and r not in done:
                done.add(r)
                work.append(r)
    return done
