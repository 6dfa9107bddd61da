"""The LanceDB layer: row layout, manifest, all-or-nothing writes, repair of a stale manifest."""

from __future__ import annotations

import json
import shutil

import lancedb
import numpy as np
import pyarrow as pa
import pytest
from test_index import DOCS, assert_scales_match_corpus, table_rows

from mrag.errors import StoreError
from mrag.index import Index
from mrag.matrix import Rows, load_matrix, read_ranges
from mrag.retrieve.exact import Exact
from mrag.retrieve.strategies import uses_heads
from mrag.retrieve.types import QueryVectors, Voter
from mrag.rows import build_rows, chunk_schema, quote
from mrag.scales import brute_force_scales
from mrag.store import CHUNKS, MANIFEST, Store


def test_a_new_index_is_not_made_among_other_files(tmp_path, fake):
    """--db given the documents' folder: refused, and the folder left as it was; an empty folder, or one
    that holds only what an index makes (a crash's half-made index), is fine."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "bees.txt").write_text("Bees fan their hives.")
    with pytest.raises(StoreError, match=r"holds other files \(bees.txt\): a new index needs a folder of its own"):
        Index.open(docs, embedder=fake).add(DOCS)
    assert sorted(p.name for p in docs.iterdir()) == ["bees.txt"]
    (tmp_path / "empty").mkdir()
    Index.open(tmp_path / "empty", embedder=fake).add(DOCS)
    (tmp_path / "half" / "chunks.lance").mkdir(parents=True)
    (tmp_path / "half" / ".mrag-write.lock").touch()
    Index.open(tmp_path / "half", embedder=fake).add(DOCS)


def test_a_creation_cut_off_is_made_again_and_a_manifest_lost_under_rows_refused(tmp_path, fake):
    """A full disk between the two tables' first commits left a manifest table with no version: every later
    command said "Table 'manifest' was not found", for good (an `mrag eval` cache too)."""
    db = tmp_path / "db"
    Index.open(db, embedder=fake)
    shutil.rmtree(db / f"{MANIFEST}.lance" / "_versions")  # its data written, its commit cut off
    with pytest.raises(StoreError, match="no mrag index"):
        Index.open(db, embedder=fake, create=False)
    index = Index.open(db, embedder=fake, chunk_chars=500)  # made again, with the settings asked now
    assert index.store.count() == 0 and index.store.manifest.settings["chunk_chars"] == 500
    index.add(DOCS)
    assert Index.open(db, embedder=fake).store.count() == len(DOCS)
    shutil.rmtree(db / f"{MANIFEST}.lance" / "_versions")  # rows without their manifest: not replaced, and
    with pytest.raises(StoreError, match=f"holds {len(DOCS)} indexed chunks but no manifest: a damaged index"):
        Index.open(db, embedder=fake)
    assert (db / f"{CHUNKS}.lance").exists() and (db / f"{MANIFEST}.lance" / "data").exists()  # nothing removed
    shutil.rmtree(db / f"{CHUNKS}.lance" / "_versions")  # neither table's versions: the rows' data still there
    with pytest.raises(StoreError, match="holds the data of indexed chunks but no manifest: a damaged index"):
        Index.open(db, embedder=fake)
    assert any((db / f"{CHUNKS}.lance" / "data").iterdir())


def test_quote():
    assert quote(["a", "it's", "x') OR ('1'='1"]) == "'a', 'it''s', 'x'') OR (''1''=''1'"


def test_build_rows_stores_unit_vectors_and_norms():
    heads = np.zeros((2, 2, 3), np.float32)
    heads[0, 0] = [3, 4, 0]  # norm 5
    heads[0, 1] = [0, 0, 2]  # norm 2
    heads[1, 0] = [1, 0, 0]  # row 1 head 1 stays zero
    standard = np.array([[0, 0, 0, 10], [1, 1, 1, 1]], np.float32)
    table = build_rows(
        ids=["a#0", "b#0"], doc_ids=["a", "b"], sources=["s", "s"], titles=["A", ""], positions=[0, 0],
        texts=["x", "y"], metadata=[{"k": "é"}, {}], doc_hashes=["h1", "h2"],
        standard=standard, heads=heads, schema=chunk_schema(4, 2, 3),
    )
    rows = table.to_pylist()
    assert rows[0]["metadata"] == '{"k": "é"}'
    np.testing.assert_allclose(rows[0]["vector"], [0, 0, 0, 1])
    np.testing.assert_allclose(rows[1]["vector"], [0.5, 0.5, 0.5, 0.5])
    np.testing.assert_allclose(rows[0]["head_0"], [0.6, 0.8, 0])
    np.testing.assert_allclose(rows[0]["head_1"], [0, 0, 1])
    np.testing.assert_allclose(rows[1]["head_0"], [1, 0, 0])
    np.testing.assert_allclose(rows[1]["head_1"], [0, 0, 0])
    assert rows[0]["head_norms"] == [5.0, 2.0] and rows[1]["head_norms"] == [1.0, 0.0]


def test_split_scales_follow_the_standard_vectors(index):
    index.add(DOCS)
    table = index.store.rows(columns=["vector"])
    standard = np.array(table["vector"].to_pylist(), dtype=np.float64)  # (N, 32) unit
    stats = index.store.sums.split
    assert (stats.n_heads, stats.head_dim) == (4, 8)  # as many slices as heads
    np.testing.assert_allclose(stats.scales(), brute_force_scales(standard.reshape(-1, 4, 8)), rtol=1e-5, atol=1e-6)


def test_matrix_is_cached_per_table_version(index):
    index.add(DOCS[:2])
    first = index.store.matrix()
    assert index.store.matrix() is first
    assert sorted(first.ids.tolist()) == ["bees#0", "rome#0"]
    assert first.standard.shape == (2, 32) and first.heads.shape == (4, 2, 8)  # (H, N, d)
    index.add(DOCS[2:])
    second = index.store.matrix()
    assert second is not first and len(second.ids) == 4


def test_a_search_without_heads_loads_the_matrix_without_them(index):
    """The default strategy votes with no head: its matrix leaves them out (half the memory) until a
    strategy that needs them asks, and every strategy then ranks as on a full matrix."""
    index.add(DOCS)
    full = index.store.matrix()
    queries = ["Roman roads and water. Bees in the hive.", "chess"]

    def found(strategy: str) -> list[list[tuple[str, float]]]:
        return [[(h.id, h.score) for h in index.search(q, k=3, strategy=strategy)] for q in queries]

    expected = {s: found(s) for s in ("segment-bm25", "standard", "mrag", "mrag-paper")}
    index.store._matrix = None
    assert not uses_heads("segment-bm25") and uses_heads("mrag") and not uses_heads("mrag", ["standard", "bm25"])
    assert [[(h.id, h.score) for h in index.search(q, k=3)] for q in queries] == expected["segment-bm25"]
    lean = index.store.matrix(heads=False)
    assert lean.heads.shape == (4, 4, 0) and not lean.has_heads and lean.heads.nbytes == 0
    np.testing.assert_array_equal(lean.standard, full.standard)
    assert index.store.matrix(heads=False) is lean  # cached
    assert found("standard") == expected["standard"]
    assert index.store.matrix(heads=False) is lean
    for strategy in ("mrag", "mrag-paper"):  # the heads are loaded when a strategy votes with them
        assert found(strategy) == expected[strategy]
    assert index.store.matrix(heads=False).has_heads  # a matrix with heads serves every strategy
    np.testing.assert_array_equal(index.store.matrix().heads, full.heads)
    part = QueryVectors(np.ones(32), np.ones((4, 8)), text="q")
    with pytest.raises(ValueError, match="loaded without its heads"):
        Exact(lean.standard, lean.heads)([Voter("head:0", "heads", 1.0)], [part], 3)


def test_matrix_read_a_few_rows_at_a_time_equals_the_table(index):
    """Loading reads ranges of rows (a bounded transient); across ranges and batches the matrix must be
    the table's rows in scan order, each head its own unit vectors."""
    index.add(DOCS)
    index.add([{"id": "extra", "text": "One more. Another sentence about rivers. And a third about bread."}])
    store = index.store
    snapshot = store.snapshot()
    columns = ["id", *[c.column for c in store.vector_columns(committed=True)]]
    table = snapshot.search().select(columns).limit(None).to_arrow()
    n = table.num_rows
    assert n > 4  # more than one range of 2 rows, and a last range cut short when n is odd
    batches = list(read_ranges(snapshot, columns, n, step=2))
    assert [b.num_rows for b in batches][:-1] == [2] * (len(batches) - 1)
    matrix = load_matrix(snapshot, columns, n, store.dim, store.n_heads, store.head_dim, False, {}, step=2)
    assert matrix.ids.tolist() == table["id"].to_pylist()
    np.testing.assert_array_equal(matrix.standard, np.array(table["vector"].to_pylist(), dtype=np.float32))
    for h in range(store.n_heads):
        np.testing.assert_array_equal(matrix.heads[h], np.array(table[f"head_{h}"].to_pylist(), dtype=np.float32))
    whole = store.matrix()  # the store's own load (default range size) gives the same arrays
    assert whole.ids.tolist() == matrix.ids.tolist()
    np.testing.assert_array_equal(whole.heads, matrix.heads)
    with pytest.raises(ValueError, match="read .* of the"):
        load_matrix(snapshot, columns, n + 1, store.dim, store.n_heads, store.head_dim, False, {}, step=2)
    rows = Rows.allocate(columns, n, store.dim, store.n_heads, store.head_dim, False, {}, True)
    with pytest.raises(ValueError, match="more rows than the"):
        rows.write(read_ranges(snapshot, columns, n), 0, n - 1)
    assert rows.filled == 0  # nothing any matrix sees


