"""In-process HNSW graphs (mrag.retrieve.graph) on real LanceDB: exact answers on a small index (the
walk reaches every row), appended rows found before the graphs catch up, deleted and upserted rows
skipped without a rebuild and never stale, graphs shared between processes, and bad input that changes
nothing."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from test_ann import QUERIES, SeededEmbedder, docs

from mrag.index import Index
from mrag.matrix import Matrix
from mrag.retrieve import graph, walk
from mrag.retrieve.exact import Exact
from mrag.retrieve.nodes import DEAD, NodeIndex, placement, placement_after, row_keys
from mrag.retrieve.types import QueryVectors, Voter

STRATEGIES = ["standard", "segment-bm25", "mrag", "mrag-paper", "split", "segment+mrag-decay"]


def hits(index: Index, strategy: str, exact: bool | None, k: int = 10) -> list[list[tuple[str, float]]]:
    return [[(h.id, h.score) for h in index.search(q, k=k, strategy=strategy, exact=exact)] for q in QUERIES]


def same(index: Index, strategy: str) -> bool:
    """The graphs' hits are the exact search's: the same rows, scores equal up to the products' last bits
    (the re-score multiplies the rows one at a time, the scan in blocks)."""
    walked, scanned = hits(index, strategy, None), hits(index, strategy, True)
    ids = [[i for i, _ in q] for q in walked] == [[i for i, _ in q] for q in scanned]
    return ids and np.allclose([s for q in walked for _, s in q], [s for q in scanned for _, s in q], atol=1e-5)


@pytest.fixture
def graph_index(tmp_path) -> Index:
    index = Index.open(tmp_path / "db", embedder=SeededEmbedder())
    index.add(docs(150))
    index.build_ann("HNSW")
    return index


def root(index: Index):
    return graph.folder(index.store.uri)


def folders(index: Index) -> list[str]:
    return sorted(p.name for p in root(index).iterdir() if not p.name.startswith("."))


def placed(index: Index) -> tuple[graph.Graphs, graph.Placement]:
    """The newest graphs that fit the index's matrix, and where their nodes are in it."""
    matrix = index.store.matrix()
    found = graph.latest(root(index), matrix)
    assert found is not None
    place = found.place(matrix)
    assert place is not None
    return found, place


def test_a_small_index_walks_to_the_exact_answer(graph_index):
    built = graph_index.info()["ann"]
    assert built["index_type"] == "HNSW" and built["nprobes"] == graph.DEFAULT_EF
    assert len(folders(graph_index)) == 1
    for strategy in STRATEGIES:  # a walk of ef 128 among 150 rows reaches them all
        assert same(graph_index, strategy), strategy


def test_the_ranker_walks_graphs_and_scans_other_voters(graph_index):
    from mrag.retrieve.search import ranker_for
    from mrag.retrieve.strategies import parse_strategy

    ranker, _, rows = ranker_for(graph_index.store, parse_strategy("mrag"), None)
    assert rows == 150 and isinstance(ranker.inner, walk.GraphRanker)
    assert set(ranker.inner.graphs.files) == {"standard", "head:0", "head:1", "head:2", "head:3"}
    exact_ranker, _, _ = ranker_for(graph_index.store, parse_strategy("mrag"), True)
    assert isinstance(exact_ranker.inner, Exact)


def test_appended_rows_are_found_before_the_graphs_catch_up(graph_index, monkeypatch):
    monkeypatch.setattr(graph, "STALE_SHARE", 1.0)  # the writes below leave the graphs behind
    before = folders(graph_index)
    graph_index.add(docs(170, 150))
    assert folders(graph_index) == before
    found, place = placed(graph_index)
    assert len(found.nodes) == 150 and place.covered == 150 and place.removed == 0
    newest = graph_index.search("Document number 160. It talks about topic 6.", k=1, strategy="standard")
    assert newest[0].doc_id == "d160"  # a row past the graph, scanned
    for strategy in STRATEGIES:
        assert same(graph_index, strategy), strategy


def test_writes_extend_the_graphs(graph_index):
    assert graph_index.info()["ann"]["graph_nodes"] == 150
    graph_index.add(docs(170, 150))  # 20 rows: more than STALE_SHARE of 170
    found, place = placed(graph_index)
    assert len(found.nodes) == 170 and place.covered == 170
    assert all(found.graph(space).ntotal == 170 for space in found.files)
    ann = graph_index.info()["ann"]  # `rows` as built; what the graphs cover now beside it
    assert (ann["rows"], ann["graph_nodes"], ann["graph_version"]) == (150, 170, found.version)


def test_no_stale_row_after_a_delete_or_an_upsert(graph_index, monkeypatch):
    monkeypatch.setattr(graph, "update", lambda *a, **k: None)  # graphs left as they were
    graph_index.delete(["d3"])
    found, place = placed(graph_index)  # the rows after d3's moved up one: the graph still serves
    assert place.removed == 1 and place.covered == 149 and place.rows[3] == -1 and place.rows[4] == 3
    assert "d3" not in {h.doc_id for h in graph_index.search(QUERIES[0], k=149, strategy="standard")}
    for strategy in STRATEGIES:
        assert same(graph_index, strategy), strategy
    graph_index.upsert([{"id": "d5", "text": "A new text about tides and comets."}])
    _, place = placed(graph_index)  # d5's old row removed, its new one past the graph
    assert place.removed == 2 and place.covered == 148
    hit = graph_index.search("A new text about tides and comets.", k=1, strategy="standard")[0]
    assert hit.doc_id == "d5" and "tides" in hit.text
    for strategy in STRATEGIES:
        assert same(graph_index, strategy), strategy


