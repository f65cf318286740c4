"""The model's generated text, streamed back as content, reasoning and tool calls.

Text arrives one token at a time, split anywhere (inside a marker, inside JSON). Content goes
out as soon as it cannot be the start of a call, reasoning as soon as it cannot be the close
marker, and a call once its JSON object is complete and its arguments validate against the
tool's schema. A complete object that fails (bad JSON, unknown tool, invalid arguments) comes
back as content, never as a call; a call the output ends inside (max_tokens) is dropped.

Everything is scanned once: each state looks only at text it has not decided yet, and a call
object's end is found by an incremental depth scan before ``json.loads`` sees it.
"""

from __future__ import annotations

import enum
import json
import logging
import re
from dataclasses import dataclass
from typing import Any

from ferrousforge.chat.formats import ToolFormat
from ferrousforge.chat.reasoning import ReasoningMarkers
from ferrousforge.chat.tools import MAX_TOOL_NAME, Tool, ToolCall, arguments_text

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ContentDelta:
    """Text for ``message.content``."""

    text: str


@dataclass(frozen=True, slots=True)
class ReasoningDelta:
    """Text for ``message.reasoning_content``."""

    text: str


@dataclass(frozen=True, slots=True)
class CallDelta:
    """One complete call whose arguments validated; ``index`` counts calls from 0."""

    index: int
    call: ToolCall


Event = ContentDelta | ReasoningDelta | CallDelta


@dataclass(slots=True)
class ParsedMessage:
    """A whole answer: what the stream of events adds up to."""

    content: str
    reasoning: str | None
    tool_calls: list[ToolCall]


# What a matcher answers besides a match (an index >= 0 just past it).
_FAIL, _PARTIAL, _CUT = -1, -2, -3
_WS_CHARS = " \t\r\n"
# Longest whitespace run inside a call's opening; longer is not a call (and keeps the text
# held back while undecided short). The grammars write at most 21.
_MAX_WS = 64


class _Ws:
    """A whitespace step in a literal sequence."""


_WS = _Ws()
_BARE_START = ("{", _WS, '"name"', _WS, ":", _WS, '"')
_RESPONSE_START = ("{", _WS, '"response"', _WS, ":", _WS, '"')
_CALLS_START = ("{", _WS, '"tool_calls"', _WS, ":", _WS, "[")
_JSON_OUTSIDE = re.compile(r'[{}\[\]"]')
_JSON_INSIDE = re.compile(r'["\\]')
_SIMPLE_ESCAPES = {
    '"': '"',
    "\\": "\\",
    "/": "/",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
}
# What may still become the low half of a surrogate pair (``\udc00``-``\udfff``).
_LOW_HALF_PREFIX = re.compile(r"(\\(u([dD]([c-fC-F][0-9a-fA-F]{0,2})?)?)?)?")
_HEX = frozenset("0123456789abcdefABCDEF")


def _match_seq(buf: str, i: int, steps: tuple[str | _Ws, ...], final: bool) -> int:
    """Match literals and whitespace at ``buf[i:]``: the index after them, ``_PARTIAL`` if the
    text ends inside them (and more may come), else ``_FAIL``."""
    n = len(buf)
    for step in steps:
        if isinstance(step, _Ws):
            start = i
            while i < n and buf[i] in _WS_CHARS:
                i += 1
            if i - start > _MAX_WS:
                return _FAIL
            if i == n:
                return _FAIL if final else _PARTIAL
            continue
        m = min(len(step), n - i)
        if buf[i : i + m] != step[:m]:
            return _FAIL
        if m < len(step):
            return _FAIL if final else _PARTIAL
        i += m
    return i


def _match_name(buf: str, i: int, names: dict[str, Tool], final: bool) -> int:
    """An offered tool's name then ``"`` at ``buf[i:]`` (same answers as ``_match_seq``)."""
    end = buf.find('"', i, i + MAX_TOOL_NAME + 1)
    if end >= 0:
        return end + 1 if buf[i:end] in names else _FAIL
    part = buf[i : i + MAX_TOOL_NAME + 1]
    if final or len(part) > MAX_TOOL_NAME or not any(t.startswith(part) for t in names):
        return _FAIL
    return _PARTIAL


