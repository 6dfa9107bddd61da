"""A reasoning model's thoughts, told apart from its answer: in a whole reply (`without_thinking`) and in one
streaming in (`AnswerStream`, what `mrag ask` prints)."""

from __future__ import annotations

import re

# a reasoning model's thoughts: a block the reply opens with (one left open runs to the end), or all before a lone
# </think> that ends its line (a chat template that opened the block itself); never a tag the answer mentions
THINKING = re.compile(r"\A\s*<(think|thinking|reasoning)>.*?(?:</\1>|\Z)", re.S | re.I)
LONE_END = re.compile(r"\A(?:(?!<think>).)*?</think>[ \t]*(?:\r?\n|\Z)", re.S | re.I)
OPENING_TAGS = ("<think>", "<thinking>", "<reasoning>")
END, OPENING = re.compile("</think>", re.I), re.compile("<think>", re.I)


def without_thinking(text: str) -> str:
    """A reasoning model's reply less its thoughts (`THINKING`, `LONE_END`); an answer that mentions the tags
    keeps them.  "<think>Is [3] about bees? No.</think>Bees fan [2]." -> "Bees fan [2]." """
    stripped = THINKING.sub("", text, count=1)
    return LONE_END.sub("", stripped, count=1) if stripped == text else stripped


class AnswerStream:
    """A reply streaming in, shown as it comes: print what `feed` returns for each piece, then what `finish`
    returns. However the reply is cut into pieces, what is shown is the same:
      - a block the reply opens with is not shown, and the answer after it is;
      - thoughts that end at a lone </think> (a block the chat template opened) read as an answer until that
        tag comes: they are shown, and the answer follows them after a blank line;
      - else the reply, which is the answer;
    each stripped of white space at either end. Nothing shown is taken back: a tail that may still be a tag, or
    a </think> whose line has not ended, waits for the pieces that decide it, and white space for the text after
    it. Only that tail is kept, so each piece costs the same however long the reply grows.
    Example: "Is [2] about bees? No." + "\\n</think>\\n" + "Bees [1]." -> "Is [2] about bees? No.\\n\\nBees [1]."
    """

    def __init__(self) -> None:
        self.phase = "start"  # start -> block -> answer, or start -> text (-> answer at a lone </think>)
        self.pending = ""  # text come and not shown yet
        self.closing: re.Pattern[str] | None = None  # the closing tag of the block the reply opened
        self.lone_end = True  # in "text": a lone </think> may still end the thoughts (no <think> came first)
        self.held = ""  # white space at the end of what was shown: shown once text follows it
        self.started = False  # whether the text or the answer has shown anything (white space it opens with is not)
        self.gap = False  # the answer follows shown thoughts: a blank line first

    def feed(self, piece: str) -> str:
        """The text to show now that `piece` came."""
        self.pending += piece
        return self._advance(final=False)

    def finish(self) -> str:
        """The text left to show once the reply has ended."""
        return self._advance(final=True)

    def _advance(self, final: bool) -> str:
        shown = ""
        if self.phase == "start":
            start = self.pending.lstrip().lower()
            if not final and any(tag.startswith(start) and tag != start for tag in OPENING_TAGS):
                return ""  # "<thi" may open a block: wait
            opened = next((tag for tag in OPENING_TAGS if start.startswith(tag)), None)
            if opened is None:
                self.phase = "text"
            else:
                self.phase, self.closing = "block", re.compile(re.escape("</" + opened[1:]), re.I)
                self.pending = self.pending.lstrip()[len(opened):]
        if self.phase == "block":
            assert self.closing is not None
            end = self.closing.search(self.pending)
            if end is None:
                self.pending = "" if final else self.pending[-len(self.closing.pattern):]  # a tag cut in two is found
                return ""
            self.phase, self.pending = "answer", self.pending[end.end():]
        if self.phase == "text":
            text, ended = self._text(final)
            shown = self._show(text)
            if ended:
                self.phase, self.held, self.started, self.gap = "answer", "", False, self.started
        if self.phase == "answer":
            shown += self._show(self.pending)
            self.pending = ""
        return shown

    def _text(self, final: bool) -> tuple[str, bool]:
        """From `pending`, the text decided (up to where a lone </think> may still start) and whether it is
        thoughts that such a tag ended (the answer is left in `pending`)."""
        decided = ""
        while self.lone_end:
            end, opening = END.search(self.pending), OPENING.search(self.pending)
            if opening is not None and (end is None or opening.start() < end.start()):
                self.lone_end = False  # a <think> first: no </think> after it ends thoughts
                break
            if end is None:
                cut = len(self.pending) if final else self._partial_tag()
                decided, self.pending = decided + self.pending[:cut], self.pending[cut:]
                return decided, False
            rest = self.pending[end.end():].lstrip(" \t")
            if not final and rest in ("", "\r"):  # its line has not ended yet
                decided, self.pending = decided + self.pending[:end.start()], self.pending[end.start():]
                return decided, False
            if rest == "" or rest.startswith(("\n", "\r\n")):  # a lone </think>: the thoughts end here
                decided, self.pending = decided + self.pending[:end.start()], rest[rest.find("\n") + 1:]
                self.lone_end = False
                return decided, True
            decided, self.pending = decided + self.pending[:end.end()], self.pending[end.end():]  # text goes on
        decided, self.pending = decided + self.pending, ""
        return decided, False

    def _partial_tag(self) -> int:
        """Where a tail that may be the start of a tag begins ("... <thi"), else the end."""
        cut = self.pending.rfind("<")
        if cut >= 0 and any(tag.startswith(self.pending[cut:].lower()) for tag in ("</think>", "<think>")):
            return cut
        return len(self.pending)

    def _show(self, text: str) -> str:
        """`text` as shown: white space it opens with left out at the start of the text or the answer, and white
        space at its end held until more text comes."""
        if not self.started:
            text = text.lstrip()
        joined = self.held + text
        shown = joined.rstrip()
        self.held = joined[len(shown):]
        if not shown:
            return ""
        if self.gap:
            shown, self.gap = "\n\n" + shown, False
        self.started = True
        return shown
