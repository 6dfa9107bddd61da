"""A reasoning model's thoughts left out of its answer, whole (`without_thinking`) and streaming (`AnswerStream`)."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mrag.generate.thinking import END, LONE_END, THINKING, AnswerStream


def shown(pieces: list[str]) -> str:
    """All an `AnswerStream` shows of a reply cut into `pieces`."""
    stream = AnswerStream()
    return "".join(stream.feed(p) for p in pieces) + stream.finish()


def as_read_whole(reply: str) -> str:
    """What `AnswerStream` shows, as the regexes read the whole reply: the answer after an opening block; the
    thoughts before a lone </think>, a blank line and the answer; else the reply; each stripped."""
    if block := THINKING.match(reply):
        return reply[block.end():].strip()
    if lone := LONE_END.match(reply):
        thoughts = reply[:[*END.finditer(reply, 0, lone.end())][-1].start()].strip()
        answer = reply[lone.end():].strip()
        return thoughts + ("\n\n" if thoughts and answer else "") + answer
    return reply.strip()


@pytest.mark.parametrize(("pieces", "expected"), [
    (["<thi", "nk>Is [2] about water? No.", "</think>", "Water ran downhill [1]."], "Water ran downhill [1]."),
    (["Is [2] about water? No.", "\n</think>\n", "Water ran downhill [1]."],
     "Is [2] about water? No.\n\nWater ran downhill [1]."),
    # the reviewer's stream: a lone </think> as a piece of its own printed the thoughts twice
    (["Is [2] about water? No.\n", "</think>", " ", "and more thoughts\n", "</think>", "\n", "Water [1]."],
     "Is [2] about water? No.\n</think> and more thoughts\n\nWater [1]."),
    (["Thoughts </thi", "nk", ">\nWater [1]."], "Thoughts\n\nWater [1]."),  # a tag cut in three: none of it shown
    (["Wrap tokens in <think></think>; ", "the answer [1]."], "Wrap tokens in <think></think>; the answer [1]."),
    (["<think>Is [2] about water? Still thinking"], ""),  # its tokens ran out while it thought
    (["  <reasoning>x</REASONING>\n\n", "Bees [1].\n"], "Bees [1]."),
    (["<thi"], "<thi"),  # the reply ended before it could open a block
    (["All thoughts\n", "</think>"], "All thoughts"),  # a lone </think> ends the reply: no answer
])
def test_an_answer_stream_by_hand(pieces, expected):
    assert shown(pieces) == expected == as_read_whole("".join(pieces))


TOKENS = ["<think>", "</think>", "<thinking>", "</thinking>", "<THINK>", "</Think>", "<reasoning>", "</reasoning>",
          "<", "/", ">", "think", "</thi", "nk>", "\n", "\r\n", "\r", " ", "\t", "a", "[1]", "bees",
          "<th\u0130nk>", "</th\u0131nk>", "\u212a", "\x1c", "\u3000"]  # re.I matches İ and ı to i, K to k


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(TOKENS), max_size=14), st.lists(st.integers(0, 80), max_size=10))
def test_an_answer_stream_shows_the_same_however_the_reply_is_cut(tokens, cuts):
    """Cut anywhere (a tag in two, a line break from its </think>), a reply shows as it reads whole."""
    reply = "".join(tokens)
    at = sorted({min(c, len(reply)) for c in cuts})
    pieces = [reply[i:j] for i, j in zip([0, *at], [*at, len(reply)])]
    assert shown(pieces) == shown([reply]) == as_read_whole(reply)
    assert shown(list(reply)) == as_read_whole(reply)  # one character at a time


def test_an_answer_stream_keeps_only_an_undecided_tail():
    """Each piece is read once: a long answer, or a long open block, leaves a few characters pending."""
    stream = AnswerStream()
    for _ in range(2000):
        stream.feed("Bees fan their wings [1] ")
    assert len(stream.pending) + len(stream.held) <= 1
    block = AnswerStream()
    block.feed("<think>")
    for _ in range(2000):
        assert block.feed("still thinking about [2]\n") == ""
    assert len(block.pending) <= len("</think>")
    assert block.feed("</think>Bees [1].") == "Bees [1]." and block.finish() == ""


@pytest.mark.parametrize("reply", [["Bees [1]."] + [" "] * 3000 + ["\n"] * 3000 + ["done"],
                                   [" "] * 3000 + ["\n"] * 3000 + ["Bees [1]."],
                                   ["thoughts </think>"] + [" "] * 3000 + ["\n", "Bees [1]."]])
def test_an_answer_stream_keeps_a_run_of_white_space_as_pieces(reply):
    """A reviewer's run: 80,000 spaces, one a piece, took 19 s after a </think> (each piece re-read the run)."""
    stream = AnswerStream()
    out = [stream.feed(piece) for piece in reply[:-2]]
    assert len(stream.pending) <= len("thoughts </think>") and "".join(out) in ("", "Bees [1].", "thoughts")
    out += [stream.feed(piece) for piece in reply[-2:]] + [stream.finish()]
    assert "".join(out) == as_read_whole("".join(reply))