def test_a_write_rebuilds_graphs_that_lost_too_many_rows(graph_index):
    first = folders(graph_index)
    graph_index.delete([f"d{i}" for i in range(0, 150, 10)])  # 15 of 150 rows: under REMOVED_SHARE
    assert folders(graph_index) == first  # nothing to write: the graphs skip the removed rows
    graph_index.delete([f"d{i}" for i in range(1, 150, 5)])  # 30 more: 45 of 150 nodes removed
    found, place = placed(graph_index)
    assert found.version == graph_index.store.committed_version and len(found.nodes) == 105
    assert place.removed == 0 and len(folders(graph_index)) == 2  # this version's and the one before
    for strategy in STRATEGIES:
        assert same(graph_index, strategy), strategy


def test_another_process_reads_the_graphs(graph_index, tmp_path):
    script = (
        "import json, sys\n"
        "from mrag.index import Index\n"
        "from test_ann import SeededEmbedder\n"
        "from mrag.retrieve.search import ranker_for\n"
        "from mrag.retrieve.strategies import parse_strategy\n"
        "index = Index.open(sys.argv[1], embedder=SeededEmbedder())\n"
        "ranker, _, _ = ranker_for(index.store, parse_strategy('standard'), None)\n"
        "hits = [[h.id for h in index.search(q, k=5, strategy='standard')] for q in sys.argv[2:]]\n"
        "print(json.dumps({'walked': type(ranker.inner).__name__, 'hits': hits}))\n"
    )
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "db"), *QUERIES], capture_output=True,
                         text=True, check=True, cwd=str(Path(__file__).parent))
    found = json.loads(out.stdout)
    assert found["walked"] == "GraphRanker"
    assert found["hits"] == [[h.id for h in graph_index.search(q, k=5, strategy="standard")] for q in QUERIES]


def test_bad_input_changes_nothing(graph_index):
    before = hits(graph_index, "mrag", None)
    version = graph_index.store.committed_version
    with pytest.raises(ValueError, match="nprobes must be positive"):
        graph_index.build_ann("HNSW", nprobes=-1)
    with pytest.raises(ValueError, match="nprobes must be positive"):
        graph_index.search(QUERIES[0], nprobes=0)
    assert graph_index.store.committed_version == version and hits(graph_index, "mrag", None) == before


def test_an_empty_index_cannot_build_graphs(tmp_path):
    index = Index.open(tmp_path / "db", embedder=SeededEmbedder())
    with pytest.raises(ValueError, match="empty"):
        index.build_ann("HNSW")


def test_walk_by_hand():
    # 4 rows in 2 dimensions; the query (1, 0) is nearest row 2, then rows 0 and 3 tie (0.6): the smaller first
    rows = np.array([[0.6, 0.8], [-1.0, 0.0], [1.0, 0.0], [0.6, -0.8]], dtype=np.float32)
    no_heads = np.zeros((0, 4, 0), dtype=np.float32)
    matrix = Matrix(version=1, table=None, ids=np.array(["a", "b", "c", "d"], dtype=object), standard=rows,
                    heads=no_heads)
    built = graph.new_graph(2)
    graph.extend(built, rows[:3])  # row 3 is past the graph: scanned
    graphs = graph.Graphs(1, row_keys(matrix.ids[:3], rows), {"standard": Path("unused")}, {"standard": built})
    assert graphs.fits(matrix)
    ranker = walk.GraphRanker(matrix, graphs, Exact(rows, matrix.heads))
    query = QueryVectors(np.array([1.0, 0.0], dtype=np.float32), np.zeros((0, 0), dtype=np.float32))
    standard = [Voter("standard", "standard", 1.0)]
    ranking, sims = ranker(standard, [query], 5)
    assert ranking[0, 0].tolist() == [2, 0, 3, 1, -1]
    np.testing.assert_allclose(sims[0, 0, :4], [1.0, 0.6, 0.6, -1.0], atol=1e-6)
    assert sims[0, 0, 4] == -np.inf
    changed = Matrix(2, None, np.array(["a", "x", "c", "d"], dtype=object), rows, matrix.heads)
    moved = rows.copy()
    moved[1] = [0.0, 1.0]  # the same ids, another vector (an upsert of the last document)
    # b deleted: a and c stay nodes 0 and 2, at rows 0 and 1; d (row 2) is past the graph
    left = Matrix(5, None, matrix.ids[[0, 2, 3]], rows[[0, 2, 3]], no_heads[:, :3])
    placed_rows = [  # -> the row of each node (-1: removed), and the rows it covers
        (changed, [0, -1, -1], 1),  # b's row holds another chunk: it and the rows after are scanned
        (Matrix(3, None, matrix.ids, moved, matrix.heads), [0, -1, -1], 1),
        (Matrix(4, None, matrix.ids[[2, 0, 1, 3]], rows[[2, 0, 1, 3]], matrix.heads), [-1, -1, 0], 1),  # reordered
        (left, [0, -1, 1], 2),
    ]
    for other, nodes, covered in placed_rows:
        place = graphs.place(other)
        assert place is not None and place.rows.tolist() == nodes and place.covered == covered
        walked = walk.GraphRanker(other, graphs, Exact(other.standard, other.heads))(standard, [query], 4)
        scanned = Exact(other.standard, other.heads)(standard, [query], 4)
        assert walked[0].tolist() == scanned[0].tolist()
        np.testing.assert_allclose(walked[1], scanned[1], atol=1e-6)
    ranking, _ = walk.GraphRanker(left, graphs, Exact(left.standard, left.heads))(standard, [query], 4)
    assert ranking[0, 0].tolist() == [1, 0, 2, -1]  # c, then a and d tied; node b never returned