def _held_suffix(text: str, marker: str) -> int:
    """Length of the longest end of ``text`` that is a proper start of ``marker``."""
    for k in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-k:]):
            return k
    return 0


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _loads(text: str) -> Any:
    """Strict JSON (no NaN/Infinity, which would not survive as arguments text), or None."""
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        return None


def _hex4(buf: str, k: int) -> int | None:
    """The 4 hex digits at ``buf[k:]``: their value, None while incomplete, -1 if not hex."""
    digits = buf[k : k + 4]
    if not all(c in _HEX for c in digits):
        return -1
    return int(digits, 16) if len(digits) == 4 else None


def _decode_escape(buf: str, j: int) -> tuple[str, int] | None:
    """The JSON escape at ``buf[j]`` (a backslash): its text and the index after it, or None
    while the text ends inside it. A lone surrogate becomes U+FFFD; a bad escape stays raw."""
    n = len(buf)
    if j + 1 >= n:
        return None
    c = buf[j + 1]
    if c != "u":
        return _SIMPLE_ESCAPES.get(c, "\\" + c), j + 2
    code = _hex4(buf, j + 2)
    if code is None:
        return None
    if code < 0:
        return buf[j : j + 2], j + 2
    if 0xDC00 <= code < 0xE000:
        return "\ufffd", j + 6
    if not 0xD800 <= code < 0xDC00:
        return chr(code), j + 6
    tail = buf[j + 6 : j + 12]
    if len(tail) < 6:
        return None if _LOW_HALF_PREFIX.fullmatch(tail) else ("\ufffd", j + 6)
    low = _hex4(tail, 2) if tail.startswith("\\u") else -1
    if low is None or not 0xDC00 <= low < 0xE000:
        return "\ufffd", j + 6
    return chr(0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)), j + 12


class _State(enum.Enum):
    THINK_START = enum.auto()  # the output may open a reasoning block
    THINK = enum.auto()  # inside the reasoning block
    CONTENT = enum.auto()  # free text; looking for the start of a call
    GENERIC_START = enum.auto()  # generic format: which JSON object the answer is
    RESPONSE = enum.auto()  # generic: inside the "response" string
    RESPONSE_END = enum.auto()  # generic: after that string
    GROUP_OPEN = enum.auto()  # after a start marker: "[" or the call object
    GROUP_NEXT = enum.auto()  # inside a JSON array of calls: an object or "]"
    ELEMENT = enum.auto()  # inside one call object
    GROUP_AFTER = enum.auto()  # after a valid call object
    GROUP_CLOSE = enum.auto()  # generic: after the calls' "]", before "}"