def test_matrix_row_ids_fetch_its_rows_after_deletes(index):
    """Hits are fetched by the Lance row ids the matrix was read with (a take by position is slow once
    rows were deleted): after a delete, each row id still names the matrix's row."""
    index.add(DOCS)
    index.add([{"id": "extra", "text": "One more. Another sentence about rivers. And a third about bread."}])
    index.delete([DOCS[0]["id"]])
    matrix = index.store.matrix()
    assert matrix.row_ids is not None and len(matrix.row_ids) == len(matrix.ids) > 2
    rows = [len(matrix.ids) - 1, 0, 1]
    found = index.store.take(matrix.table, ["text"], row_ids=[int(matrix.row_ids[r]) for r in rows])
    assert sorted(found) == sorted(matrix.ids[r] for r in rows)
    texts = dict(zip(*matrix.table.search().select(["id", "text"]).limit(None).to_arrow().to_pydict().values()))
    assert all(found[i]["text"] == texts[i] for i in found) and "bread" in found[matrix.ids[-1]]["text"]


def test_writing_restores_rows_and_sums_on_any_error(index, fake):
    index.add(DOCS[:2])
    store = index.store
    before = (table_rows(index), index.head_scales(), store.sums.heads.count, store.sums.split.count)
    extra = store.rows(columns=None).slice(0, 1).to_pylist()[0] | {"id": "copy#0", "doc_id": "copy"}
    with pytest.raises(KeyboardInterrupt):
        with store.writing():
            store.delete("doc_id = 'bees'")
            store.add(pa.Table.from_pylist([extra], schema=store.chunks.schema))
            assert store.sums.heads.count == 2
            raise KeyboardInterrupt
    assert (table_rows(index), index.head_scales(), store.sums.heads.count, store.sums.split.count) == before