def test_placement_by_hand():
    a, b, c, d, e = np.arange(1, 11, 2, dtype=np.uint64)  # odd, as row keys are
    nodes = np.array([a, b, c, d])
    place = placement(nodes, np.array([a, c, d, e]))
    assert place is not None and place.rows.tolist() == [0, -1, 1, 2] and place.covered == 3
    assert placement(nodes, np.array([a, b, c, d])).bitmap is None  # nothing removed: no selector
    place = placement(nodes, np.array([a, e, c]))  # rows after an appended one are scanned
    assert place.rows.tolist() == [0, -1, -1, -1] and place.covered == 1
    place = placement(nodes, np.array([a, c, d, b]))  # b deleted and written again: appended
    assert place.rows.tolist() == [0, -1, 1, 2] and place.covered == 3
    place = placement(np.array([a, graph.DEAD, c, d, b]), np.array([a, c, d, b]))  # ... and extended
    assert place.rows.tolist() == [0, -1, 1, 2, 3] and place.covered == 4 and place.removed == 1
    assert placement(nodes, np.array([e, a])) is None  # the first row is no node
    assert placement(nodes, np.array([], dtype=np.uint64)) is None
    assert placement(np.array([a, a]), np.array([a])) is None  # two nodes with one key: neither is one
    place = placement(np.array([a, b, b, c]), np.array([a, b, c]))  # ... so b's row ends the covered run
    assert place.rows.tolist() == [0, -1, -1, -1] and place.covered == 1
    keys = row_keys(np.array(["x", "y"], dtype=object), np.eye(2, 9, dtype=np.float32))
    assert keys.dtype == np.uint64 and keys[0] != keys[1] and (keys % 2 == 1).all()


def test_placement_after_appended_rows_by_hand():
    a, b, c, d, e = np.arange(1, 11, 2, dtype=np.uint64)
    nodes = np.array([a, b, c, d])
    index = NodeIndex.of(nodes)
    before = placement(nodes, np.array([a, b]), index)  # a matrix that had a and b
    after = placement_after(nodes, index, before, 2, np.array([c, e]))  # then c and e were appended
    assert after.rows.tolist() == [0, 1, 2, -1] and after.covered == 3
    broken = placement(nodes, np.array([a, e]), index)  # the run broke at e: appended rows change nothing
    assert placement_after(nodes, index, broken, 2, np.array([b, c])) is broken


def test_placement_after_appended_rows_equals_the_whole_placement():
    rng = np.random.default_rng(0)
    universe = np.arange(1, 81, 2, dtype=np.uint64)  # 40 odd keys
    for _ in range(500):
        nodes = rng.choice(universe, size=int(rng.integers(1, 24)), replace=bool(rng.integers(2)))
        nodes[rng.random(len(nodes)) < 0.1] = DEAD
        kept = [k for k in nodes if k != DEAD and rng.random() > 0.2]  # the rows a delete left, in node order
        keys = np.array(kept + list(rng.choice(universe, size=int(rng.integers(0, 6)))), dtype=np.uint64)
        if rng.random() < 0.2:
            rng.shuffle(keys)
        cuts = sorted(int(c) for c in rng.integers(0, len(keys) + 1, size=int(rng.integers(1, 4))))
        index = NodeIndex.of(nodes)
        after, m = placement(nodes, keys[: cuts[0]], index), cuts[0]
        for cut in [*cuts[1:], len(keys)]:  # grown once or more: each time by the rows after the last cut
            after, m = placement_after(nodes, index, after, m, keys[m:cut]), cut
        whole = placement(nodes, keys)
        assert (after is None) == (whole is None)
        if whole is not None:
            assert after.rows.tolist() == whole.rows.tolist() and after.covered == whole.covered
            assert (after.bitmap is None) == (whole.bitmap is None)
            assert whole.bitmap is None or after.bitmap.tolist() == whole.bitmap.tolist()


def test_a_grown_matrix_is_placed_from_its_new_rows(graph_index, monkeypatch):
    """After an append a search places its graphs from the keys of the appended rows alone, and the
    placement equals one from every row. (The write's own upkeep reads the graphs apart, since it may
    extend them, and places them from every row.)"""
    graph_index.search(QUERIES[0], strategy="standard")  # the matrix and its placement
    graph_index.add(docs(153, 150))  # 3 rows: below STALE_SHARE, the graphs are kept
    keyed = []
    real = graph.place_in.__globals__["row_keys"]
    monkeypatch.setitem(graph.place_in.__globals__, "row_keys", lambda ids, standard: (keyed.append(len(ids)),
                                                                                         real(ids, standard))[1])
    graph_index.search(QUERIES[0], strategy="standard")
    held = graph_index.store.graphs
    assert keyed == [3]
    matrix = graph_index.store.matrix()
    place = held.place(matrix)
    whole = placement(held.nodes, real(matrix.ids, matrix.standard))
    assert place.rows.tolist() == whole.rows.tolist() and place.covered == whole.covered == 150
    for strategy in STRATEGIES:
        assert same(graph_index, strategy), strategy


