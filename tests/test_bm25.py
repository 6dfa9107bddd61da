"""The in-memory full-text index (`mrag.retrieve.bm25`): BM25 by hand, the same words and scores as
LanceDB's index, growth by appended rows, and searches through it on real LanceDB in tmp_path."""

from __future__ import annotations

import threading

import lancedb
import numpy as np
import pyarrow as pa
import pytest
from conftest import FakeEmbedder
from lancedb.index import FTS
from lancedb.query import MatchQuery

from mrag.index import Index
from mrag.retrieve import bm25, bm25_score, fulltext
from mrag.retrieve.bm25 import Bm25

FRUIT = ["apple banana", "apple apple cherry date", "banana the of cherry", "kiwi"]


def lancedb_hits(tmp_path, docs: list[str], query: str, c: int = 10) -> list[tuple[int, float]]:
    """LanceDB's own full-text search of `docs` (its default English index): (row, score), best first."""
    table = lancedb.connect(tmp_path / "lance").create_table("t", pa.table({"row": np.arange(len(docs)), "text": docs}),
                                                             mode="overwrite")
    table.create_index("text", config=FTS(), replace=True)
    found = table.search(MatchQuery(query, "text"), query_type="fts").select(["row", "_score"]).limit(c).to_arrow()
    return sorted(zip(found["row"].to_pylist(), found["_score"].to_pylist()), key=lambda x: (-x[1], x[0]))


def ours(docs: list[str], query: str, c: int = 10) -> list[tuple[int, float]]:
    (rows, scores), = Bm25.build(pa.array(docs)).search([query], c)
    return list(zip(rows.tolist(), scores.tolist()))


def test_bm25_by_hand_and_as_lancedb_scores_it(tmp_path):
    # lengths after "the" and "of" go: 2, 4, 2, 1 words; N = 4, average 2.25; k1 = 1.2, b = 0.75
    # apple: df 2, idf = ln(1 + 2.5 / 2.5) = ln 2
    #   row 1: tf 2, length 4: ln 2 * 2 * 2.2 / (2 + 1.2 (0.25 + 0.75 * 4 / 2.25)) = ln 2 * 4.4 / 3.9 = 0.782012
    #   row 0: tf 1, length 2: ln 2 * 2.2 / (1 + 1.2 (0.25 + 0.75 * 2 / 2.25)) = ln 2 * 2.2 / 2.1 = 0.726154
    # kiwi: df 1, idf = ln(1 + 3.5 / 1.5); row 3, length 1: idf * 2.2 / (1 + 0.7) = 1.558083
    assert same(ours(FRUIT, "apple"), [(1, 0.782012), (0, 0.726154)])
    assert same(ours(FRUIT, "kiwi"), [(3, 1.558083)])
    # a word given twice counts twice; words in no row and stop words find nothing
    assert same(ours(FRUIT, "apple apple"), [(1, 1.564024), (0, 1.452308)])
    assert ours(FRUIT, "the of mango") == [] and ours(FRUIT, "") == [] and ours(FRUIT, "?!") == []
    for query in ("apple", "kiwi", "apple apple", "cherry banana"):
        assert same(ours(FRUIT, query), lancedb_hits(tmp_path, FRUIT, query))


def same(found: list[tuple[int, float]], want: list[tuple[int, float]]) -> bool:
    """The same rows in the same order, scores within a millionth."""
    return [r for r, _ in found] == [r for r, _ in want] and \
        [s for _, s in found] == pytest.approx([s for _, s in want], rel=1e-6)


TRICKY = ["Straße in Köln", "Encyclopædia Britannica", "Søren Kierkegaard", "naïve café résumé",
          "Москва столица", "東京 タワー", "don't stop having it", "a_b c-d e.f", "x² ½ 3rd", "running runners ran",
          "x" * 39 + " tail", "y" * 40 + " tail", "Does he? Having had: doing, mostly others", "RUN run Run running",
          "", "Why not?", "---", "किताब बात", "ωμέγα ωμεγα", "мой мои", "データ テータ", "İstanbul ISTANBUL", "İ" * 19,
          "Le cafe\u0301 est ouvert", "नमस्ते दुनिया", "ΣΟΦΟΣ ΛΟΓΟΣ", "ภาษาไทยง่ายมาก", "كَتَبَ الوَلَدُ"]