STRAY = """
import sys, lancedb
table = lancedb.connect(sys.argv[1]).open_table("chunks")
row = table.to_arrow().slice(0, 1).to_pylist()[0] | {"id": "stray#0", "doc_id": "stray"}
table.add([row])
"""


def test_rows_another_process_adds_during_a_write_stop_its_commit(index, db_path):
    # a writer that lost its S3 lease wrote on after another took it over: the other committed its rows, and the
    # head-scale sums drifted (0.48 in a reviewer's run)
    import subprocess
    import sys

    index.add(DOCS[:2])
    store = index.store
    before = (table_rows(index), index.head_scales())
    extra = store.rows(columns=None).slice(0, 1).to_pylist()[0] | {"id": "copy#0", "doc_id": "copy"}
    with pytest.raises(StoreError, match="rows this write did not make appeared"):
        with store.writing():
            store.add(pa.Table.from_pylist([extra], schema=store.chunks.schema))
            subprocess.run([sys.executable, "-c", STRAY, str(db_path)], check=True, timeout=60)
    assert (table_rows(index), index.head_scales()) == before
    index.add(DOCS[2:3])  # the next write goes through, and the stray row is gone
    assert sorted({r["doc_id"] for r in table_rows(index)}) == sorted(d["id"] for d in DOCS[:3])
    assert index.verify()["sums_drift"] < 1e-9


def test_missing_index_is_not_created(tmp_path):
    where = tmp_path / "typo"
    assert not Store.exists(str(where))
    with pytest.raises(StoreError, match="no mrag index"):
        Store.open(str(where))
    with pytest.raises(StoreError, match="no mrag index"):
        Index.open(where, create=False)
    assert not where.exists()


def test_a_manifest_of_another_format_is_refused(index, db_path):
    index.add(DOCS)
    db = lancedb.connect(db_path)
    manifest = json.loads(db.open_table(MANIFEST).to_arrow().to_pylist()[0]["json"])
    db.create_table(MANIFEST, data=[{"json": json.dumps(manifest | {"format": 99})}], mode="overwrite")
    with pytest.raises(StoreError, match="incompatible mrag \\(format 99\\)"):
        Store.open(str(db_path))