def test_a_chunk_deleted_and_written_again_keeps_the_graphs(graph_index):
    built = folders(graph_index)
    graph_index.delete(["d5"])
    graph_index.add(docs(6, 5))  # d5 again, the same vector: its old node's key, at the end of the rows
    assert folders(graph_index) == built
    _, place = placed(graph_index)
    assert place.removed == 1 and place.covered == 149
    graph_index.add(docs(170, 150))  # extended: d5's row becomes a new node, its old one stays removed
    found, place = placed(graph_index)
    assert len(found.nodes) == 171 and found.nodes[5] == graph.DEAD and place.removed == 1
    assert place.covered == 170 and place.rows[150] == 149
    for strategy in STRATEGIES:
        assert same(graph_index, strategy), strategy


def test_the_default_strategy_reads_the_standard_graph_alone(graph_index):
    graph_index.store.graphs = None
    graph_index.search(QUERIES[0], strategy="segment-bm25")
    assert set(graph_index.store.graphs.loaded) == {"standard"}
    graph_index.search(QUERIES[0], strategy="mrag")
    assert len(graph_index.store.graphs.loaded) == 5


def test_a_graph_removed_under_a_reader_is_scanned(graph_index):
    graph_index.search(QUERIES[0], strategy="standard")  # the reader holds the standard graph only
    held = graph_index.store.graphs
    for path in held.files.values():
        path.unlink()  # as a newer update's clean-up would
    with pytest.warns(RuntimeWarning, match="cannot be read"):
        assert same(graph_index, "mrag")  # the heads' graphs are gone: scanned
    assert held.broken == {f"head:{i}" for i in range(4)}
    for strategy in STRATEGIES:
        assert same(graph_index, strategy), strategy
    graph_index.add(docs(170, 150))  # a newer update: the next search walks its graphs
    graph_index.search(QUERIES[0], strategy="mrag")
    assert graph_index.store.graphs is not held and not graph_index.store.graphs.broken
    assert len(graph_index.store.graphs.loaded) == 5


WRITER = """
import sys
from mrag.index import Index
from test_ann import SeededEmbedder, docs
index = Index.open(sys.argv[1], embedder=SeededEmbedder())
for first in range(150, 230, 20):
    index.add(docs(first + 20, first))  # each write extends the graphs (20 rows: past STALE_SHARE)
"""


def test_searches_beside_a_writer_process(graph_index, tmp_path):
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path / "db")], cwd=str(Path(__file__).parent),
                              stderr=subprocess.PIPE, text=True)
    compared = 0
    while writer.poll() is None:  # a graph search and an exact one at the same committed version agree
        walked = [h.id for h in graph_index.search(QUERIES[0], k=5, strategy="mrag")]
        version = graph_index.store.committed_version
        scanned = [h.id for h in graph_index.search(QUERIES[0], k=5, strategy="mrag", exact=True)]
        if graph_index.store.committed_version == version:
            assert walked == scanned
            compared += 1
    assert writer.wait() == 0, writer.stderr.read()
    assert compared > 0
    found, place = placed(graph_index)
    assert len(found.nodes) == 230 and place.covered == 230 and found.version == graph_index.store.committed_version
    assert len(folders(graph_index)) == 2
    for strategy in STRATEGIES:
        assert same(graph_index, strategy), strategy


DELETER = """
import sys
from mrag.index import Index
from test_ann import SeededEmbedder, docs
index = Index.open(sys.argv[1], embedder=SeededEmbedder())
for i in range(6):
    index.delete([f"d{10 * i + 3}", f"d{10 * i + 4}"])  # the graphs are kept: their nodes skipped
    index.upsert([{"id": f"d{10 * i + 5}", "text": f"Rewritten {i}: Roman roads, bees, chess engines and tides."}])
    index.add(docs(160 + 10 * i, 150 + 10 * i))  # 10 rows: past STALE_SHARE, the graphs are extended
"""


def test_searches_beside_a_process_that_deletes_and_upserts(graph_index, tmp_path):
    writer = subprocess.Popen([sys.executable, "-c", DELETER, str(tmp_path / "db")], cwd=str(Path(__file__).parent),
                              stderr=subprocess.PIPE, text=True)
    compared = 0
    while writer.poll() is None:  # a graph search and an exact one at the same committed version agree
        for strategy in ("standard", "mrag"):
            walked = [(h.id, h.text) for h in graph_index.search(QUERIES[0], k=8, strategy=strategy)]
            version = graph_index.store.committed_version
            scanned = [(h.id, h.text) for h in graph_index.search(QUERIES[0], k=8, strategy=strategy, exact=True)]
            if graph_index.store.committed_version == version:
                assert walked == scanned, strategy
                compared += 1
    assert writer.wait() == 0, writer.stderr.read()
    assert compared > 0
    found, place = placed(graph_index)
    assert place.removed == 18 and len(found.nodes) == 210 + 6  # 12 deleted, 6 upserted: their old nodes
    assert not {"d3", "d4", "d53", "d54"} & {h.doc_id for h in graph_index.search(QUERIES[0], k=200)}
    for strategy in STRATEGIES:
        assert same(graph_index, strategy), strategy