QUERIES = ["strasse", "straße", "encyclopaedia", "soren", "naive", "cafe", "résumé", "москва", "東京", "stop",
           "have", "having", "a", "b", "a_b", "f", "x", "2", "3rd", "run", "runner", "x" * 39, "y" * 40, "tail",
           "does", "doe", "mostly", "other", "don't", "RUNNING!", "किताब", "ωμεγα", "ωμέγα", "мой", "データ",
           "istanbul", "İstanbul", "İ" * 19,
           "cafe", "cafe\u0301", "नमस्ते", "नमस", "σοφος", "σοφοσ", "λογος", "ภาษาไทยง่ายมาก", "كَتَبَ"]


def test_the_same_words_and_scores_as_lancedb(tmp_path):
    """Splitting (Alphabetic combining marks inside words, the others cutting them: a virama, a decomposed
    accent, a Thai tone mark), lower case character by character (a final capital sigma is σ), long words
    (measured before lower-casing), stemming, stop words after stemming, accents folded in Latin letters
    only, and rows without a word left out of N and the average length: as LanceDB's."""
    for query in QUERIES:
        assert same(ours(TRICKY, query), lancedb_hits(tmp_path, TRICKY, query)), query


def test_ties_go_to_the_smaller_row_and_c_cuts():
    docs = ["kiwi fig", "kiwi yam", "kiwi oak", "kiwi kiwi", "pear"]  # one length: ties but for row 3
    assert [r for r, _ in ours(docs, "kiwi", 3)] == [3, 0, 1]
    assert [r for r, _ in ours(docs, "kiwi", 10)] == [3, 0, 1, 2]
    assert bm25_score.top(np.array([5, 3, 9, 1]), np.array([1.0, 2.0, 1.0, 1.0]), 2)[0].tolist() == [3, 1]


def test_appended_rows_extend_the_index_as_one_built_whole(monkeypatch):
    docs = [f"{w} {v} row{i}" for i, (w, v) in enumerate(zip(["kiwi", "pear", "fig"] * 9, ["red", "green"] * 14))]
    whole = Bm25.build(pa.array(docs))
    monkeypatch.setattr(bm25, "MAX_SEGMENTS", 3)  # the fourth growth merges the segments
    grown, segments = Bm25.build(pa.array(docs[:5])), []
    for start, stop in ((5, 9), (9, 10), (10, 20), (20, 27)):
        grown = grown.extended(pa.array(docs[start:stop]))
        segments.append(len(grown.segments))
    assert segments == [2, 3, 1, 2] and np.array_equal(grown.lengths, whole.lengths)
    queries = ["kiwi red", "green fig row7", "pear pear row26", "row0"]
    for (r1, s1), (r2, s2) in zip(whole.search(queries, 6), grown.search(queries, 6)):
        assert r1.tolist() == r2.tolist() and np.allclose(s1, s2, rtol=1e-12)
    partial = Bm25.build(pa.array(docs[:9]))
    assert partial.search(["row20"], 3)[0][0].tolist() == []  # an older index never sees later rows' words


def test_a_build_in_blocks_is_the_build_at_once(monkeypatch):
    """Texts cut into words a block at a time (the build's memory) and merged without a sort: the same
    postings as one block, a term first seen in a late block and rows without a word included."""
    docs = [f"{w} {v} row{i % 5}" for i, (w, v) in enumerate(zip(["kiwi", "pear", "fig"] * 9, ["red", "the"] * 14))]
    docs[6:8] = ["", "of the"]
    docs[25] = "mango kiwi kiwi"
    whole = Bm25.build(pa.array(docs))
    monkeypatch.setattr(bm25, "BLOCK_ROWS", 4)
    blocks = Bm25.build(pa.array(docs))
    (one,), (merged,) = whole.segments, blocks.segments
    assert blocks.vocabulary.ids == whole.vocabulary.ids and np.array_equal(blocks.lengths, whole.lengths)
    assert [a.tolist() for a in (merged.starts, merged.rows, merged.tf)] == \
        [a.tolist() for a in (one.starts, one.rows, one.tf)]
    mango = whole.vocabulary.ids["mango"]
    assert one.rows[one.starts[mango]:one.starts[mango + 1]].tolist() == [25]


def test_an_index_searched_after_its_vocabulary_grew_knows_only_its_own_words():
    first = Bm25.build(pa.array(["kiwi fig", "pear plum"]))
    grown = first.extended(pa.array(["kiwi mango", "mango papaya"]))  # shares and grows the vocabulary
    assert len(first.vocabulary.ids) > first.n_terms
    assert [r.tolist() for r, _ in first.search(["mango kiwi", "papaya"], 5)] == [[0], []]
    assert [r.tolist() for r, _ in grown.search(["mango kiwi", "papaya"], 5)] == [[2, 0, 3], [3]]


