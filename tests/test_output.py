"""The output stage: UTF-8-safe deltas and stop strings, without a model."""

from ferrousforge.engine.output import Detokenizer


def run(pieces: list[bytes], stop: list[str] | None = None) -> tuple[list[str], bool, str]:
    table = dict(enumerate(pieces))
    d = Detokenizer(lambda t: table[t], stop)
    deltas, stopped = [], False
    for t in range(len(pieces)):
        text, stopped = d.feed(t)
        deltas.append(text)
        if stopped:
            break
    deltas.append(d.flush())
    return deltas, stopped, "".join(deltas)


def test_multibyte_character_split_across_tokens_never_shows_replacement():
    data = "héllo 🙂 wörld".encode()
    pieces = [data[i : i + 1] for i in range(len(data))]  # one byte per token
    deltas, _, text = run(pieces)
    assert text == "héllo 🙂 wörld"
    assert all("\ufffd" not in d for d in deltas)


def test_incomplete_character_at_end_becomes_replacement_on_flush():
    _, _, text = run([b"ok", "é".encode()[:1]])
    assert text == "ok\ufffd"


def test_stop_string_across_tokens_is_not_sent():
    deltas, stopped, text = run([b"Hello", b" wor", b"ld", b" END", b"ING", b"more"], ["ENDING"])
    assert stopped
    assert text == "Hello world "
    assert "END" not in "".join(deltas)


def test_partial_stop_prefix_is_released_when_it_turns_out_not_to_match():
    deltas, stopped, text = run([b"a ST", b"OX b"], ["STOP"])
    assert not stopped
    assert text == "a STOX b"
    assert deltas[0] == "a "  # "ST" held back until known not to be "STOP"


def test_earliest_of_several_stop_strings_wins():
    _, stopped, text = run([b"one two three"], ["three", "two"])
    assert stopped and text == "one "


def test_stop_string_at_start_gives_empty_text():
    _, stopped, text = run([b"\n\nrest"], ["\n\n"])
    assert stopped and text == ""


def test_no_stop_strings_passes_text_straight_through():
    deltas, stopped, _ = run([b"a", b"b"])
    assert deltas[:2] == ["a", "b"] and not stopped