def test_a_delete_keeps_the_graphs(graph_index):
    built = folders(graph_index)
    graph_index.delete(["d7"])
    assert folders(graph_index) == built
    found, place = placed(graph_index)
    assert len(found.nodes) == 150 and place.removed == 1 and place.bitmap is not None
    assert "d7" not in {h.doc_id for h in graph_index.search(QUERIES[1], k=149, strategy="standard")}
    graph_index.optimize()  # compaction keeps the order of the rows: the graphs still serve
    assert placed(graph_index)[1].removed == 1
    graph_index.add(docs(170, 150))  # 20 rows appended: the graphs are extended past the removed node
    found, place = placed(graph_index)
    assert len(found.nodes) == 170 and place.covered == 169 and place.rows[150] == 149
    for strategy in STRATEGIES:
        assert same(graph_index, strategy), strategy


def test_deleting_every_row_leaves_an_empty_index_that_searches(graph_index):
    graph_index.delete([f"d{i}" for i in range(150)])
    assert graph_index.search(QUERIES[0]) == []
    graph_index.add(docs(3))
    assert {h.doc_id for h in graph_index.search(QUERIES[1], k=3, strategy="mrag")} == {"d0", "d1", "d2"}


def test_an_upsert_of_the_last_document_keeps_no_stale_vector(tmp_path):
    index = Index.open(tmp_path / "db", embedder=SeededEmbedder())
    index.add(docs(300))
    index.build_ann("HNSW")
    for n, text in enumerate(["Tides and comets.", "Bees and chess engines.", "Roman roads."]):
        index.upsert([{"id": "d299", "text": text}])  # the same chunk id at the same row, another vector
        _, place = placed(index)
        assert place.removed == 1 and place.covered == 299, n  # the old vector's node is skipped
        assert index.search(text, k=1, strategy="standard")[0].doc_id == "d299"
        assert same(index, "mrag")


def test_adding_a_space_keeps_hnsw_and_builds_its_graph(graph_index):
    import test_spaces  # noqa: F401  (registers the "test-words" embedding function)

    graph_index.add_spaces(["words=test-words"])
    assert graph_index.info()["ann"]["index_type"] == "HNSW"
    found = graph.latest(root(graph_index), graph_index.store.matrix())
    assert found is not None and "words" in found.files
    assert same(graph_index, "spaces")


def test_another_type_replaces_hnsw_only_when_built(graph_index):
    from mrag.settings import AnnPolicy

    graph_index.ann_policy = AnnPolicy(threshold=1, index_type="IVF_FLAT")
    graph_index.add(docs(155, 150))  # a write keeps the graphs up; it does not switch the type
    assert graph_index.info()["ann"]["index_type"] == "HNSW"
    built = graph_index.maintain_ann(force=True)
    assert built == {"index_type": "IVF_FLAT", "rows": 155, "nprobes": 60}  # not HNSW's ef 128


def test_a_type_that_replaces_another_removes_its_files(graph_index):
    """HNSW -> IVF left the graphs' folder (2.7 GB at 1M rows), IVF -> HNSW LanceDB's indexes, which every
    optimize then kept up though no search read them."""
    from mrag.retrieve import graph

    vector_indexes = lambda: sorted(i.name for i in graph_index.store.chunks.list_indices() if "text" not in i.columns)  # noqa: E731
    assert graph.folder(graph_index.store.uri).exists() and vector_indexes() == []
    graph_index.build_ann("IVF_FLAT")
    assert not graph.folder(graph_index.store.uri).exists() and "vector_idx" in vector_indexes()
    assert hits(graph_index, "mrag", None)  # searched through the IVF indexes
    graph_index.build_ann(graph.INDEX_TYPE)
    assert graph.folder(graph_index.store.uri).exists() and vector_indexes() == []
    assert hits(graph_index, "mrag", None) == hits(graph_index, "mrag", None)
    assert graph_index.verify()["sums_drift"] < 1e-9


def test_graph_maintenance_leaves_a_default_readers_matrix_without_heads(graph_index):
    graph_index.search(QUERIES[0])  # the default strategy: the matrix without heads
    assert graph_index.store._matrix is not None and graph_index.store._matrix.heads.shape[2] == 0
    graph_index.add(docs(170, 150))  # its maintenance reads the heads, and keeps them no longer
    kept = graph_index.store._matrix
    assert kept is None or kept.heads.shape[2] == 0
    assert len(graph.latest(root(graph_index), graph_index.store.matrix(heads=False)).nodes) == 170


def test_graphs_of_chosen_spaces_only(tmp_path):
    index = Index.open(tmp_path / "db", embedder=SeededEmbedder())
    index.add(docs(150))
    built = index.build_ann("HNSW", spaces=["standard", "head:2"])
    assert built == {"index_type": "HNSW", "rows": 150, "nprobes": 128, "spaces": ["standard", "head:2"]}
    found = graph.latest(root(index), index.store.matrix())
    assert set(found.files) == {"standard", "head:2"}
    for strategy in STRATEGIES:  # the other heads are scanned exactly
        assert same(index, strategy), strategy
    index.add(docs(170, 150))  # writes keep the same spaces' graphs up
    found = graph.latest(root(index), index.store.matrix())
    assert len(found.nodes) == 170 and set(found.files) == {"standard", "head:2"}
    assert index.maintain_ann(force=True)["spaces"] == ["standard", "head:2"]  # a rebuild keeps the choice
    assert index.build_ann("HNSW", spaces=["heads"])["spaces"] == [f"head:{i}" for i in range(4)]