def test_a_format_1_index_is_searched_but_never_changed(index, db_path, fake):
    """Format 1 kept all heads packed in one `heads` column: rewrite this index that way."""
    index.add(DOCS)
    expected = [(h.id, h.score) for h in index.search("Roman water and bees", k=4, strategy="mrag-std")]
    db = lancedb.connect(db_path)
    table = db.open_table(CHUNKS).to_arrow()
    columns = index.store.head_columns()
    packed = np.concatenate([np.array(table[c].to_pylist(), np.float32) for c in columns], axis=1)  # (N, H*d)
    table = table.drop_columns(columns)
    table = table.append_column("heads", pa.FixedSizeListArray.from_arrays(pa.array(packed.ravel()), packed.shape[1]))
    chunks = db.create_table(CHUNKS, data=table, mode="overwrite")
    manifest = json.loads(db.open_table(MANIFEST).to_arrow().to_pylist()[0]["json"])
    manifest |= {"format": 1, "chunks_version": chunks.version}
    db.create_table(MANIFEST, data=[{"json": json.dumps(manifest)}], mode="overwrite")

    old = Index.open(db_path, embedder=fake)
    assert old.store.matrix().heads.shape == (4, 4, 8)  # (H, N, d), unpacked
    assert [(h.id, h.score) for h in old.search("Roman water and bees", k=4, strategy="mrag-std")] == expected
    with pytest.raises(StoreError, match="written by mrag format 1 .* index the files again"):
        old.add([{"id": "new", "text": "a new document"}])
    with pytest.raises(StoreError, match="format 1"):
        old.delete(["rome"])
    assert old.store.count() == 4 and old.store.committed_version == chunks.version


def test_manifest_is_saved_after_each_write(index, db_path):
    index.add(DOCS)
    on_disk = json.loads(lancedb.connect(db_path).open_table(MANIFEST).to_arrow().to_pylist()[0]["json"])
    assert on_disk["chunks_version"] == index.store.chunks.version
    assert on_disk["stats"]["heads"]["count"] == 4
    assert on_disk["embedder"]["model"] == "fake-bow"


def test_changes_behind_mrags_back_are_invisible_then_rolled_back(index, db_path, fake):
    """The manifest is the commit point: a chunks version it does not name is a dead write."""
    index.add(DOCS)
    committed, scales = table_rows(index), index.head_scales()
    # behind mrag's back: delete two documents and add a renamed copy of another
    chunks = lancedb.connect(db_path).open_table(CHUNKS)
    copy = chunks.search().where("doc_id = 'rome'").limit(None).to_arrow().to_pylist()[0]
    chunks.delete("doc_id IN ('bees', 'tides')")
    chunks.add([copy | {"id": "rome2#0", "doc_id": "rome2"}])
    assert chunks.count_rows() == 3

    reopened = Index.open(db_path, embedder=fake)
    assert table_rows(reopened) == committed and reopened.store.count() == 4
    assert reopened.head_scales() == scales
    assert_scales_match_corpus(reopened, fake)
    assert [h.doc_id for h in reopened.search("Honeybees fan their wings to cool the hive", k=4)][0] == "bees"
    assert "rome2" not in {h.doc_id for h in reopened.search("Roman aqueducts", k=4)}

    # the next write first rolls the table back to the committed version
    reopened.add([{"id": "new", "text": "A new document about volcanoes."}])
    latest = lancedb.connect(db_path).open_table(CHUNKS).to_arrow().to_pylist()
    assert sorted(r["id"] for r in latest) == sorted([r["id"] for r in committed] + ["new#0"])
    assert reopened.store.manifest.chunks_version == lancedb.connect(db_path).open_table(CHUNKS).version
    assert_scales_match_corpus(reopened, fake)
    assert Index.open(db_path, embedder=fake).head_scales() == reopened.head_scales()


def test_a_copy_swapped_in_at_the_same_version_is_read_anew(tmp_path, fake):
    """A copy of an index (the same index id) that took another write than the live one, swapped in at the same
    version: an open index kept searching the live one's rows in memory (stale hits, or "Not found")."""
    import shutil

    live = Index.open(tmp_path / "live", embedder=fake)
    live.add([{"id": "bees", "text": "honeybees cool the hive"}])
    shutil.copytree(tmp_path / "live", tmp_path / "staging")
    live.add([{"id": "live", "text": "glaciers carve valleys"}])
    Index.open(tmp_path / "staging", embedder=fake).add([{"id": "staged", "text": "comets have tails"}])
    reader = Index.open(tmp_path / "live", embedder=fake)
    assert {h.doc_id for h in reader.search("glaciers comets bees", k=5, strategy="standard")} == {"bees", "live"}
    (tmp_path / "live").rename(tmp_path / "old")
    (tmp_path / "staging").rename(tmp_path / "live")
    assert {h.doc_id for h in reader.search("glaciers comets bees", k=5, strategy="standard")} == {"bees", "staged"}