def test_engine_by_rows_and_the_environment(monkeypatch):
    assert fulltext.engine(None, fulltext.MEMORY_ROWS) == "memory"
    assert fulltext.engine(None, fulltext.MEMORY_ROWS + 1) == "lancedb"
    assert fulltext.engine("memory", 10**9) == "memory" and fulltext.engine("lancedb", 1) == "lancedb"
    monkeypatch.setenv("MRAG_FULLTEXT", "lancedb")
    assert fulltext.engine(None, 1) == "lancedb" and fulltext.engine("memory", 1) == "memory"
    monkeypatch.setenv("MRAG_FULLTEXT", "fast")
    with pytest.raises(ValueError, match="auto, memory, lancedb"):
        fulltext.engine(None, 1)


def test_a_process_searching_once_ranks_a_small_index_as_the_library_does(monkeypatch):
    """`mrag search` / `mrag ask`: in memory up to ONCE_MEMORY_ROWS (LanceDB's statistics lag deletes until its
    index is built again), LanceDB above, MRAG_FULLTEXT first."""
    class Store:
        fulltext: str | None = None

        def __init__(self, rows: int) -> None:
            self.rows = rows

        def count(self) -> int:
            return self.rows

    small, large = Store(fulltext.ONCE_MEMORY_ROWS), Store(fulltext.ONCE_MEMORY_ROWS + 1)
    fulltext.searching_once(small)
    fulltext.searching_once(large)
    assert (small.fulltext, large.fulltext) == ("memory", "lancedb")
    monkeypatch.setenv("MRAG_FULLTEXT", "lancedb")
    fulltext.searching_once(small)
    assert small.fulltext == "lancedb"


DOCS = [{"id": f"d{i}", "text": text} for i, text in enumerate([
    "Roman aqueducts carried water downhill into the city by gravity.",
    "Honeybees fan their wings to cool the hive on hot days.",
    "Deep Blue beat Kasparov at chess in 1997.",
    "The Moon pulls the oceans and raises the tides twice a day.",
    "Kings and queens move across the chess board in the endgame.",
    "Aqueducts of Rome: arches, gravity and the water of the city.",
    "Chess clocks and the endgame of Kasparov.",
])]
QUERY = "Kasparov chess. Why do honeybees fan the hive? Water and gravity."


def both_engines(index: Index, strategy: str) -> tuple[list, list]:
    found = []
    for engine in ("memory", "lancedb"):
        index.store.fulltext = engine
        found.append([(h.id, round(h.score, 5)) for h in index.search(QUERY, k=6, strategy=strategy, exact=True)])
    return found[0], found[1]


def test_searches_through_either_engine_agree_once_lancedb_s_index_covers_every_row(db_path):
    index = Index.open(db_path, embedder=FakeEmbedder())
    index.add(DOCS[:5])
    index.add(DOCS[5:])  # LanceDB scans these apart from its index (other statistics) until an optimize
    index.delete(["d3"])
    index.optimize()
    for strategy in ("bm25", "segment-bm25", "mrag-bm25", "hybrid", "segment+bm25"):
        memory, lance = both_engines(index, strategy)
        assert memory == lance and memory, strategy
    assert "d3#0" not in {i for i, _ in both_engines(index, "bm25")[0]}


