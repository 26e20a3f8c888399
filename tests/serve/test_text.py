"""Streamed text and stop sequences, token by token (no model needed)."""

from __future__ import annotations

from serve.text import TextStream


def stream(pieces: list[str], stops: tuple[str, ...] = ()) -> tuple[list[str], TextStream]:
    """Feed one 'token' per piece; the fake decoder joins the pieces so far."""
    text = TextStream(lambda ids: "".join(pieces[i] for i in ids), stops)
    deltas = []
    for i in range(len(pieces)):
        deltas.append(text.push(i))
        if text.stopped:
            break
    deltas.append(text.flush())
    return [d for d in deltas if d], text


def test_without_stops_every_token_is_shown_at_once():
    deltas, text = stream(["Hel", "lo", " world"])
    assert deltas == ["Hel", "lo", " world"]
    assert text.text == "Hello world" and not text.stopped


def test_a_stop_split_across_tokens_is_held_back_and_cut():
    deltas, text = stream(["Hello", " EN", "D", " more"], stops=("END",))
    assert "".join(deltas) == "Hello "
    assert text.text == "Hello " and text.stopped


def test_a_false_alarm_is_released_when_the_next_token_settles_it():
    deltas, _ = stream(["a E", "N", "x", "y"], stops=("END",))
    assert deltas == ["a ", "ENx", "y"]


def test_the_earliest_of_several_stops_wins():
    _, text = stream(["one two three"], stops=("three", "two"))
    assert text.text == "one "


def test_half_a_character_waits_for_its_other_half():
    # Byte-level tokenizers decode an incomplete character as U+FFFD.
    decoded = ["caf", "caf\ufffd", "caf\u00e9", "caf\u00e9!"]
    text = TextStream(lambda ids: decoded[len(ids) - 1])
    assert [text.push(i) for i in range(4)] == ["caf", "", "\u00e9", "!"]


def test_text_before_the_stop_is_never_taken_back():
    pieces = ["ab", "c", "abc", "d"]
    deltas, text = stream(pieces, stops=("cd",))
    shown = "".join(deltas)
    assert text.text.startswith(shown) and shown == text.text == "abcab"
