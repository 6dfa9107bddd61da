"""The full-text space in memory: BM25 over an inverted index of the loaded matrix's rows, scored by
`bm25_score` (numba's compiled loop where installed, else numpy), beside the exact ranker (`fulltext.engine`
decides where: by default up to 1,000,000 rows).

LanceDB's full-text search costs a query plan per query part; here a part costs its posting lists, each
posting's term weight but for the idf computed in advance (its impact). A story of 8.9 query sentences took
2.3 ms (numpy) against LanceDB's 10.2 at 41k rows, 3.6 against 13.7 at 100k and 22.1 against 52.5 at 1M
(benchmarks/results/bm25-memory.md); with numba 1.9 ms at 141k rows and 11.7 at 1M (bm25-engines.md). The
index is built at the first full-text search of a loaded matrix, from the rows' text, a block of texts at a
time (3.3 s at 100k rows, 23 s at 1M, against LanceDB's 2.5 and 32; 418 MB of arrays at 1M, the process
growing by at most 758 MB meanwhile), and a later version of the table carries it over (`for_matrix`): the
rows still there keep their postings, renumbered, and only the rows written since are read and added as a
segment of their own; the statistics (N, df, average length) are always those of all rows.

It ranks as LanceDB's default English index does: the same words (split where a character is neither letter
nor digit, lower-cased, words of 40 bytes or more dropped, Snowball-stemmed, stop words dropped after stemming
(the installed LanceDB's: `stop_words`), accents folded) and LanceDB's BM25 (k1 = 1.2, b = 0.75, idf = ln(1 +
(N - df + 0.5) / (df + 0.5)), lengths counted after the stop words go, rows without a word left out of N and
the average, a word given twice in the query counts twice). On the paper's Wikipedia rows (sentences and
windows, bm25-memory.md; and the 1,250 whole articles of `mrag eval`) it put the same row first for every
query sentence and shared 0.999-1.0 of LanceDB's top 10; the articles' top scores differed from LanceDB's by a
median 8e-5 of themselves (at most 2.3%), so rows that nearly tie may come in another order. (Rows written
after LanceDB's index was last built are scored by LanceDB with other statistics until an optimize; here every
row counts.) Ties go to the smaller row.
"""

from __future__ import annotations

import functools
import importlib.metadata
import re
import threading
import unicodedata
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import regex

from mrag.matrix import Matrix, read_ranges, release_free_memory, stamps
from mrag.retrieve.bm25_score import Lists, best_rows

K1, B = 1.2, 0.75  # LanceDB's BM25 parameters
LONGEST = 40  # words of this many UTF-8 bytes or more are dropped (LanceDB's max_token_length)
ASCII_WORD = re.compile(r"[A-Za-z0-9]+")  # a word of ASCII text: a run of letters and digits
WORD = regex.compile(r"[\p{Alphabetic}\p{N}]+")  # any text's: Rust's is_alphanumeric, as LanceDB's tokenizer
MAX_SEGMENTS = 8  # appended segments an index keeps before the next growth rebuilds it whole
# texts cut into words at a time: a build holds one block's words (all 1M rows' at once peaked at 5.6 GB for
# 413 MB of postings kept)
BLOCK_ROWS = 32_768
# LanceDB's English stop words (NLTK's list; a word is dropped when its stem is one of them)
STOP_WORDS = frozenset("""
a about above after again against ain all am an and any are aren as at be because been before being below
between both but by can couldn d did didn do does doesn doing don down during each few for from further had
hadn has hasn have haven having he her here hers herself him himself his how i if in into is isn it its
itself just ll m ma me mightn more most mustn my myself needn no nor not now o of off on once only or other
our ours ourselves out over own re s same shan she should shouldn so some such t than that the their theirs
them themselves then there these they this those through to too under until up ve very was wasn we were
weren what when where which while who whom why will with won wouldn y you your yours yourself yourselves
""".split())
# ... less these since LanceDB 0.41 (lance 14): the pieces contractions leave and no, nor, not (measured: 0.41 drops
# the other words of the list and adds none; its scores are otherwise 0.40's)
KEPT_SINCE_041 = frozenset("""
ain aren couldn d didn doesn don hadn hasn haven isn ll m ma mightn mustn needn no nor not o s shan shouldn t ve
wasn weren won wouldn y
""".split())


