"""The Detokenizer's hold-back rules, exhaustively and without a model.

A stop string must never reach the client, not even its first characters: any text
that could still turn into a stop string is held until the next piece decides it.
"""

from __future__ import annotations

import pytest

from ferrousforge.engine.output import Detokenizer

STOPS = ["STOP", "</s>", "ab ab!", "\n\nUser:", "éé€"]


def detok(pieces: list[bytes], stop: list[str]) -> Detokenizer:
    table = dict(enumerate(pieces))
    return Detokenizer(lambda t: table[t], stop)


@pytest.mark.parametrize("stop", STOPS)
def test_every_proper_prefix_of_a_stop_string_is_held_back_whole(stop: str) -> None:
    for k in range(1, len(stop)):
        prefix = stop[:k]
        # The next piece rules the stop string out: a character that cannot continue it.
        breaker = "#"
        d = detok([("text " + prefix).encode(), breaker.encode()], [stop])
        sent, stopped = d.feed(0)
        assert (sent, stopped) == ("text ", False), f"held {prefix!r} only partly"
        released, stopped = d.feed(1)
        assert (released, stopped) == (prefix + breaker, False)
        assert d.flush() == ""


@pytest.mark.parametrize("stop", STOPS)
def test_a_stop_string_fed_one_character_per_token_is_never_sent(stop: str) -> None:
    pieces = [c.encode() for c in "say " + stop + " more"]
    d = detok(pieces, [stop])
    out, stopped = "", False
    for t in range(len(pieces)):
        text, stopped = d.feed(t)
        out += text
        if stopped:
            break
    assert stopped and d.stopped_on == stop
    assert out == "say "


@pytest.mark.parametrize("stop", STOPS)
def test_a_stop_string_fed_one_byte_per_token_is_never_sent(stop: str) -> None:
    data = ("say " + stop + " more").encode()
    pieces = [data[i : i + 1] for i in range(len(data))]
    d = detok(pieces, [stop])
    out = ""
    for t in range(len(pieces)):
        text, stopped = d.feed(t)
        assert "\ufffd" not in text
        out += text
        if stopped:
            break
    assert stopped and out == "say "


def test_held_prefix_is_released_at_the_end_of_generation() -> None:
    d = detok([b"the end is </"], ["</s>"])
    assert d.feed(0) == ("the end is ", False)
    assert d.flush() == "</"


def test_the_longest_matching_prefix_of_any_stop_string_is_held() -> None:
    # "xSTO" ends with "STO" (prefix of STOP) and with "O" (prefix of "OK!"): hold 3.
    d = detok([b"xSTO", b"P"], ["OK!", "STOP"])
    assert d.feed(0) == ("x", False)
    assert d.feed(1) == ("", True) and d.stopped_on == "STOP"


def test_overlapping_prefix_after_a_false_start_is_still_held() -> None:
    # "ab ab" is a prefix of "ab ab!"; after "ab ab ab" only the last "ab ab" can still match.
    d = detok([b"ab ab", b" ab", b"!"], ["ab ab!"])
    assert d.feed(0) == ("", False)
    assert d.feed(1) == ("ab ", False)
    assert d.feed(2) == ("", True)


def test_multibyte_character_split_across_tokens_inside_a_held_prefix() -> None:
    stop = "éé€"
    data = ("x" + stop).encode()
    # "x", then "é" split over two tokens, then the second "é", then "€" split in three.
    pieces = [data[0:1], data[1:2], data[2:3], data[3:5], data[5:6], data[6:7], data[7:8]]
    d = detok(pieces, [stop])
    sent = [d.feed(t) for t in range(len(pieces))]
    assert "".join(s for s, _ in sent) == "x"
    assert sent[-1][1] and all(not s for _, s in sent[:-1])
    assert all("\ufffd" not in s for s, _ in sent)


def test_multibyte_text_that_rules_a_stop_out_is_released_intact() -> None:
    d = detok(["é".encode()[:1], "é".encode()[1:] + "ü".encode()[:1], "ü".encode()[1:]], ["éx"])
    assert d.feed(0) == ("", False)  # an incomplete character is never sent
    assert d.feed(1) == ("", False)  # "é" could start "éx", and "ü" is incomplete
    assert d.feed(2) == ("éü", False)
    assert d.flush() == ""


def test_stop_string_spanning_three_tokens_cuts_exactly_at_its_start() -> None:
    d = detok([b"Hello wo", b"rld\n", b"\nUs", b"er: hi"], ["\n\nUser:"])
    out = [d.feed(t) for t in range(4)]
    assert [s for s, _ in out] == ["Hello wo", "rld", "", ""]
    assert [stopped for _, stopped in out] == [False, False, False, True]
    assert d.flush() == ""
    assert d.feed(0) == ("", True)  # nothing after a stop