class ChatParser:
    """Incremental parser of one generation: ``feed`` each text delta, then ``finish``.

    ``fmt`` None parses no calls (``tool_choice`` none, or no tools). ``reasoning`` None
    extracts no reasoning; ``in_reasoning`` says the prompt already opened the block.
    ``parallel`` False returns only the first call.
    """

    def __init__(
        self,
        fmt: ToolFormat | None,
        tools: list[Tool],
        *,
        reasoning: ReasoningMarkers | None,
        in_reasoning: bool = False,
        parallel: bool = True,
    ) -> None:
        self._fmt = fmt
        self._tools = {t.name: t for t in tools}
        self._marks = reasoning
        self._parallel = parallel
        self._generic = fmt is not None and fmt.name == "generic"
        self._start = fmt.start if fmt is not None and not self._generic else None
        self._bare = fmt is not None and not self._generic and bool(self._tools)
        starts = {self._start[0]} if self._start else set()
        if self._bare:
            starts |= {"{", "`"}
        chars = "".join(re.escape(c) for c in sorted(starts))
        self._starts = re.compile(f"[{chars}]") if chars else None

        self._buf = ""
        self._pos = 0  # text before it is decided
        self._scan = 0  # per state: where to go on looking
        self._final = False
        self._out: list[Event] = []
        self._ws: list[str] = []  # content whitespace held until we know it is not around a call
        self._lead_drop = False  # drop the whitespace that starts the next content
        self._after_call = False  # drop separators, whitespace and a closing fence
        self._calls = 0
        self._structured = False  # a call or a generic response came: drop trailing whitespace
        # The group of calls being parsed: a marker (or fence) and the calls it holds.
        self._g_prefix = ""  # its opening text, content if its first call fails
        self._g_ok = False  # it has held a valid call (its syntax is then dropped)
        self._g_array = False
        self._g_generic = False
        self._g_end: str | None = None
        self._depth = 0
        self._in_string = False

        if reasoning is not None and in_reasoning:
            self._state = _State.THINK
        elif reasoning is not None:
            self._state = _State.THINK_START
        else:
            self._state = self._answer_state()
        self._handlers = {
            _State.THINK_START: self._think_start,
            _State.THINK: self._think,
            _State.CONTENT: self._content_state,
            _State.GENERIC_START: self._generic_start,
            _State.RESPONSE: self._response,
            _State.RESPONSE_END: self._response_end,
            _State.GROUP_OPEN: self._group_open,
            _State.GROUP_NEXT: self._group_next,
            _State.ELEMENT: self._element,
            _State.GROUP_AFTER: self._group_after,
            _State.GROUP_CLOSE: self._group_close,
        }

    def feed(self, text: str) -> list[Event]:
        """Events for one more piece of generated text (text that may still be a marker's or
        a call's start is held back)."""
        if text:
            self._buf += text
            self._run()
            self._compact()
        return self._take()

    def finish(self) -> list[Event]:
        """End of generation: decide what is held back (an unfinished call is content)."""
        self._final = True
        self._run()
        if self._ws and not self._structured:
            self._push(ContentDelta, "".join(self._ws))
        self._ws.clear()
        self._buf, self._pos, self._scan = "", 0, 0
        return self._take()

    # --- plumbing -----------------------------------------------------------------------

    def _run(self) -> None:
        # Each handler returns True when it moved to another state and the next should look.
        while self._handlers[self._state]():
            pass

    def _compact(self) -> None:
        cut = self._pos
        if cut:
            self._buf = self._buf[cut:]
            self._pos = 0
            self._scan = max(self._scan - cut, 0)

    def _take(self) -> list[Event]:
        out, self._out = self._out, []
        return out

    def _push(self, cls: type[ContentDelta] | type[ReasoningDelta], text: str) -> None:
        if not text:
            return
        if self._out and type(self._out[-1]) is cls:
            self._out[-1] = cls(self._out[-1].text + text)  # type: ignore[union-attr]
        else:
            self._out.append(cls(text))

    def _content(self, text: str) -> None:
        """Text that is certainly content; whitespace waits for what follows it (it is
        dropped before a call, after reasoning and, at the end, after a call)."""
        if self._lead_drop:
            text = text.lstrip()
            if not text:
                return
            self._lead_drop = False
        body = text.rstrip()
        if not body:
            if text:
                self._ws.append(text)
            return
        held = "".join(self._ws)
        self._ws.clear()
        self._push(ContentDelta, held + body)
        if len(body) < len(text):
            self._ws.append(text[len(body) :])

    def _goto(self, state: _State, pos: int | None = None) -> bool:
        if pos is not None:
            self._pos = pos
        self._scan = self._pos
        self._state = state
        return True

    def _answer_state(self) -> _State:
        return _State.GENERIC_START if self._generic else _State.CONTENT

    def _skip_ws(self, i: int) -> int:
        buf, n = self._buf, len(self._buf)
        while i < n and buf[i] in _WS_CHARS:
            i += 1
        return i

    # --- reasoning ----------------------------------------------------------------------

    def _think_start(self) -> bool:
        assert self._marks is not None
        opener, buf = self._marks.open, self._buf
        i = self._scan = self._skip_ws(self._scan)
        if buf.startswith(opener, i):
            return self._goto(_State.THINK, i + len(opener))
        rest = len(buf) - i
        if not self._final and rest < len(opener) and buf.startswith(opener[:rest], i):
            return False
        return self._goto(self._answer_state())  # no block: all of it is the answer

    def _think(self) -> bool:
        assert self._marks is not None
        close, buf, pos = self._marks.close, self._buf, self._pos
        k = buf.find(close, pos)
        if k >= 0:
            self._push(ReasoningDelta, buf[pos:k])
            self._lead_drop = True
            return self._goto(self._answer_state(), k + len(close))
        end = len(buf) if self._final else len(buf) - _held_suffix(buf[-len(close) :], close)
        end = max(end, pos)
        self._push(ReasoningDelta, buf[pos:end])
        self._pos = self._scan = end
        return False

    # --- content and the start of calls -------------------------------------------------

    def _content_state(self) -> bool:
        if self._after_call and not self._skip_after_call():
            return False
        buf = self._buf
        while True:
            m = self._starts.search(buf, self._scan) if self._starts else None
            if m is None:
                self._content(buf[self._pos :])
                self._pos = self._scan = len(buf)
                return False
            c = m.start()
            kind, at = self._call_start(c)
            if kind == _FAIL:
                self._scan = c + 1
                continue
            self._content(buf[self._pos : c])
            self._pos = self._scan = c
            if kind == _PARTIAL:
                return False
            if kind == _CUT:
                self._pos = self._scan = len(buf)
                return False
            return self._open_group(kind, at)

    def _skip_after_call(self) -> bool:
        """Drop whitespace, separators and closing fences after a call; False: wait."""
        buf, n, i = self._buf, len(self._buf), self._pos
        while True:
            while i < n and buf[i] in " \t\r\n,;":
                i += 1
            if i < n and buf[i] == "`":
                kind, _ = self._fence(i)
                if kind == _PARTIAL:
                    self._pos = self._scan = i
                    return False
                after = buf[i + 3 : i + 4]
                if kind == _FAIL and buf.startswith("```", i) and not after.isalpha():
                    i += 3
                    continue
            break
        self._pos = self._scan = i
        if i == n:
            return False
        self._after_call = False
        return True

    def _call_start(self, c: int) -> tuple[int, int]:
        """Whether a call starts at ``buf[c]``: (``_FAIL`` | ``_PARTIAL``, 0), or
        (1, index after a start marker), or (2, index of a bare call's ``{``)."""
        buf, ch = self._buf, self._buf[c]
        if self._start and ch == self._start[0]:
            r = _match_seq(buf, c, (self._start,), self._final)
            if r != _FAIL:
                return (1, r) if r >= 0 else (_PARTIAL, 0)
            if self._final and self._calls and self._start.startswith(buf[c:]):
                return _CUT, 0  # max_tokens cut the next call's marker: syntax, not text
        if ch == "`":
            return self._fence(c)
        if ch == "{":
            r = self._bare_at(c)
            return (2, c) if r >= 0 else (r, 0)
        return _FAIL, 0

    def _bare_at(self, i: int) -> int:
        r = _match_seq(self._buf, i, _BARE_START, self._final)
        return r if r < 0 else _match_name(self._buf, r, self._tools, self._final)

    def _fence(self, i: int) -> tuple[int, int]:
        """A markdown fence (```` ``` ```` or ```` ```json ````) opening a bare call."""
        buf, final = self._buf, self._final
        r = _match_seq(buf, i, ("```",), final)
        if r < 0:
            return r, 0
        word = buf[r : r + 4].lower()
        if word == "json":
            r += 4
        elif len(word) < 4 and "json".startswith(word) and not final:
            return _PARTIAL, 0
        j = self._skip_ws(r)
        if j - r > _MAX_WS:
            return _FAIL, 0
        if j == len(buf):
            return (_FAIL if final else _PARTIAL), 0
        if buf[j] != "{":
            return _FAIL, 0
        b = self._bare_at(j)
        return (2, j) if b >= 0 else (b, 0)

    def _open_group(self, kind: int, at: int) -> bool:
        fmt = self._fmt
        per_call = kind == 1 and fmt is not None and fmt.per_call
        self._begin_group(at, end=fmt.end if per_call and fmt is not None else None)
        if kind == 1:
            return self._goto(_State.GROUP_OPEN, at)
        return self._start_element(at)

    def _begin_group(self, at: int, *, end: str | None = None) -> None:
        """Calls may start at ``at``: the held whitespace and the text from pos are their
        opening, dropped with the first valid call, content if there is none."""
        self._g_prefix = "".join(self._ws) + self._buf[self._pos : at]
        self._ws.clear()
        self._g_ok = self._g_array = self._g_generic = False
        self._g_end = end

    def _fail_group(self) -> bool:
        """The group's opening is not followed by calls: it was content."""
        self._content(self._g_prefix)
        self._g_prefix = ""
        return self._goto(_State.CONTENT)

    def _cut_short(self) -> bool:
        """Generation ended inside a call (max_tokens): the grammar had it, so it is no
        text the model meant to say, and not a call either; it is dropped."""
        log.debug("generation ended inside a call: %.300r", self._g_prefix + self._buf[self._pos :])
        self._g_prefix = ""
        return self._end_group(len(self._buf))

    def _end_group(self, pos: int) -> bool:
        self._after_call = True
        return self._goto(_State.CONTENT, pos)

    # --- groups of calls ----------------------------------------------------------------

    def _hold_ws(self) -> int:
        """Skip whitespace at pos, keeping it in the group's opening while that may be
        content still; the index of what follows."""
        i = self._skip_ws(self._pos)
        if not self._g_ok:
            self._g_prefix += self._buf[self._pos : i]
        self._pos = self._scan = i
        return i

    def _group_open(self) -> bool:
        i = self._hold_ws()
        if i == len(self._buf):
            return self._cut_short() if self._final else False
        c = self._buf[i]
        if c == "[":
            self._g_prefix += c
            self._g_array = True
            return self._goto(_State.GROUP_NEXT, i + 1)
        if c == "{":
            return self._start_element(i)
        return self._fail_group()

    def _group_next(self) -> bool:
        i = self._hold_ws()
        if i == len(self._buf):
            if not self._final:
                return False
            return self._end_group(i) if self._g_ok else self._cut_short()
        c = self._buf[i]
        if c == "{":
            return self._start_element(i)
        if c == "]" and self._g_ok:
            return self._close_array(i + 1)
        return self._end_group(i) if self._g_ok else self._fail_group()

    def _group_after(self) -> bool:
        buf = self._buf
        i = self._skip_ws(self._pos)
        self._pos = self._scan = i
        if i == len(buf):
            return self._end_group(i) if self._final else False
        if self._g_array:
            if buf[i] == ",":
                return self._goto(_State.GROUP_NEXT, i + 1)
            if buf[i] == "]":
                return self._close_array(i + 1)
        elif self._g_end:
            r = _match_seq(buf, i, (self._g_end,), self._final)
            if r == _PARTIAL:
                return False
            if r >= 0:
                i = r
            elif self._final and self._g_end.startswith(buf[i:]):
                i = len(buf)  # max_tokens cut the end marker: call syntax, not content
        return self._end_group(i)

    def _close_array(self, pos: int) -> bool:
        if self._g_generic:
            return self._goto(_State.GROUP_CLOSE, pos)
        self._g_array = False  # what may follow is the group's end marker
        return self._goto(_State.GROUP_AFTER, pos)

    def _group_close(self) -> bool:
        i = self._skip_ws(self._pos)
        self._pos = self._scan = i
        if i == len(self._buf):
            return self._end_group(i) if self._final else False
        return self._end_group(i + 1 if self._buf[i] == "}" else i)

    # --- one call object ----------------------------------------------------------------

    def _start_element(self, i: int) -> bool:
        self._depth, self._in_string = 0, False
        return self._goto(_State.ELEMENT, i)

    def _element(self) -> bool:
        end = self._object_end()
        buf, pos = self._buf, self._pos
        if end is None:
            if not self._final:
                return False
            return self._cut_short()
        call = self._parse_call(buf[pos:end])
        if call is None:
            return self._bad_element(end)
        self._g_ok, self._g_prefix, self._structured = True, "", True
        if self._calls == 0 or self._parallel:
            self._out.append(CallDelta(self._calls, call))
        else:
            log.debug("parallel_tool_calls is false: dropped a further call to %s", call.name)
        self._calls += 1
        return self._goto(_State.GROUP_AFTER, end)

    def _bad_element(self, end: int) -> bool:
        raw = self._buf[self._pos : end]
        if self._g_ok:  # later calls of a valid group: only this object is content
            self._content(raw)
            return self._goto(_State.GROUP_AFTER, end)
        self._content(self._g_prefix + raw)
        self._g_prefix = ""
        return self._goto(_State.CONTENT, end)

    def _object_end(self) -> int | None:
        """Index just past the JSON value starting at pos (string- and escape-aware), or None
        while it is open; resumes where the last call stopped."""
        buf, i, n = self._buf, self._scan, len(self._buf)
        depth, in_string = self._depth, self._in_string
        end = None
        while i < n:
            if in_string:
                m = _JSON_INSIDE.search(buf, i)
                if m is None:
                    i = n
                    break
                i = m.start()
                if buf[i] == "\\":
                    if i + 1 == n:
                        break  # resume at the backslash
                    i += 2
                    continue
                in_string = False
                i += 1
                continue
            m = _JSON_OUTSIDE.search(buf, i)
            if m is None:
                i = n
                break
            ch, i = m.group(), m.end()
            if ch == '"':
                in_string = True
            elif ch in "{[":
                depth += 1
            else:
                depth -= 1
                if depth == 0:
                    end = i
                    break
        self._scan, self._depth, self._in_string = i, depth, in_string
        return end

    def _parse_call(self, raw: str) -> ToolCall | None:
        """The call ``raw`` makes, if it is one: an offered tool and valid arguments."""
        obj = _loads(raw)
        if not isinstance(obj, dict):
            log.debug("not a call object: %.200s", raw)
            return None
        name = obj.get("name")
        tool = self._tools.get(name) if isinstance(name, str) else None
        if tool is None:
            log.debug("call to a tool that was not offered: %.100r", name)
            return None
        args = obj["arguments"] if "arguments" in obj else obj.get("parameters")
        if args is None:
            args = {}
        elif isinstance(args, str):
            args = _loads(args)
        if not isinstance(args, dict):
            log.debug("arguments of %s are not an object", name)
            return None
        try:
            why = tool.check_arguments(args)
        except RecursionError:
            why = "nested too deeply"
        if why is not None:
            log.debug("arguments of %s do not validate: %s", name, why)
            return None
        return ToolCall(tool.name, arguments_text(args))

    # --- the generic format: one JSON object --------------------------------------------

    def _generic_start(self) -> bool:
        buf, final = self._buf, self._final
        i = self._scan = self._skip_ws(self._scan)
        if i == len(buf):
            return self._goto(_State.CONTENT) if final else False
        if buf[i] != "{":
            return self._goto(_State.CONTENT)
        r = _match_seq(buf, i, _RESPONSE_START, final)
        if r >= 0:
            self._structured = True
            return self._goto(_State.RESPONSE, r)
        c = _match_seq(buf, i, _CALLS_START, final)
        if c >= 0:
            self._begin_group(c)
            self._g_array = self._g_generic = True
            return self._goto(_State.GROUP_NEXT, c)
        if _PARTIAL in (r, c):
            return False
        return self._goto(_State.CONTENT)  # some other text or JSON: content as written

    def _response(self) -> bool:
        buf, pos = self._buf, self._pos
        while True:
            m = _JSON_INSIDE.search(buf, pos)
            if m is None:
                self._push(ContentDelta, buf[pos:])
                self._pos = len(buf)
                return False
            j = m.start()
            self._push(ContentDelta, buf[pos:j])
            if buf[j] == '"':
                return self._goto(_State.RESPONSE_END, j + 1)
            decoded = _decode_escape(buf, j)
            if decoded is None:  # the text ends inside an escape: wait (or drop it at the end)
                self._pos = len(buf) if self._final else j
                return False
            text, pos = decoded
            self._push(ContentDelta, text)
            self._pos = pos

    def _response_end(self) -> bool:
        i = self._skip_ws(self._pos)
        self._pos = i
        if i == len(self._buf):
            return False
        return self._goto(_State.CONTENT, i + 1 if self._buf[i] == "}" else i)


def parse_message(
    text: str,
    fmt: ToolFormat | None,
    tools: list[Tool],
    *,
    reasoning: ReasoningMarkers | None,
    in_reasoning: bool = False,
    parallel: bool = True,
) -> ParsedMessage:
    """A whole generated text at once (the non-streaming path; the same as streaming it)."""
    parser = ChatParser(
        fmt, tools, reasoning=reasoning, in_reasoning=in_reasoning, parallel=parallel
    )
    events = parser.feed(text) + parser.finish()
    content = "".join(e.text for e in events if isinstance(e, ContentDelta))
    thought = "".join(e.text for e in events if isinstance(e, ReasoningDelta))
    calls = [e.call for e in events if isinstance(e, CallDelta)]
    return ParsedMessage(content, thought or None, calls)
