"""ANN indexes per space (mrag.retrieve.ann) on real LanceDB: same answers as exact search when every
partition is probed, rows written after a build still found, bad input changes nothing."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from mrag.embed.base import Embeddings, HeadEmbedder
from mrag.index import Index
from mrag.retrieve.ann import AnnRanker, _ranks, needs_ann

STRATEGIES = ["standard", "mrag-paper", "mrag-std", "mrag", "interleave+mrag-std", "mrag-decay", "segment+mrag-decay"]


class SeededEmbedder(HeadEmbedder):
    """Continuous random vectors seeded by the text: no ties between distances, so exact and
    ANN rankings can be compared row for row."""

    name = "seeded"
    dim = 16
    n_heads = 4
    head_dim = 8

    def embed_batch(self, texts: list[str]) -> Embeddings:
        rngs = [np.random.default_rng(int.from_bytes(hashlib.md5(t.encode()).digest()[:8], "little")) for t in texts]
        standard = np.stack([r.standard_normal(self.dim) for r in rngs]).astype(np.float32)
        heads = np.stack([r.standard_normal((self.n_heads, self.head_dim)) for r in rngs]).astype(np.float32)
        return Embeddings(standard, heads)


def docs(n: int, start: int = 0) -> list[dict]:
    return [{"id": f"d{i}", "text": f"Document number {i}. It talks about topic {i % 7}."} for i in range(start, n)]


QUERIES = ["Roman roads and bees. Chess engines and tides.", "topic three", "Where do comets come from?"]


@pytest.fixture
def seeded_index(tmp_path) -> Index:
    index = Index.open(tmp_path / "db", embedder=SeededEmbedder())
    index.add(docs(150))
    return index


def hits(index: Index, strategy: str, exact: bool | None, k: int = 10) -> list[list[tuple[str, float]]]:
    return [[(h.id, round(h.score, 5)) for h in index.search(q, k=k, strategy=strategy, exact=exact)]
            for q in QUERIES]


class ZeroHeadEmbedder(SeededEmbedder):
    """Head 2 is zero but for texts that mention "rare": cosine k-means cannot train on zero vectors."""

    name = "zero-head"

    def embed_batch(self, texts: list[str]) -> Embeddings:
        found = super().embed_batch(texts)
        heads = found.heads.copy()
        heads[[i for i, t in enumerate(texts) if "rare" not in t], 2] = 0
        return Embeddings(found.standard, heads)


@pytest.mark.parametrize("rare", [0, 3])  # no row to train head 2 on, or fewer than its 10 partitions
def test_a_head_with_too_few_nonzero_vectors_still_builds_and_answers_as_exact(tmp_path, rare):
    index = Index.open(tmp_path / "db", embedder=ZeroHeadEmbedder())
    index.add([{"id": f"d{i}", "text": f"doc {i} on topic {i % 7}" + (" rare" if i < rare else "")}
               for i in range(100)])
    assert index.build_ann(nprobes=1000)["rows"] == 100
    indexed = {c for ix in index.store.chunks.list_indices() for c in ix.columns}
    assert ("head_2" in indexed) == bool(rare)  # trained on its non-zero rows, else scanned flat
    for strategy in ("mrag", "mrag-paper", "standard"):
        exact = [h.id for h in index.search("topic 3 rare", k=10, strategy=strategy, exact=True)]
        assert [h.id for h in index.search("topic 3 rare", k=10, strategy=strategy, exact=False)] == exact


def test_ranks_within_each_part():
    assert _ranks(np.array([0, 0, 1, 1, 1, 3])).tolist() == [0, 1, 0, 1, 2, 0]
    assert _ranks(np.array([], dtype=np.int64)).tolist() == []


def test_needs_ann():
    assert not needs_ann(99, None, 100)
    assert needs_ann(100, None, 100)
    assert not needs_ann(120, {"rows": 100}, 100)  # the flat-scanned remainder is still small
    assert needs_ann(126, {"rows": 100}, 100)
    assert needs_ann(100, {"rows": 100}, 100, unindexed=40)  # as many rows, 40 of them replaced
    assert not needs_ann(100, {"rows": 100}, 100, unindexed=10)
    assert not needs_ann(10**7, None, 0)  # 0 turns automatic builds off
    assert needs_ann(80, {"rows": 60}, 100)  # built below the threshold (by hand, or under a lower one): kept up
    assert not needs_ann(70, {"rows": 60}, 100)
    assert not needs_ann(80, {"rows": 60}, 0)


def test_indexes_built_below_the_threshold_are_rebuilt_as_rows_grow(seeded_index):
    seeded_index.build_ann()  # 150 rows, far below the default threshold
    seeded_index.add([{"id": f"new{n}", "text": f"a new text {n}"} for n in range(30)])
    assert seeded_index.store.manifest.ann["rows"] == 150  # 30 unindexed rows: fewer than a quarter
    seeded_index.add([{"id": f"more{n}", "text": f"another text {n}"} for n in range(20)])
    assert seeded_index.store.manifest.ann["rows"] == 200  # 50 > 150 / 4: rebuilt


def test_replaced_rows_count_as_unindexed(seeded_index):
    from mrag.retrieve.ann import unindexed_rows

    assert unindexed_rows(seeded_index.store.snapshot()) is None
    seeded_index.build_ann()
    assert unindexed_rows(seeded_index.store.snapshot()) == 0
    seeded_index.ann_policy.threshold = 0  # no automatic rebuild: the replaced rows stay unindexed
    seeded_index.upsert([{"id": f"d{n}", "text": f"changed {n}"} for n in range(40)])  # same row count
    snapshot = seeded_index.store.snapshot()
    assert snapshot.count_rows() == 150 and unindexed_rows(snapshot) == 40
    assert needs_ann(150, seeded_index.store.manifest.ann, 100, unindexed_rows(snapshot))


def test_ann_probing_every_partition_answers_as_exact_search(seeded_index):
    exact = {s: hits(seeded_index, s, True) for s in STRATEGIES}
    built = seeded_index.build_ann("IVF_FLAT")  # sqrt(150) = 12 partitions; 60 probes read them all
    assert built["rows"] == 150 and seeded_index.info()["ann"] == built
    for strategy in STRATEGIES:
        assert hits(seeded_index, strategy, None) == exact[strategy], strategy
        assert hits(seeded_index, strategy, False) == exact[strategy], strategy


def test_ann_and_rescored_searches_print_no_lancedb_warning(seeded_index, capfd):
    seeded_index.build_ann()
    capfd.readouterr()
    seeded_index.search(QUERIES[0], k=3, strategy="mrag-std")  # one index per space
    seeded_index.search(QUERIES[0], k=3, strategy="mrag-std", candidates=50)  # the standard index proposes
    assert "WARN" not in capfd.readouterr().err  # LanceDB warned on every search that named no `_distance`


def test_ann_results_carry_the_same_votes(seeded_index):
    before = seeded_index.search(QUERIES[0], k=3, strategy="mrag-std", exact=True)
    seeded_index.build_ann()
    after = seeded_index.search(QUERIES[0], k=3, strategy="mrag-std")
    assert [h.votes for h in after] == [h.votes for h in before]
    assert {v["space"] for h in after for v in h.votes} <= {"standard", "head:0", "head:1", "head:2", "head:3"}


def test_rows_written_after_the_build_are_found_and_deleted_rows_are_not(seeded_index):
    seeded_index.build_ann()
    seeded_index.add(docs(160, start=150))
    text = docs(160, start=150)[3]["text"]
    assert seeded_index.search(text, k=1, strategy="standard")[0].id == "d153#0"  # its own vector: distance 0
    assert hits(seeded_index, "mrag", None) == hits(seeded_index, "mrag", True)
    seeded_index.delete(["d153"])
    assert all(h.doc_id != "d153" for h in seeded_index.search(text, k=20, strategy="mrag-std"))


def test_ivf_pq_recall(tmp_path):
    index = Index.open(tmp_path / "db", embedder=SeededEmbedder())
    index.add(docs(400))  # PQ training needs 256 rows
    exact = hits(index, "mrag", True)
    index.build_ann("IVF_PQ")
    approx = hits(index, "mrag", None)
    overlap = np.mean([len({i for i, _ in a} & {i for i, _ in e}) / len(e) for a, e in zip(approx, exact)])
    assert overlap >= 0.9


def test_split_searches_exactly_and_exact_false_needs_an_index(seeded_index):
    with pytest.raises(ValueError, match="no ANN index"):
        seeded_index.search(QUERIES[0], exact=False)
    expected = hits(seeded_index, "split", True)
    seeded_index.build_ann()
    assert hits(seeded_index, "split", None) == expected  # slices have no column: always exact
    with pytest.raises(ValueError, match="no ANN index"):
        seeded_index.search(QUERIES[0], strategy="split", exact=False)


def test_bad_ann_requests_change_nothing(seeded_index, tmp_path):
    version, before = seeded_index.store.committed_version, hits(seeded_index, "mrag", None)
    with pytest.raises(ValueError, match="unknown ANN index type 'HNSW_NOPE'"):
        seeded_index.build_ann("HNSW_NOPE")
    assert seeded_index.store.committed_version == version and seeded_index.store.manifest.ann is None
    assert hits(seeded_index, "mrag", None) == before
    empty = Index.open(tmp_path / "empty", embedder=SeededEmbedder())
    with pytest.raises(ValueError, match="the index is empty"):
        empty.build_ann()


def test_a_space_without_a_column_is_refused(seeded_index):
    from mrag.retrieve.types import QueryVectors, Voter

    ranker = AnnRanker(seeded_index.store.snapshot(), {"standard": "vector"})
    q = QueryVectors(np.ones(16), np.ones((4, 8)))
    with pytest.raises(ValueError, match="'head:0' has no ANN column"):
        ranker([Voter("head:0", "heads", 1.0)], [q], 3)


def test_search_many_matches_one_by_one(seeded_index):
    for exact in (True, None):
        together = seeded_index.search_many(QUERIES, k=4, exact=exact)
        assert [[h.id for h in hs] for hs in together] == [
            [h.id for h in seeded_index.search(q, k=4, exact=exact)] for q in QUERIES
        ]
        seeded_index.build_ann()


def test_nprobes_trades_recall_for_speed_and_bad_values_are_refused(seeded_index):
    exact = hits(seeded_index, "mrag-std", True)
    assert seeded_index.build_ann(nprobes=1)["nprobes"] == 1  # 1 of 12 partitions by default
    one = [[h.id for h in seeded_index.search(q, k=10, strategy="mrag-std")] for q in QUERIES]
    assert one != [[i for i, _ in e] for e in exact]
    assert hits(seeded_index, "mrag-std", None) != exact
    everything = [[(h.id, round(h.score, 5)) for h in seeded_index.search(q, k=10, strategy="mrag-std", nprobes=12)]
                  for q in QUERIES]
    assert everything == exact
    with pytest.raises(ValueError, match="nprobes must be positive, got 0"):
        seeded_index.search(QUERIES[0], nprobes=0)
    with pytest.raises(ValueError, match="nprobes must be positive, got -1"):
        seeded_index.build_ann(nprobes=-1)


def test_adding_a_space_builds_the_ann_indexes_again_with_its_column(seeded_index):
    from conftest import MINILM_DIR

    built = seeded_index.build_ann()  # by hand, below the threshold: kept up all the same
    spaced = Index.open(seeded_index.store.uri, embedder=SeededEmbedder(),
                        spaces=[f"minilm=sentence-transformers:name={MINILM_DIR}"])  # the table is rewritten
    assert spaced.store.manifest.ann == built and spaced.info()["ann"] == built
    assert len(spaced.store.chunks.list_indices()) == 1 + 4 + 1 + 1  # one per space, the new one included,
    # and the full-text index
    assert hits(spaced, "mrag-std", None) == hits(spaced, "mrag-std", True)


def test_library_writes_keep_the_ann_indexes_by_policy(tmp_path):
    """The policy lives in the library: Python, CLI and HTTP writes all go through `Index._write`."""
    from mrag.settings import AnnPolicy

    index = Index.open(tmp_path / "db", embedder=SeededEmbedder())
    index.ann_policy = AnnPolicy(threshold=100, index_type="IVF_FLAT", nprobes=8)
    assert index.add(docs(90)).ann is None and index.store.manifest.ann is None  # below the threshold
    report = index.add(docs(110, 90))
    assert report.ann == {"index_type": "IVF_FLAT", "rows": 110, "nprobes": 8} == index.store.manifest.ann
    assert report.to_dict()["ann"] == report.ann
    assert index.add(docs(120, 110)).ann is None  # 10 unindexed rows: not yet a quarter
    assert index.add(docs(140, 120)).ann["rows"] == 140  # 30 of 110: rebuilt
    assert len(index.search("topic three", k=3, exact=False)) == 3  # exact=False needs the indexes
    assert "ann" not in index.add(docs(141, 140)).to_dict()


@pytest.mark.parametrize("index_type", ["IVF_FLAT", "HNSW"])
def test_writers_crossing_the_threshold_together_build_the_indexes_once(tmp_path, monkeypatch, index_type):
    """Each writer decided to build outside the lock, and each built every index again under it, one after
    another (minutes each at 1M rows): a writer that finds them rebuilt meanwhile builds nothing."""
    from mrag import upkeep
    from mrag.retrieve import ann, graph
    from mrag.settings import AnnPolicy

    index = Index.open(tmp_path / "db", embedder=SeededEmbedder())
    other = Index.open(tmp_path / "db", embedder=SeededEmbedder())
    for writer in (index, other):
        writer.ann_policy = AnnPolicy(threshold=100, index_type=index_type, nprobes=8)
    index.add(docs(90))
    module = graph if index_type == "HNSW" else ann
    builds, real_build, real_like = [], module.build, upkeep.build_like
    monkeypatch.setattr(module, "build", lambda *a, **k: (builds.append(1), real_build(*a, **k))[1])

    def the_other_first(*args, **kwargs):  # the other writer commits and builds between our look and our lock
        monkeypatch.setattr(upkeep, "build_like", real_like)
        other.add(docs(110, 100))
        return real_like(*args, **kwargs)

    monkeypatch.setattr(upkeep, "build_like", the_other_first)
    report = index.add(docs(100, 90))
    assert len(builds) == 1 and report.ann == index.store.manifest.ann
    assert index.store.manifest.ann == {"index_type": index_type, "rows": 110, "nprobes": 8}


@pytest.mark.parametrize("index_type", ["IVF_FLAT", "IVF_PQ"])  # PQ: its refine re-ranks on full vectors
def test_every_space_asked_together_answers_as_the_synchronous_api(tmp_path, monkeypatch, index_type):
    from mrag.retrieve import ann
    from mrag.retrieve import strategies as retrieve

    index = Index.open(tmp_path / "db", embedder=SeededEmbedder())
    index.add(docs(400))  # PQ training needs 256 rows
    index.build_ann(index_type, nprobes=3)
    index.add(docs(420, 400))  # rows the indexes do not cover: LanceDB scans them flat
    table = index.store.snapshot()
    columns = {c.space: c.column for c in index.store.vector_columns(committed=True)}
    voters = retrieve.voters("mrag", 4, index.space_weights())
    emb = index.embedder.embed(["Roman roads and bees.", "Chess engines and tides.", "topic three"], kind="query")
    parts = [retrieve.QueryVectors(retrieve.unit(s), retrieve.unit(h)) for s, h in zip(emb.standard, emb.heads)]
    answers = []
    for refine in (None, 2):
        for queries in (parts, parts[:1]):  # several parts (LanceDB's query_index) and one
            together = AnnRanker(table, columns, nprobes=3, refine=refine)
            found = together(voters, queries, 7)
            with monkeypatch.context() as m:
                m.setattr(ann, "async_table", lambda table: None)  # through the synchronous API, on threads
                one_by_one = AnnRanker(table, columns, nprobes=3, refine=refine)
                expected = one_by_one(voters, queries, 7)
            assert (found[0] >= 0).sum() == len(voters) * len(queries) * 7
            assert np.array_equal(found[0], expected[0]) and np.array_equal(found[1], expected[1])
            assert together.ids == one_by_one.ids and together.row_ids == one_by_one.row_ids
            answers.append(found[1])
    assert (index_type == "IVF_PQ") == (not np.array_equal(answers[0], answers[2]))  # refine re-scores PQ's distances


def test_dropping_the_ann_indexes_returns_to_exact_search(seeded_index):
    """`drop_ann` (`mrag index --drop-ann`) removes the vector indexes in one commit; the full-text index
    stays, searches scan exactly, and a later write below the threshold builds none."""
    assert seeded_index.drop_ann() is None  # nothing to drop
    built = seeded_index.build_ann()
    assert seeded_index.drop_ann() == built and seeded_index.store.manifest.ann is None
    assert [i.index_type for i in seeded_index.store.chunks.list_indices()] == ["FTS"]
    assert hits(seeded_index, "mrag-std", None) == hits(seeded_index, "mrag-std", True)
    with pytest.raises(ValueError, match="this index has no ANN index: build one"):
        seeded_index.search(QUERIES[0], exact=False)
    seeded_index.add([{"id": "later", "text": "a text written after the drop"}])
    assert seeded_index.store.manifest.ann is None
    reader = Index.open(seeded_index.store.uri, embedder=SeededEmbedder())  # another process's view
    assert reader.store.manifest.ann is None and reader.drop_ann() is None


def test_a_drop_that_fails_midway_keeps_every_index(seeded_index, monkeypatch):
    built = seeded_index.build_ann()
    before = hits(seeded_index, "mrag-std", None)
    table = type(seeded_index.store.chunks)
    real, calls = table.drop_index, []

    def failing(self, name):
        calls.append(name)
        if len(calls) == 2:
            raise OSError("disk full")
        return real(self, name)

    monkeypatch.setattr(table, "drop_index", failing)
    with pytest.raises(OSError, match="disk full"):
        seeded_index.drop_ann()
    monkeypatch.undo()
    reader = Index.open(seeded_index.store.uri, embedder=SeededEmbedder())
    assert reader.store.manifest.ann == built
    assert len(reader.store.chunks.list_indices()) == 1 + 4 + 1  # every space's index and the full-text one
    assert hits(reader, "mrag-std", False) == before
