"""Sentence splitting, size-bounded chunking with overlap, and query segmentation (sentences, and the
questions of a sentence that asks several)."""

from __future__ import annotations

import re

# A sentence ends at . ! or ? (and other scripts' full stops and question marks: Arabic's ؟, Urdu's ۔, the
# dandas । ॥, Armenian ։, Ethiopic ።, Burmese ။; with up to two closing quotes or brackets, which stay with
# it) before whitespace and a sentence's first letter: a capital, a digit or a letter of a script without case
# (after an opening quote or bracket), or after a word's question mark any letter ("how? why?" as people type;
# '"Why?" he asked.', 'a ? b : c' and 'id = ? and' stay whole); at 。！？｡ (CJK writing puts no space after
# them) unless a closing quote follows (「本当？」と聞いた is one sentence); or at a blank line. Abbreviations
# like "e.g. the" stay whole.
_CLOSERS, _OPENERS = "\"')\\]”’»」』", "\"'(\\[“‘«¿¡「『"  # inside a [...] class: ] and [ escaped
_SENTENCE_END = re.compile(
    rf"([.!?؟।॥۔։።။])[{_CLOSERS}]{{0,2}}(\s+)(?=[{_OPENERS}]?(\w))|[。！？｡](?![{_CLOSERS}])\s*|\n\s*\n"
)
_BLANK_LINE = re.compile(r"\n\s*\n")
_QUESTION_MARKS = {"?", "؟"}


def _starts_a_sentence(char: str, after: str) -> bool:
    """Whether a sentence may begin with `char` after the punctuation `after` ("" where a closing quote or
    bracket came between): "É", "Б", "水", a digit, a Georgian letter (a script whose capitals are not used
    so); right after a question mark "é" too; never "_"."""
    if char.isdigit() or (char.isalpha() and (not char.islower() or after in _QUESTION_MARKS)):
        return True
    return "\u10d0" <= char <= "\u10ff"  # Georgian's Mkhedruli letters count as lower case


def _pieces(text: str) -> list[str]:
    """text cut at every sentence end (`_SENTENCE_END`); the end's punctuation stays with its piece."""
    pieces, start = [], 0
    for end in _SENTENCE_END.finditer(text):
        if end.group(2) is not None:  # after . ! ? and the like: only where a sentence starts, or at a blank line
            # a question mark that ends a word ("Dune"? C++? 5%?), not before a bracket: '"Why?" he asked',
            # 'a ? b', 'id = ? and', 'ok? (yes)' stay whole
            before = text[end.start(1) - 1] if end.start(1) else " "
            word_end = (before.isalnum() or before in _CLOSERS or before in "%+#") and text[end.end(2)] not in "(["
            after = end.group(1) if end.start(2) == end.end(1) and word_end else ""
            if not (_starts_a_sentence(end.group(3), after) or _BLANK_LINE.search(end.group(2))):
                continue
            cut, resume = end.start(2), end.end(2)
        elif text[end.start()] == "\n":
            cut, resume = end.start(), end.end()
        else:  # after 。！？
            cut = resume = end.end()
        pieces.append(text[start:cut])
        start = resume
    return [*pieces, text[start:]]


# A piece ending in an initial or a title is no sentence end: "John F. Kennedy", "Mr. Krabs", "Vol. 53".
_NOT_AN_END = re.compile(
    r"(?:^|[\s(])(?:[A-Z]|Mr|Mrs|Ms|Dr|Prof|St|Jr|Sr|Gen|Col|Lt|Capt|Mt|Ft|No|Nos|Vol|Fig|vs|Inc|Ltd|Co)\.$"
)


def split_sentences(text: str) -> list[str]:
    """'A b. C d! E?' -> ['A b.', 'C d!', 'E?']; whitespace-only pieces dropped; no split after an
    initial or a title ('Dr. J. Smith came.' is one sentence)."""
    sentences: list[list[str]] = []  # each sentence's pieces: its end is its last piece's (joining as it went
    for piece in (s.strip() for s in _pieces(text) if s and s.strip()):  # and reading it again was quadratic)
        if sentences and _NOT_AN_END.search(sentences[-1][-1]):
            sentences[-1].append(piece)
        else:
            sentences.append([piece])
    return [" ".join(pieces) for pieces in sentences]


def chunk_text(text: str, max_chars: int = 1000, overlap: int = 1) -> list[str]:
    """Pack whole sentences into chunks of at most max_chars; consecutive chunks share `overlap`
    sentences. A sentence longer than max_chars is cut at word boundaries."""
    if max_chars <= 0:
        raise ValueError(f"chunk size must be positive, got {max_chars}")
    if overlap < 0:
        raise ValueError(f"overlap must be >= 0, got {overlap}")
    sentences = [piece for s in split_sentences(text) for piece in _cut_long(s, max_chars)]
    chunks: list[str] = []
    current: list[str] = []
    for sentence in sentences:
        if current and len(" ".join(current + [sentence])) > max_chars:
            chunks.append(" ".join(current))
            # carry the last `overlap` sentences over, if they leave room for the new one
            carry = current[-overlap:] if overlap else []
            while carry and len(" ".join(carry + [sentence])) > max_chars:
                carry = carry[1:]
            current = carry
        current.append(sentence)
    if current:
        chunks.append(" ".join(current))
    return chunks


def _cut_long(sentence: str, max_chars: int) -> list[str]:
    if len(sentence) <= max_chars:
        return [sentence]
    pieces, current = [], ""
    for word in sentence.split():
        while len(word) > max_chars:  # a single giant token: hard cut
            if current:
                pieces.append(current)
                current = ""
            pieces.append(word[:max_chars])
            word = word[max_chars:]
        if current and len(current) + 1 + len(word) > max_chars:
            pieces.append(current)
            current = word
        else:
            current = f"{current} {word}" if current else word
    if current:
        pieces.append(current)
    return pieces


# a question that asks several things: "What is X, and how did Y?" splits before "how"; a relative
# clause ("cats, which are mammals, purr?") does not: after a bare comma only how/what/why + a verb
_QUESTION_WORD = r"(?:how|what|why|when|where|who|which|whose|is|are|was|were|do|does|did|can|could|should|would|will)"
_NEXT_QUESTION = re.compile(
    rf",\s+(?:(?:and|or|but)\s+(?={_QUESTION_WORD}\b)|(?=(?:how|what|why)\s+(?:is|are|was|were|do|does|did|can|"
    r"could|should|would|will|has|have|had|makes?|gives?|causes?)\b))",
    re.IGNORECASE,
)


def split_questions(sentence: str) -> list[str]:
    """A question sentence's questions, each of three words or more; any other sentence as it is.
    'What is X, and how did Y?' -> ['What is X', 'how did Y?'];  'Ann, who sang, left.' -> unchanged."""
    if not sentence.rstrip().endswith("?"):
        return [sentence]
    pieces = [q.strip() for q in _NEXT_QUESTION.split(sentence) if q.strip()]
    return pieces if all(len(q.split()) >= 3 for q in pieces) else [sentence]


def segment_query(text: str, sentences_per_segment: int = 1) -> list[str]:
    """Consecutive groups of sentences (a question sentence counts as its questions); the whole
    text when it has no boundary."""
    sentences = [q for s in split_sentences(text) for q in split_questions(s)]
    return [
        " ".join(sentences[i : i + sentences_per_segment]) for i in range(0, len(sentences), sentences_per_segment)
    ] or [text]