def test_bad_space_choices_change_nothing(graph_index):
    before = graph_index.info()["ann"]
    with pytest.raises(ValueError, match="no space 'head:9'"):
        graph_index.build_ann("HNSW", spaces=["standard", "head:9"])
    with pytest.raises(ValueError, match="name at least one space"):
        graph_index.build_ann("HNSW", spaces=[])
    with pytest.raises(ValueError, match="for the HNSW type"):
        graph_index.build_ann("IVF_FLAT", spaces=["standard"])
    assert graph_index.info()["ann"] == before and len(folders(graph_index)) == 1


def test_a_matrix_without_heads_gets_no_head_graphs(graph_index):
    matrix = graph_index.store.matrix(heads=False)
    assert graph.graph_spaces(matrix) == ["standard"]  # not 0-wide head graphs
    assert graph.graph_spaces(matrix, ["standard"]) == ["standard"]
    with pytest.raises(ValueError, match="need the matrix with its heads"):
        graph.graph_spaces(matrix, ["head:1"])
    assert graph.graph_spaces(graph_index.store.matrix())[1:3] == ["head:0", "head:1"]


def test_a_write_that_leaves_the_graphs_reads_no_heads(graph_index, monkeypatch):
    read = []
    matrix = graph_index.store.matrix

    def recorded(*args, **kwargs):
        read.append(kwargs.get("heads", True))
        return matrix(*args, **kwargs)

    monkeypatch.setattr(graph_index.store, "matrix", recorded)
    graph_index.add(docs(152, 150))  # 2 rows: not past STALE_SHARE, so the graphs stay as they are
    lean = matrix(heads=False)
    found = graph.reusable(root(graph_index), lean, graph.graph_spaces(lean, loaded_only=False))
    assert read == [False] and found is not None and not graph.stale(lean, found[1])
    read.clear()
    placements = []
    place_in = graph.place_in
    monkeypatch.setattr(graph, "place_in", lambda *a: placements.append(1) or place_in(*a))
    graph_index.add(docs(170, 152))  # 18 more: extended, which needs the heads
    assert read == [False, True] and len(placements) == 1  # placed once, for both matrices of the version
    assert len(placed(graph_index)[0].nodes) == 170


def test_a_deleted_topic_is_walked_around():
    # 4,000 rows in 20 topics of 200; a topic's rows deleted: its queries' nearest live rows lie in other
    # topics, past 200 removed nodes, which a walk of breadth 128 alone does not get through
    rng = np.random.default_rng(0)
    unit = lambda x: (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)  # noqa: E731
    centres = unit(rng.standard_normal((20, 64)))
    topic = np.repeat(np.arange(20), 200)
    rows = unit(centres[topic] + 0.5 * unit(rng.standard_normal((4000, 64))))
    ids = np.array([f"r{i}" for i in range(4000)], dtype=object)
    built = graph.new_graph(64)
    graph.extend(built, rows)
    graphs = graph.Graphs(1, row_keys(ids, rows), {"standard": Path("unused")}, {"standard": built})
    keep = topic != 7
    left = Matrix(2, None, ids[keep], rows[keep], np.zeros((0, int(keep.sum()), 0), dtype=np.float32))
    queries = unit(centres[7] + 0.3 * unit(rng.standard_normal((20, 64))))
    parts = [QueryVectors(q, np.zeros((0, 0), dtype=np.float32)) for q in queries]
    standard = [Voter("standard", "standard", 1.0)]
    truth = Exact(left.standard, left.heads)(standard, parts, 10)[0][:, 0]
    walked = walk.GraphRanker(left, graphs, Exact(left.standard, left.heads))(standard, parts, 10)[0][:, 0]
    assert graphs.place(left).removed == 200
    assert np.mean([len(set(w) & set(t)) / 10 for w, t in zip(walked, truth)]) >= 0.95
    narrow = faiss_search_without_widening(built, graphs.place(left), queries, left.standard)
    assert np.mean([len(set(w) & set(t)) / 10 for w, t in zip(narrow, truth)]) < 0.5  # the case is a hard one


def faiss_search_without_widening(built, place, queries, vectors):
    """The walk at breadth 128 alone, removed nodes skipped: its best 10 live rows by fp32 score."""
    import faiss

    selector = faiss.IDSelectorBitmap(len(place.bitmap), faiss.swig_ptr(place.bitmap))
    walk = faiss.SearchParametersHNSW(efSearch=128, sel=selector)
    nodes = built.search(np.ascontiguousarray(queries), 20, params=walk)[1]
    found = [place.rows[n[n >= 0]] for n in nodes]
    return [r[np.argsort(-(vectors[r] @ q))][:10] for r, q in zip(found, queries)]


def test_graphs_that_lost_too_many_rows_are_scanned_until_rebuilt(graph_index, monkeypatch):
    monkeypatch.setattr(graph, "REMOVED_ROWS", 2)
    monkeypatch.setattr(graph, "update", lambda *a, **k: None)  # no rebuild: a writer that failed, or is slow
    graph_index.delete(["d1", "d2", "d3"])
    from mrag.retrieve.search import ranker_for
    from mrag.retrieve.strategies import parse_strategy

    ranker, _, _ = ranker_for(graph_index.store, parse_strategy("mrag"), None)
    assert isinstance(ranker.inner, walk.GraphRanker) and not ranker.inner.walks
    for strategy in STRATEGIES:
        assert same(graph_index, strategy), strategy