@functools.cache
def stop_words(version: str | None = None) -> frozenset[str]:
    """The stop words of the LanceDB `version` (default: the one installed), whose full-text index this engine
    matches: an index LanceDB builds drops them, and so does this one."""
    version = version or importlib.metadata.version("lancedb")
    major_minor = tuple(int(part) for part in re.findall(r"\d+", version)[:2])
    return STOP_WORDS - KEPT_SINCE_041 if major_minor >= (0, 41) else STOP_WORDS


# letters that folding to ASCII spells with other letters (accents are dropped by decomposition)
_local = threading.local()
_SPELLED = str.maketrans({"ß": "ss", "æ": "ae", "Æ": "AE", "œ": "oe", "Œ": "OE", "ø": "o", "Ø": "O", "đ": "d",
                          "ł": "l", "Ł": "L", "þ": "th", "ð": "d", "ı": "i"})


@dataclass
class Vocabulary:
    """Terms and their ids, and each surface word's term id (-1: dropped), shared by every index built
    from one matrix's rows and its growths (ids only ever added)."""

    ids: dict[str, int]
    of_word: dict[str, int]

    @classmethod
    def empty(cls) -> Vocabulary:
        return cls({}, {})

    def add(self, surface: list[str]) -> np.ndarray:
        """The term id of each word as cut (`split_words`), adding new terms: (W,) -> (W,) int64, -1 dropped."""
        new = [w for w in dict.fromkeys(surface) if w not in self.of_word]
        for word, term in zip(new, analyze(new)):
            self.of_word[word] = -1 if term is None else self.ids.setdefault(term, len(self.ids))
        return np.fromiter((self.of_word[w] for w in surface), dtype=np.int64, count=len(surface))

    def lookup(self, surface: Iterable[str]) -> list[int]:
        """The known term ids of a query's words, repeats kept; words never seen in the rows are left out."""
        found = []
        for word in surface:
            term = self.of_word.get(word)
            if term is None:
                analyzed = analyze([word])[0]
                term = -1 if analyzed is None else self.ids.get(analyzed, -1)
            if term >= 0:
                found.append(term)
        return found


def split_words(text: str) -> list[str]:
    """A text's words as LanceDB's simple tokenizer cuts them, in their own case: runs of the characters Rust's
    `is_alphanumeric` keeps, Unicode's Alphabetic and Numeric ones. A combining mark is in a word only when it
    is Alphabetic (the vowel signs of Indic scripts are; a virama, a combining accent of decomposed text, a
    Thai tone mark are not, and cut it, as in LanceDB). 'Don't stop!' -> ['Don', 't', 'stop']."""
    if text.isascii():
        return ASCII_WORD.findall(text)
    return WORD.findall(text)  # type: ignore[no-any-return]


def analyze(surface: list[str]) -> list[str | None]:
    """Words as cut -> their terms (None: dropped): 40 bytes or more (before lower-casing, as LanceDB checks),
    a stop word after lower-casing and stemming, or empty."""
    lowered = [w.lower() if w.isascii() else "".join(c.lower() for c in w) for w in surface]  # per character,
    # as LanceDB: a word-final capital sigma is σ, not Python's ς
    stems = _stemmer().stemWords(lowered)
    stop = stop_words()
    return [None if not w or len(w.encode()) >= LONGEST or s in stop else fold(s) for w, s in zip(surface, stems)]


