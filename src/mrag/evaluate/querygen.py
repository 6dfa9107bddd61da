"""Query writers for `mrag bench`: one question that needs a given set of documents.

Two kinds, one interface (`write(docs, rng) -> str | None`):
- `Extractive`: no LLM. Each document contributes its most distinctive sentence (the one whose
  words are rarest in the corpus), cut to its rarest few words; the parts are joined into one
  request by a template. Deterministic for a seed, offline, and never a verbatim sentence.
- `Written`: an LLM backend of `mrag ask` (local, ollama, openai) is asked for one natural question
  touching every document without quoting or naming them; its reply is cleaned to one line.

And the checks a generated query must pass (`quoted_words`, the longest verbatim run).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from random import Random

from mrag.chunk import split_sentences
from mrag.generate.base import Generator, Message

STOPWORDS = frozenset("""
a about above after again against all also am an and any are as at be because been before being below between
both but by can could did do does doing down during each few for from further had has have having he her here
hers him his how i if in into is it its itself just may might more most much must my no nor not now of off on
once only or other our ours out over own same shall she should so some such than that the their theirs them then
there these they this those through to too under until up upon us very was we were what when where which while
who whom whose why will with within without would you your yours one two three first second new used known
""".split())

WORD = re.compile(r"[^\W\d_][\w'-]*[^\W_]|[^\W\d_]", re.UNICODE)


def words(text: str) -> list[str]:
    """Lower-cased words (letters first; digits and punctuation dropped)."""
    return [w.lower() for w in WORD.findall(text)]


def content_words(text: str) -> list[str]:
    return [w for w in words(text) if w not in STOPWORDS and len(w) > 2]


def idf_table(texts: Sequence[str]) -> dict[str, float]:
    """Inverse document frequency of every content word: log((N + 1) / (df + 1)) + 1."""
    df = Counter(w for t in texts for w in set(content_words(t)))
    n = len(texts)
    return {w: math.log((n + 1) / (c + 1)) + 1 for w, c in df.items()}


def salient_sentence(text: str, idf: dict[str, float], min_words: int = 6, max_words: int = 60) -> str:
    """The sentence whose distinct content words are rarest in the corpus (sum of idf / sqrt(length)).
    The first sentence is passed over when there are at least three: it usually names the document's subject
    (of two, both stay candidates)."""
    sentences = [s for s in split_sentences(text) if min_words <= len(words(s)) <= max_words]
    if len(sentences) > 2:
        sentences = sentences[1:]
    if not sentences:
        return text[:400]

    def score(s: str) -> float:
        distinct = set(content_words(s))
        return sum(idf.get(w, 1.0) for w in distinct) / math.sqrt(len(words(s)))

    return max(sentences, key=score)


def key_terms(sentence: str, idf: dict[str, float], m: int = 5) -> list[str]:
    """The sentence's m rarest content words, in the order they appear (each once)."""
    seen: dict[str, None] = {}
    for w in content_words(sentence):
        seen.setdefault(w)
    ordered = list(seen)
    chosen = set(sorted(ordered, key=lambda w: (-idf.get(w, 1.0), ordered.index(w)))[:m])
    return [w for w in ordered if w in chosen]


ONE_TEMPLATES = ("What is known about {0}?", "Tell me about {0}.", "I am looking for information on {0}.")
JOINED_TEMPLATES = (  # several aspects in one sentence
    "How do {all} relate to each other?",
    "I need information on {all}.",
    "What can you tell me about {all}?",
)
SEPARATE_TEMPLATES = ("Tell me about {0}.", "And what about {0}?", "Also, {0}?")  # one sentence per aspect