def test_a_build_at_the_same_version_adds_a_newer_folder(graph_index):
    (first,) = [root(graph_index) / name for name in folders(graph_index)]
    graph_index.search(QUERIES[0], strategy="standard")  # this reader holds the first folder's graphs
    held = graph_index.store.graphs
    assert held.path == first and set(held.loaded) == {"standard"}
    graph_index.build_ann("HNSW", spaces=["standard", "head:1"])  # at the same version: a newer folder
    assert first.is_dir() and len(folders(graph_index)) == 2  # the held one is left as it was
    for strategy in STRATEGIES:  # the reader moves to the newer folder: its own keys for its own graphs
        assert same(graph_index, strategy), strategy
    assert graph_index.store.graphs.path != first and set(graph_index.store.graphs.files) == {"standard", "head:1"}
    newest = graph_index.store.graphs.path
    (newest / graph.KEYS).unlink()  # as graphs of the format before node keys: not read
    assert graph.latest(root(graph_index), graph_index.store.matrix()).path == first  # the older one still fits
    graph_index.maintain_ann(force=True)
    found, place = placed(graph_index)
    assert found.path not in (first, newest) and place.covered == 150 and (found.path / graph.KEYS).is_file()


def test_a_graph_whose_nodes_and_keys_differ_is_scanned(tmp_path):
    import faiss

    built = graph.new_graph(2)
    graph.extend(built, np.eye(2, dtype=np.float32))
    faiss.write_index(built, str(tmp_path / "0.faiss"))
    graphs = graph.Graphs(1, np.array([1, 3, 5], dtype=np.uint64), {"standard": tmp_path / "0.faiss"})
    with pytest.warns(RuntimeWarning, match="holds 2 nodes, its folder 3 keys"):
        assert not graphs.usable("standard")


def test_a_drop_removes_what_is_built_when_it_holds_the_lock(tmp_path, monkeypatch):
    """Another process drops the IVF indexes and builds graphs between a drop's first look and its lock:
    the drop removes the graphs (their files too: none left behind) and says so."""
    first = Index.open(tmp_path / "db", embedder=SeededEmbedder())
    first.add(docs(150))
    first.build_ann()  # IVF_FLAT: what the drop sees first
    other = Index.open(tmp_path / "db", embedder=SeededEmbedder())
    writing = first.store.writing

    def after_the_other(*args, **kwargs):
        other.drop_ann()
        rebuilt.append(other.build_ann(graph.INDEX_TYPE))
        return writing(*args, **kwargs)

    rebuilt: list[dict] = []
    monkeypatch.setattr(first.store, "writing", after_the_other)
    assert first.drop_ann() == rebuilt[0] and rebuilt[0]["index_type"] == graph.INDEX_TYPE
    assert first.store.manifest.ann is None and not root(first).exists()


def test_graphs_a_writes_upkeep_built_while_a_drop_committed_are_removed(graph_index, monkeypatch):
    """A write's graph upkeep runs after its commit, outside the lock: a drop that committed meanwhile
    removed the folder, and the upkeep's graphs were written after it, left for good (2.7 GB at 1M rows)."""
    other = Index.open(graph_index.store.uri, embedder=SeededEmbedder())
    real_write = graph.write

    def dropped_first(*args, **kwargs):
        other.drop_ann()
        return real_write(*args, **kwargs)

    monkeypatch.setattr(graph, "write", dropped_first)
    monkeypatch.setattr(graph, "STALE_SHARE", 0.0)  # any new row: the upkeep extends the graphs
    graph_index.add([{"id": "later", "text": "written while the graphs were dropped"}])
    graph_index.store.refresh()
    assert graph_index.store.manifest.ann is None and not root(graph_index).exists()


def test_graphs_written_while_a_drop_holds_the_lock_are_removed(graph_index, monkeypatch):
    """The drop removes the folder under its lock and commits after: an upkeep that wrote its graphs in
    between and looked at the manifest before that commit kept them. It looks under the lock now."""
    from mrag import upkeep

    other = Index.open(graph_index.store.uri, embedder=SeededEmbedder())
    removed, commit = threading.Event(), threading.Event()
    real_write, real_drop = graph.write, upkeep.drop_graphs

    def drop_then_hold(store):
        real_drop(store)
        removed.set()
        commit.wait(30)  # the drop's commit waits: the upkeep writes and looks meanwhile

    def written_after_the_removal(*args, **kwargs):
        monkeypatch.setattr(upkeep, "drop_graphs", drop_then_hold)
        threading.Thread(target=other.drop_ann).start()
        assert removed.wait(30)
        threading.Timer(0.5, commit.set).start()  # the drop commits while the upkeep waits for the lock
        return real_write(*args, **kwargs)

    monkeypatch.setattr(graph, "write", written_after_the_removal)
    monkeypatch.setattr(graph, "STALE_SHARE", 0.0)
    graph_index.add([{"id": "later", "text": "written while the graphs were dropped"}])
    graph_index.store.refresh()
    assert graph_index.store.manifest.ann is None and not root(graph_index).exists()


def test_dropping_the_graphs_removes_their_files_and_searches_scan_exactly(graph_index):
    from mrag.retrieve import graph

    built = graph_index.build_ann(graph.INDEX_TYPE)
    assert graph.folder(graph_index.store.uri).exists()
    assert graph_index.drop_ann() == built
    assert graph_index.store.manifest.ann is None and not graph.folder(graph_index.store.uri).exists()
    assert hits(graph_index, "mrag", None) == hits(graph_index, "mrag", True)
    graph_index.add([{"id": "later", "text": "written after the drop"}])  # no graph upkeep, no error
    assert graph_index.store.manifest.ann is None