def _stemmer() -> Any:
    """This thread's Snowball English stemmer (PyStemmer's, as LanceDB's rust-stemmers; not thread-safe)."""
    stemmer = getattr(_local, "stemmer", None)
    if stemmer is None:
        import Stemmer

        stemmer = _local.stemmer = Stemmer.Stemmer("english")
    return stemmer


def fold(term: str) -> str:
    """Latin letters to ASCII, as LanceDB's ASCII folding: accents dropped and a few letters spelled out
    ('café' -> 'cafe', 'straße' -> 'strasse'); a character that does not decompose to ASCII (Greek,
    Cyrillic, kana, a lone combining mark) is kept as it is."""
    if term.isascii():
        return term
    return "".join(_fold_char(ch) for ch in term.translate(_SPELLED))


def _fold_char(ch: str) -> str:
    if ch.isascii():
        return ch
    ascii_part = "".join(c for c in unicodedata.normalize("NFKD", ch) if c.isascii())
    return ascii_part or ch


@dataclass(frozen=True)
class Segment:
    """Postings of a run of rows, term-major: term t's rows are rows[starts[t]:starts[t + 1]] (ascending),
    with their term frequencies tf; terms added after the segment was built have none."""

    starts: np.ndarray  # (T_s + 1,) int64
    rows: np.ndarray  # (P,) int32: row numbers in the matrix
    tf: np.ndarray  # (P,) float32

    @classmethod
    def build(cls, terms: np.ndarray, rows: np.ndarray, n_terms: int) -> Segment:
        """From every kept word occurrence's term id and row (E,) each: one sort of (term, row) keys
        (torch's: threaded), then the runs' lengths are the frequencies."""
        n = int(rows.max()) + 1 if len(rows) else 1
        unique, counts = np.unique(terms.astype(np.int64) * n + rows, return_counts=True)  # by term, then row
        starts = np.searchsorted(unique // n, np.arange(n_terms + 1))
        return cls(starts, (unique % n).astype(np.int32), counts.astype(np.float32))

    @classmethod
    def merged(cls, segments: tuple[Segment, ...], n_terms: int) -> Segment:
        """One segment of segments in row order (every row of one below every row of the next): a term's
        postings are its postings in each segment, one segment after the other, so each segment's are
        laid out at their place without a sort."""
        counts = [s.df(n_terms) for s in segments]  # (T,) postings per term, each segment
        starts = np.concatenate([[0], np.cumsum(sum(counts, np.zeros(n_terms, dtype=np.int64)))])
        rows = np.empty(int(starts[-1]), dtype=np.int32)
        tf = np.empty(len(rows), dtype=np.float32)
        before = starts[:-1].copy()  # (T,) where each term's postings of the next segment go
        for segment, count in zip(segments, counts):
            # posting j of term t goes to before[t] + (j - segment.starts[t]) (terms the segment has)
            known = len(segment.starts) - 1
            at = np.repeat(before[:known] - segment.starts[:-1], count[:known]) + np.arange(len(segment.rows))
            rows[at], tf[at] = segment.rows, segment.tf
            before += count
        return cls(starts, rows, tf)

    def df(self, n_terms: int) -> np.ndarray:
        """Rows per term (n_terms,)."""
        counts = np.diff(self.starts)
        return np.pad(counts, (0, n_terms - len(counts)))


class Bm25:
    """BM25 over rows 0..n-1 of a matrix: `search(texts, c)` ranks them for each text."""

    def __init__(self, vocabulary: Vocabulary, segments: tuple[Segment, ...], lengths: np.ndarray):
        self.vocabulary, self.segments, self.lengths = vocabulary, segments, lengths  # lengths (n,) float32
        self.n_terms = len(vocabulary.ids)  # terms this index knows (the vocabulary may grow after)
        self.df = sum((s.df(self.n_terms) for s in segments), np.zeros(self.n_terms, dtype=np.int64))
        worded = lengths[lengths > 0]  # rows without a word count in neither N nor the average, as in LanceDB
        self.idf = np.log1p((len(worded) - self.df + 0.5) / (self.df + 0.5))  # (T,)
        average = float(worded.mean()) if len(worded) else 1.0
        self.norm = (K1 * (1 - B + B * lengths / average)).astype(np.float32)
        self.impacts = tuple(_impacts(s, self.norm) for s in segments)  # per posting, as segment.tf

    @classmethod
    def build(cls, texts: pa.Array | pa.ChunkedArray) -> Bm25:
        """The index of `texts`, text i being matrix row i."""
        vocabulary = Vocabulary.empty()
        segment, lengths = _blocks(texts, 0, vocabulary)
        return cls(vocabulary, (segment,), lengths)

    def extended(self, texts: pa.Array | pa.ChunkedArray) -> Bm25:
        """This index with `texts` as rows n, n+1, ... appended (this one unchanged)."""
        return self.changed(texts=texts)

    def changed(self, position: np.ndarray | None = None, texts: pa.Array | pa.ChunkedArray | None = None) -> Bm25:
        """This index with row r as row position[r] and rows whose position is -1 dropped (the positions that
        remain are 0, 1, ... in order; None: rows as they are), then `texts` appended as the next rows: one
        new index, its impacts computed once (this one unchanged)."""
        segments, lengths = self.segments, self.lengths
        if position is not None:
            segments = tuple(_renumbered(s, position) for s in segments)
            lengths = lengths[position >= 0]
        if texts is not None:
            segment, added = _blocks(texts, len(lengths), self.vocabulary)
            segments, lengths = segments + (segment,), np.concatenate([lengths, added])
            if len(segments) > MAX_SEGMENTS:  # one segment again (`Segment.merged`)
                segments = (Segment.merged(segments, len(self.vocabulary.ids)),)
        return Bm25(self.vocabulary, segments, lengths)

    def search(self, texts: list[str], c: int,
               allowed: np.ndarray | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """Each text's best c rows and their BM25 scores, best first, ties to the smaller row:
        (rows int64, scores float64) per text; a text with no known word finds nothing. `allowed` (n,) bool:
        only those rows are ranked (a filtered search; the statistics stay those of every row)."""
        return [self._search_one(text, c, allowed) for text in texts]

    def _search_one(self, text: str, c: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """One text's best c rows: its distinct terms' posting lists in each segment, weighed by idf x how often
        the text gives the term (terms of later growths left out), summed by row (`bm25_score.best_rows`)."""
        known = [t for t in self.vocabulary.lookup(split_words(text)) if t < self.n_terms]
        terms, repeats = np.unique(np.array(known, dtype=np.int64), return_counts=True)
        lists = []
        for segment, impact in zip(self.segments, self.impacts):
            has = terms + 1 < len(segment.starts)  # the segment has a posting list for the term
            held = terms[has]
            factors = (repeats[has] * self.idf[held]).astype(np.float32)
            lists.append(Lists(segment.rows, impact, segment.starts[held], segment.starts[held + 1], factors))
        return best_rows(lists, len(self.lengths), c, allowed)


def _renumbered(segment: Segment, position: np.ndarray) -> Segment:
    """The segment's postings with row r as row position[r], those of rows at -1 dropped (order kept)."""
    row = position[segment.rows]
    keep = row >= 0
    term = np.repeat(np.arange(len(segment.starts) - 1), np.diff(segment.starts))[keep]
    return Segment(np.searchsorted(term, np.arange(len(segment.starts))), row[keep].astype(np.int32),
                   segment.tf[keep])


def _impacts(segment: Segment, norm: np.ndarray, step: int = 1 << 20) -> np.ndarray:
    """Each posting's BM25 term weight without the idf, (k1 + 1) tf / (tf + norm[row]), as float32 (P,):
    computed in steps into one array (the whole-array temporaries' first touch cost 20x as much)."""
    impact = np.empty(len(segment.tf), dtype=np.float32)
    for a in range(0, len(impact), step):
        part, tf = impact[a:a + step], segment.tf[a:a + step]
        np.add(tf, norm[segment.rows[a:a + step]], out=part)
        np.divide(tf, part, out=part)
    impact *= np.float32(K1 + 1)
    return impact


def _blocks(texts: pa.Array | pa.ChunkedArray, first: int, vocabulary: Vocabulary) -> tuple[Segment, np.ndarray]:
    """The postings of `texts` as rows first, first + 1, ..., cut into words BLOCK_ROWS texts at a time and
    merged, and their word counts (len(texts),)."""
    segments, lengths = [], np.zeros(len(texts), dtype=np.float32)
    for a in range(0, max(len(texts), 1), BLOCK_ROWS):
        block = texts[a:a + BLOCK_ROWS]
        segment, lengths[a:a + len(block)] = _segment(block, np.arange(first + a, first + a + len(block)), vocabulary)
        segments.append(segment)
    merged = segments[0] if len(segments) == 1 else Segment.merged(tuple(segments), len(vocabulary.ids))
    return merged, lengths


def _segment(texts: pa.Array | pa.ChunkedArray, rows: np.ndarray, vocabulary: Vocabulary) -> tuple[Segment, np.ndarray]:
    """The postings of `texts` (matrix rows `rows`) and their word counts (len(rows),) float32. Arrow cuts
    the texts at white space (its regex split took 4x as long); each distinct piece is cut into words in
    Python once, and the pieces' words are laid out for every occurrence at once."""
    listed = pc.utf8_split_whitespace(texts)
    chunks = listed.chunks if isinstance(listed, pa.ChunkedArray) else [listed]
    pieces_per_text = np.concatenate([np.diff(ch.offsets.to_numpy()) for ch in chunks]) if chunks \
        else np.zeros(0, np.int64)
    flat = pa.chunked_array([pc.list_flatten(ch) for ch in chunks], type=pa.string())
    surface = pc.unique(flat)  # (S,) distinct pieces
    piece_words = [split_words(piece) for piece in surface.to_pylist()]
    words_per_piece = np.array([len(w) for w in piece_words], dtype=np.int64)  # (S,)
    piece_terms = vocabulary.add([w for found in piece_words for w in found])  # every piece's words' terms
    piece_start = np.cumsum(words_per_piece) - words_per_piece
    code = np.concatenate([pc.index_in(ch, value_set=surface).to_numpy(zero_copy_only=False).astype(np.int64)
                           for ch in flat.chunks]) if flat.num_chunks else np.zeros(0, np.int64)  # (E,) piece
    count = words_per_piece[code]  # (E,) words of each occurrence
    at = np.repeat(piece_start[code] - (np.cumsum(count) - count), count) + np.arange(int(count.sum()))
    terms = piece_terms[at]  # (W,) term of every word, -1 dropped
    text_of = np.repeat(np.repeat(np.arange(len(rows)), pieces_per_text), count)  # (W,)
    kept = terms >= 0
    lengths = np.bincount(text_of[kept], minlength=len(rows)).astype(np.float32)
    return Segment.build(terms[kept], rows.astype(np.int64)[text_of[kept]], len(vocabulary.ids)), lengths


_built: dict[int, tuple[weakref.ref[np.ndarray], Bm25]] = {}  # id(matrix ids) -> its index
# table uri -> the last index built there and what it was built from: (row ids, version, its commit stamp);
# the last PREVIOUS_TABLES tables only (a process that opens many indexes keeps no index of each)
_previous: dict[str, tuple[np.ndarray, int, Any, Bm25]] = {}
PREVIOUS_TABLES = 4
_builds: dict[str, threading.Lock] = {}  # table uri -> its builds' lock
_lock = threading.Lock()  # the dicts above


def for_matrix(matrix: Matrix) -> Bm25:
    """The index of a loaded matrix's rows, built at its first full-text search and kept while the matrix
    lives. Built from the last index of the same table where it can (`_carried`: only the rows it lacks are
    read), else from every row's text. Searches that need it at once wait for one build; builds for other
    tables go on meanwhile."""
    key = id(matrix.ids)
    with _lock:
        found = _built.get(key)
    if found is not None and found[0]() is matrix.ids:  # built: no call into LanceDB (its uri costs 0.4 ms)
        return found[1]
    uri = getattr(matrix.table, "uri", None)
    with _lock:
        build = _builds.setdefault(str(uri), threading.Lock())
    with build:
        with _lock:
            found = _built.get(key)
            if found is not None and found[0]() is matrix.ids:
                return found[1]
            previous = _previous.get(uri) if uri is not None else None
        index = _carried(matrix, previous) or Bm25.build(_texts(matrix, 0))
        pa.default_memory_pool().release_unused()  # the texts and their words, held by Arrow's pool otherwise
        release_free_memory()
        with _lock:
            _built[key] = (weakref.ref(matrix.ids, lambda _: _built.pop(key, None)), index)
            if uri is not None and matrix.row_ids is not None and matrix.stamp is not None:
                _previous.pop(uri, None)  # moved to the end: the most recent
                _previous[uri] = (matrix.row_ids, matrix.version, matrix.stamp, index)
                while len(_previous) > PREVIOUS_TABLES:
                    _previous.pop(next(iter(_previous)))
        return index


def _carried(matrix: Matrix, previous: tuple[np.ndarray, int, Any, Bm25] | None) -> Bm25 | None:
    """The index of `matrix` from the last one built for its table, where the matrix's rows are that one's
    rows that remain, in order, then new rows (appends, deletes, upserts: Lance keeps a row's id while it
    lives and writes new rows into new fragments after the others): the remaining rows' postings are
    renumbered, and only the new rows' text is read. Row ids name rows within one table only, so the
    previous version must still be in this table's history with its stamp (as `mrag.matrix.grown` checks).
    None where it cannot: another table at the path, rows moved (a compaction), or fewer than half the
    rows remain (a fresh vocabulary then drops the words of rows that are gone)."""
    if previous is None or matrix.row_ids is None:
        return None
    old_ids, version, stamp, index = previous
    if stamps(matrix.table).get(version) != stamp:
        return None
    new_ids = matrix.row_ids
    order = np.argsort(new_ids, kind="stable")
    at = np.minimum(np.searchsorted(new_ids, old_ids, sorter=order), max(len(new_ids) - 1, 0))
    position = np.where(new_ids[order[at]] == old_ids, order[at], -1) if len(new_ids) else np.full(len(old_ids), -1)
    kept = position[position >= 0]
    if 2 * len(kept) < len(new_ids) or not np.array_equal(kept, np.arange(len(kept))):
        return None
    if len(kept) == len(old_ids) == len(new_ids):
        return index
    # rows deleted: the rest renumbered; rows written: their text read and added
    return index.changed(position if len(kept) < len(old_ids) else None,
                         _texts(matrix, len(kept)) if len(kept) < len(new_ids) else None)


def _texts(matrix: Matrix, start: int) -> pa.ChunkedArray:
    """The text of the matrix's rows start..n, in row order, read from its table version in the order the
    matrix was read (checked by Lance row id)."""
    n = len(matrix.ids)
    batches = list(read_ranges(matrix.table, ["text"], n, start=start))
    read = pa.Table.from_batches(batches) if batches else pa.table({"text": pa.array([], pa.string()),
                                                                     "_rowid": pa.array([], pa.uint64())})
    if read.num_rows != n - start or (matrix.row_ids is not None and not np.array_equal(
            read["_rowid"].to_numpy(), matrix.row_ids[start:n])):
        raise RuntimeError("the table's rows are not the matrix's rows")  # never seen: the scan order is the load's
    return read["text"]