def join_parts(parts: Sequence[str], rng: Random) -> tuple[str, str]:
    """Parts -> (query, form). n = 1: one of ONE_TEMPLATES. n >= 2: half the queries put every part in one
    sentence ("joined"), half give each its own sentence ("separate"), so segmentation meets both."""
    if len(parts) == 1:
        return rng.choice(ONE_TEMPLATES).format(parts[0]), "single"
    if rng.random() < 0.5:
        listed = ", ".join(parts[:-1]) + " and " + parts[-1]
        return rng.choice(JOINED_TEMPLATES).format(all=listed), "joined"
    sentences = [SEPARATE_TEMPLATES[0].format(parts[0])]
    sentences += [rng.choice(SEPARATE_TEMPLATES[1:]).format(p) for p in parts[1:]]
    return " ".join(sentences), "separate"


@dataclass
class Draft:
    text: str
    form: str


class QueryWriter:
    name = "writer"

    def write(self, docs: Sequence[tuple[str, str]], rng: Random) -> Draft | None:
        """A query needing every (title, text) of `docs`, or None when none could be written."""
        raise NotImplementedError


class Extractive(QueryWriter):
    """Rule-based queries from the documents' most distinctive words (no LLM)."""

    name = "extractive"

    def __init__(self, corpus_texts: Sequence[str], terms: int = 5):
        self.idf = idf_table(corpus_texts)
        self.terms = terms

    def part(self, text: str) -> str:
        return " ".join(key_terms(salient_sentence(text, self.idf), self.idf, self.terms))

    def write(self, docs: Sequence[tuple[str, str]], rng: Random) -> Draft | None:
        parts = [self.part(text) for _, text in docs]
        if not all(parts):
            return None
        text, form = join_parts(parts, rng)
        return Draft(text, form)


SYSTEM = "You write realistic search questions for testing a document retrieval system."
EXCERPT_CHARS = 700


def prompt(docs: Sequence[tuple[str, str]]) -> list[Message]:
    """The chat messages asking for one question that needs every document."""
    n = len(docs)
    shown = "\n\n".join(
        f"Document {i}:\n{text.strip()[:EXCERPT_CHARS]}" for i, (_, text) in enumerate(docs, 1)
    )
    need = "this document" if n == 1 else f"all {n} documents, one aspect from each"
    user = (
        f"{shown}\n\n"
        f"Write one natural question or request that a person could type into a search box and that needs "
        f"{need} to answer. Touch on every document, but do not copy their sentences and do not name their "
        f"titles word for word. Reply with the question only, on one line."
    )
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def parse_reply(reply: str) -> str | None:
    """The first non-empty line, less a 'Question:' label, numbering and quotes, past a preamble ending in ':'
    ("Here is a question:"); None if under 3 words. A label's or a number's mark ends it or precedes a space
    ("Request-response ...", "1.5 degrees ..." are the question's words)."""
    for line in reply.splitlines():
        line = re.sub(r"^\s*(?:\*\*)?(?:question|query|request|q)\s*(?::|[.-](?=\s))\s*(?:\*\*)?", "", line,
                      flags=re.I)
        line = re.sub(r"^\s*(?:\d+[.)]|[-*•])(?=\s)\s*", "", line).strip().strip('"“”\'` ').strip()
        if line.rstrip("*").endswith(":"):
            continue
        if line:
            return line if len(words(line)) >= 3 else None
    return None


class Written(QueryWriter):
    """Queries written by an LLM backend."""

    def __init__(self, generator: Generator, max_tokens: int = 96):
        self.generator = generator
        self.name = generator.name
        self.max_tokens = max_tokens

    def write(self, docs: Sequence[tuple[str, str]], rng: Random) -> Draft | None:
        text = parse_reply(self.generator.generate(prompt(docs), max_tokens=self.max_tokens))
        return Draft(text, "written") if text else None


def quoted_words(query: str, document: str) -> int:
    """The longest run of consecutive query words found, consecutively, in the document."""
    q, d = words(query), words(document)
    if not q or not d:
        return 0
    at: dict[str, list[int]] = {}  # positions of every word in the document
    for i, w in enumerate(d):
        at.setdefault(w, []).append(i)
    best = 0
    run: dict[int, int] = {}  # document position -> length of the run ending there
    for w in q:
        run = {i: run.get(i - 1, 0) + 1 for i in at.get(w, [])}
        best = max(best, *run.values(), 0) if run else best
    return best