class ThreadsSeen:
    """A graph whose search records the OpenMP thread count it runs with."""

    def __init__(self) -> None:
        self.threads: list[int] = []

    def search(self, queries, depth, params=None):
        import faiss

        self.threads.append(faiss.omp_get_max_threads())
        return None, np.arange(len(queries) * depth).reshape(len(queries), depth)


def test_walks_beside_full_text_searches_take_one_thread_and_leave_the_threads_setting_as_it_was():
    """Beside full-text searches a short call walks on one thread; a long one, or one with no full text
    beside it, on every thread."""
    import faiss

    before = faiss.omp_get_max_threads()
    seen, few, many = ThreadsSeen(), np.zeros((3, 4), np.float32), np.zeros((walk.PARALLEL_WALKS, 4), np.float32)
    try:
        faiss.omp_set_num_threads(2)
        walk.search(seen, few, 5, None)
        with walk.fulltext_beside():
            assert walk.search(seen, few, 5, None).shape == (3, 5)
            assert faiss.omp_get_max_threads() == 2
            walk.search(seen, many, 5, None)
        walk.search(seen, few, 5, None)
        assert seen.threads == [2, 1, 2, 2]
    finally:
        faiss.omp_set_num_threads(before)


def test_a_full_text_search_runs_beside_the_graph_walks(tmp_path):
    """The default's ranker: the vector ranking (here a stand-in) runs in `fulltext_beside`, while the
    in-memory full-text search has already started on a pool thread."""
    import threading

    from mrag.retrieve.fulltext import FullTextRanker

    started, seen = threading.Event(), []

    class Memory:
        def search(self, texts, c, allowed=None):
            started.set()
            return [(np.array([0]), np.array([1.0])) for _ in texts]

    def vectors(chosen, queries, c):
        seen.append((walk.one_thread(len(queries)), started.wait(10)))
        return np.zeros((len(queries), len(chosen), c), np.int64), np.zeros((len(queries), len(chosen), c))

    ranker = FullTextRanker(vectors, None, row_ids=np.arange(1), memory=lambda: Memory())
    ranker._checked = True  # no LanceDB table behind this one
    voters = [Voter("standard", "standard", 1.0), Voter("bm25", "bm25", 1.0)]
    ranking, _ = ranker(voters, [QueryVectors(np.ones(4), np.ones((1, 4)), text="owls")], 2)
    assert seen == [(True, True)] and ranking[0, 1, 0] == 0


def test_a_graph_write_that_fails_leaves_no_staging_folder(tmp_path, monkeypatch):
    """A full disk while the graphs are written: the error goes up (maintenance warns of it), and the
    half-written folder is removed at once, not an hour later."""
    made = graph.new_graph(8)
    graph.extend(made, np.eye(8, dtype=np.float32))

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(graph.np, "save", full)
    with pytest.raises(OSError, match="No space left"):
        graph.write(tmp_path, 3, {"standard": made}, np.arange(8, dtype=np.uint64))
    assert list(tmp_path.iterdir()) == []


class WindowEmbedder(SeededEmbedder):
    """Sees the first 30 characters of a text only, as a model sees its window."""

    def embed_batch(self, texts: list[str]):
        return super().embed_batch([t[:30] for t in texts])


def test_an_upsert_only_an_external_space_sees_keeps_no_stale_node(tmp_path):
    """Text past the model's window changes an external space's vector alone: the chunk's id and its
    standard vector stay, so its node key must hold the external vector too, or the upserted row
    (where the old node was) would be taken as covered by a node of the old words."""
    import test_spaces  # noqa: F401  (registers the "test-words" embedding function)

    index = Index.open(tmp_path / "db", embedder=WindowEmbedder())
    index.add_spaces(["words=test-words"])
    index.add(docs(300))
    index.build_ann("HNSW")
    old = index.store.matrix()
    index.upsert([{"id": "d299", "text": docs(300, 299)[0]["text"] + " Volcanoes, magma and crust."}])
    matrix = index.store.matrix()
    assert np.array_equal(matrix.standard[-1], old.standard[-1])  # the model saw no change
    assert not np.array_equal(matrix.extra["words"][-1], old.extra["words"][-1])
    _, place = placed(index)
    assert place.removed == 1 and place.covered == 299  # the old node is dropped; the row is scanned
    assert same(index, "spaces")


def test_graphs_keyed_without_their_external_space_are_rebuilt_by_the_next_write(tmp_path):
    """Graphs saved before node keys held the external spaces (keys of the standard vector alone) do not
    fit: searches scan exactly, and the next write builds them anew."""
    import test_spaces  # noqa: F401  (registers the "test-words" embedding function)

    index = Index.open(tmp_path / "db", embedder=WindowEmbedder())
    index.add_spaces(["words=test-words"])
    index.add(docs(200))
    index.build_ann("HNSW")
    found, _ = placed(index)
    matrix = index.store.matrix()
    old = graph.write(root(index), found.version, {s: found.graph(s) for s in found.files},
                      row_keys(matrix.ids, matrix.standard))  # the older keys, in a newer folder
    assert graph.latest(root(index), matrix) is None and same(index, "spaces")
    index.add(docs(201, 200))
    rebuilt, place = placed(index)
    assert rebuilt.path != old.path and place.covered == 201 and same(index, "spaces")
