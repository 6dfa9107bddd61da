"""A reasoning model's thoughts, told apart from its answer: in a whole reply (`without_thinking`) and in one
streaming in (`AnswerStream`, what `mrag ask` prints)."""

from __future__ import annotations

import re

# a reasoning model's thoughts: a block the reply opens with (one left open runs to the end), or all before a lone
# </think> that ends its line (a chat template that opened the block itself); never a tag the answer mentions
THINKING = re.compile(r"\A\s*<(think|thinking|reasoning)>.*?(?:</\1>|\Z)", re.S | re.I)
LONE_END = re.compile(r"\A(?:(?!<think>).)*?</think>[ \t]*(?:\r?\n|\Z)", re.S | re.I)
END, OPENING = re.compile("</think>", re.I), re.compile("<think>", re.I)
OPENS = re.compile(r"\s*<(think|thinking|reasoning)>", re.I)  # as THINKING begins
CLOSES = re.compile(r"<(think|thinking|reasoning)>.*?</\1>", re.S | re.I)  # as THINKING ends: its opening tag first


def _proper_prefixes(*tags: str) -> re.Pattern[str]:
    """A pattern whose `fullmatch` tells a start of one of `tags`, not all of it, compared as `re.I` compares
    (İ and ı match i there, not in str.lower())."""
    return re.compile("|".join(re.escape(tag[:i]) for tag in tags for i in range(1, len(tag))), re.I)


MAY_OPEN = _proper_prefixes("<think>", "<thinking>", "<reasoning>")
MAY_BE_TAG = _proper_prefixes("</think>", "<think>")


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
        self.opening = ""  # the tag of the block the reply opened, as written
        self.lone_end = True  # in "text": a lone </think> may still end the thoughts (no <think> came first)
        self.held: list[str] = []  # white space at the end of what was shown: shown once text follows it
        self.awaiting = False  # `pending` is a </think> and spaces: only its line's end, or text, decides it
        self.spaces: list[str] = []  # spaces and tabs come meanwhile (a list: a long run costs no copies)
        self.started = False  # whether the text or the answer has shown anything (white space it opens with is not)
        self.gap = False  # the answer follows shown thoughts: a blank line first

    def feed(self, piece: str) -> str:
        """The text to show now that `piece` came."""
        if self.awaiting and not piece.strip(" \t"):
            self.spaces.append(piece)
            return ""
        self.pending += "".join(self.spaces) + piece
        self.spaces = []
        return self._advance(final=False)

    def finish(self) -> str:
        """The text left to show once the reply has ended."""
        self.pending += "".join(self.spaces)
        return self._advance(final=True)

    def _advance(self, final: bool) -> str:
        shown = ""
        if self.phase == "start":
            self.pending = self.pending.lstrip()  # white space the reply opens with is never shown
            if not final and (not self.pending or MAY_OPEN.fullmatch(self.pending)):
                return ""  # "<thi" may open a block: wait
            opened = OPENS.match(self.pending)
            if opened is None:
                self.phase = "text"
            else:
                self.phase, self.opening, self.pending = "block", opened.group(0), self.pending[opened.end():]
        if self.phase == "block":
            block = CLOSES.match(self.opening + self.pending)  # its closing tag read as THINKING reads it
            if block is None:
                self.pending = "" if final else self.pending[-len(self.opening):]  # a tag cut in two is found
                return ""
            self.phase, self.pending = "answer", (self.opening + self.pending)[block.end():]
        if self.phase == "text":
            text, ended = self._text(final)
            shown = self._show(text)
            if ended:
                self.phase, self.held, self.started, self.gap = "answer", [], False, self.started
        if self.phase == "answer":
            shown += self._show(self.pending)
            self.pending = ""
        return shown

    def _text(self, final: bool) -> tuple[str, bool]:
        """From `pending`, the text decided (up to where a lone </think> may still start) and whether it is
        thoughts that such a tag ended (the answer is left in `pending`)."""
        decided, self.awaiting = "", False
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
                self.awaiting = rest == ""
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
        cut = self.pending.rfind("<")  # a tag's start holds one "<", its first character
        return cut if cut >= 0 and MAY_BE_TAG.fullmatch(self.pending, cut) else len(self.pending)

    def _show(self, text: str) -> str:
        """`text` as shown: white space it opens with left out at the start of the text or the answer, and white
        space at its end held until more text comes."""
        if not self.started:
            text = text.lstrip()
        shown = text.rstrip()
        if not shown:
            self.held.append(text)
            return ""
        shown, self.held = "".join(self.held) + shown, [text[len(shown):]]
        if self.gap:
            shown, self.gap = "\n\n" + shown, False
        self.started = True
        return shown