def test_concurrent_searches_share_one_build_and_later_versions_carry_it_over(db_path, monkeypatch):
    """8 threads' first searches build once; then an append, a delete, an upsert and a compaction: each
    later version reads only the rows it lacks (none after a delete, every row after a compaction), makes
    one index, and finds what an index built from scratch finds."""
    writer, reader = Index.open(db_path, embedder=FakeEmbedder()), Index.open(db_path, embedder=FakeEmbedder())
    writer.add(DOCS[:4])
    read: list[int] = []
    texts = bm25._texts
    monkeypatch.setattr(bm25, "_texts", lambda matrix, start: (read.append(len(matrix.ids) - start),
                                                               texts(matrix, start))[1])
    start = threading.Barrier(8)
    results: list[list[tuple[str, float]]] = []

    def search() -> None:
        start.wait()
        results.append(found(reader))

    threads = [threading.Thread(target=search) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert read == [4] and len(results) == 8 and all(r == results[0] for r in results) and results[0]
    made: list[int] = []  # indexes constructed (each computes its postings' impacts)
    init = Bm25.__init__
    monkeypatch.setattr(Bm25, "__init__", lambda self, *args: (made.append(1), init(self, *args))[1])
    upsert = [{"id": "d2", "text": "Kasparov resigned; the clocks stopped."}]
    for write, rows_read in ((lambda: writer.add(DOCS[4:]), [3]), (lambda: writer.delete(["d4"]), []),
                             (lambda: writer.upsert(upsert), [1]),
                             (lambda: writer.optimize(), [6])):  # compaction moves every row: read whole
        write()
        read.clear()
        made.clear()
        carried = found(reader)
        assert read == rows_read
        assert len(made) == 1  # one index a version: an upsert's deletes and appends too
        bm25._previous.clear()  # from scratch: every row read
        assert found(Index.open(db_path, embedder=FakeEmbedder())) == carried
        assert read[-1] == len(reader.store.matrix().ids)
    assert "d4#0" not in dict(carried) and "d2#0" in dict(carried)


def found(index: Index) -> list[tuple[str, float]]:
    index.store.fulltext = "memory"
    return [(h.id, round(h.score, 6)) for h in index.search("Kasparov endgame clocks", k=4, strategy="bm25")]


def test_the_index_finds_what_scoring_every_row_by_the_formula_finds():
    """Against every row scored by the formula, on random Zipf-like text, several texts at once: the same
    rows, ties to the smaller row included, and the same scores."""
    rng = np.random.default_rng(7)
    vocabulary = [f"w{i}" for i in range(40)]
    weights = 1 / np.arange(1, 41)
    docs = [" ".join(rng.choice(vocabulary, rng.integers(1, 12), p=weights / weights.sum())) for _ in range(300)]
    index = Bm25.build(pa.array(docs))
    counts = [{w: d.split().count(w) for w in set(d.split())} for d in docs]
    n, average = len(docs), np.mean([len(d.split()) for d in docs])
    for trial in range(200):
        query = list(rng.choice(vocabulary, rng.integers(1, 9), p=weights / weights.sum()))
        c = int(rng.choice([1, 3, 10, 40]))
        scores = np.zeros(n)
        for word in query:  # a repeated word adds again
            df = sum(word in doc for doc in counts)
            idf = np.log(1 + (n - df + 0.5) / (df + 0.5))
            for i, doc in enumerate(counts):
                tf = doc.get(word, 0)
                norm = bm25.K1 * (1 - bm25.B + bm25.B * len(docs[i].split()) / average)
                scores[i] += idf * tf * (bm25.K1 + 1) / (tf + norm)
        order = [i for i in np.lexsort((np.arange(n), -scores)) if scores[i] > 0][:c]
        (rows, found), _ = index.search([" ".join(query), "w1 w2"], c)
        assert rows.tolist() == order, (trial, query, c)
        assert found == pytest.approx(scores[order], rel=1e-6)


def test_a_table_made_again_at_the_same_path_is_never_carried_over(db_path):
    """Row ids name rows within one table: a folder deleted and made again has rows with the same ids and
    other text, and its index is built from its own rows."""
    import shutil

    first = Index.open(db_path, embedder=FakeEmbedder())
    first.add(DOCS[:4])
    assert dict(found(first))
    shutil.rmtree(db_path)
    again = Index.open(db_path, embedder=FakeEmbedder())
    again.add([{"id": f"n{i}", "text": f"Kasparov {'clocks ' * i}and endgame{i}"} for i in range(4)])
    assert [i for i, _ in found(Index.open(db_path, embedder=FakeEmbedder()))] == ["n3#0", "n2#0", "n1#0", "n0#0"]


def test_the_stop_words_follow_the_lancedb_that_builds_the_index():
    # LanceDB 0.41 keeps "not", "no", "nor" and the pieces of contractions ("don't" -> don, t); both drop "the"
    old, new = bm25.stop_words("0.40.0"), bm25.stop_words("0.41.0")
    assert {"not", "no", "nor", "don", "t", "the", "and"} <= old
    assert old - new == bm25.KEPT_SINCE_041 and {"the", "and", "re"} <= new and not {"not", "don", "t"} & new
    assert bm25.stop_words("0.41.2") == bm25.stop_words("1.0") == new and bm25.stop_words("0.20.0") == old
