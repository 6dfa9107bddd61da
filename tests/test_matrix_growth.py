"""A matrix follows appended rows by reading only them (`mrag.matrix.grown`), and equals a whole read.

Every case compares the store's matrix after a write with one read whole at the same version by a
second `Index` on the same folder (another reader, as another process would be), and checks that the
matrices made before still hold their own rows.
"""

from __future__ import annotations

import gc
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mrag import matrix as matrix_module
from mrag.index import Index
from mrag.matrix import Matrix, growing, grown, stamps
from mrag.retrieve import lowprec


def docs(first: int, count: int) -> list[dict[str, str]]:
    words = ["river", "bread", "legion", "canal", "engine", "violin", "comet", "harbour"]
    return [{"id": f"doc{i}", "text": f"Doc {i} is about {words[i % 8]}. It also mentions {words[(i * 3 + 1) % 8]} "
             f"and number {i}."} for i in range(first, first + count)]


def whole(index: Index, heads: bool = True) -> Matrix:
    """The committed matrix as a fresh reader reads it: every row."""
    return Index.open(index.store.uri, embedder=index.embedder).store.matrix(heads=heads)


def frozen(matrix: Matrix) -> dict[str, np.ndarray]:
    return {"ids": np.array(matrix.ids.tolist(), dtype=object), "row_ids": np.array(matrix.row_ids),
            "standard": np.array(matrix.standard), "heads": np.array(matrix.heads),
            **{f"extra:{k}": np.array(v) for k, v in matrix.extra.items()}}


def assert_same(a: Matrix | dict[str, np.ndarray], b: Matrix) -> None:
    left, right = a if isinstance(a, dict) else frozen(a), frozen(b)
    assert left.keys() == right.keys()
    for key in left:
        assert left[key].shape == right[key].shape, key
        assert (left[key] == right[key]).all(), key  # bit for bit


def test_an_append_reads_only_the_new_rows_into_the_same_arrays(index, monkeypatch):
    index.add(docs(0, 6))
    first = index.store.matrix()
    before = frozen(first)
    read = []
    real = matrix_module.read_ranges
    monkeypatch.setattr(matrix_module, "read_ranges",
                        lambda table, columns, n, step=16_384, start=0: (read.append((start, n)),
                                                                         real(table, columns, n, step, start))[1])
    index.add(docs(6, 3))
    second = index.store.matrix()
    assert second.version > first.version and second.rows is first.rows  # grown, not read again
    assert read == [(len(first.ids), len(second.ids))]  # the appended rows only
    assert_same(whole(index), second)
    assert_same(before, first)  # the earlier matrix is untouched: a search holding it still sees its rows
    assert growing(second.standard) and growing(second.heads)
    hits = index.search("Doc 7 is about", k=3, strategy="mrag", exact=True)
    fresh = Index.open(index.store.uri, embedder=index.embedder).search("Doc 7 is about", k=3, strategy="mrag",
                                                                        exact=True)
    assert [(h.id, h.score) for h in hits] == [(h.id, h.score) for h in fresh]


@pytest.fixture
def reads(monkeypatch) -> list[tuple[int, int]]:
    """Each range of rows the matrix reads from the table: (first, end)."""
    read: list[tuple[int, int]] = []
    real = matrix_module.read_ranges

    def spy(table, columns, n, step=16_384, start=0):
        read.append((start, n))
        return real(table, columns, n, step, start)

    monkeypatch.setattr(matrix_module, "read_ranges", spy)
    return read


@pytest.mark.parametrize("change", ["delete", "upsert the last", "upsert the first", "compact"])
def test_writes_that_move_or_drop_rows_read_the_whole_table(index, change, reads):
    index.add(docs(0, 6))
    first = index.store.matrix()
    before = frozen(first)
    if change == "delete":
        index.delete(["doc2"])
    elif change == "compact":
        index.add(docs(6, 2))  # a second fragment, so compaction rewrites rows
        index.optimize()
    else:
        doc = docs(5 if change == "upsert the last" else 0, 1)[0]
        index.upsert([{**doc, "text": doc["text"] + " Edited."}])
    reads.clear()
    second = index.store.matrix()
    assert second.rows is not first.rows and reads == [(0, len(second.ids))]  # every row
    assert_same(whole(index), second)
    assert_same(before, first)


def test_an_upsert_of_the_last_document_with_its_old_text_is_read_again(index):
    """Same ids, same vectors, new Lance rows: the row ids tell them apart, so the matrix is read again
    and fetches hits by the new row ids."""
    index.add(docs(0, 4))
    first = index.store.matrix()
    index.upsert([{**docs(3, 1)[0], "text": docs(3, 1)[0]["text"] + " More."}])
    index.upsert(docs(3, 1))
    second = index.store.matrix()
    assert second.rows is not first.rows
    assert_same(whole(index), second)
    assert index.search("Doc 3 is about", k=1, exact=True)[0].id.startswith("doc3")


def test_a_lean_matrix_reads_the_heads_whole_and_a_matrix_with_heads_grows_for_lean_searches(index):
    index.add(docs(0, 5))
    lean = index.store.matrix(heads=False)
    index.add(docs(5, 2))
    full = index.store.matrix(heads=True)  # the heads were never read: everything is read
    assert full.rows is not lean.rows and full.has_heads
    assert_same(whole(index), full)
    index.add(docs(7, 2))
    again = index.store.matrix(heads=False)  # grows with its heads
    assert again.rows is full.rows and again.has_heads
    assert_same(whole(index), again)


def test_two_matrices_grown_from_one_share_rows_only_when_they_are_the_same(index):
    """Matrices of the same rows may grow side by side (a search and a write's graph upkeep); rows
    another matrix wrote past this one are reused only if they are this version's rows, and never
    written over."""
    index.add(docs(0, 5))
    base = index.store.matrix()
    index.add(docs(5, 3))
    second = index.store.matrix()  # writes rows 5..7 after base's
    store = index.store
    snapshot = store.snapshot()
    columns = ["id", *(c.column for c in store.vector_columns(committed=True))]
    again = grown(base, snapshot, columns, snapshot.count_rows(), store.committed_space_dims(), stamps(snapshot))
    assert again is not None and again.rows is base.rows  # the same rows: reused, nothing read
    assert_same(second, again)
    kept = frozen(second)
    index.delete(["doc6", "doc7"])
    index.add(docs(8, 3))  # rows after base's again, but not second's
    snapshot = store.snapshot()
    assert grown(base, snapshot, columns, snapshot.count_rows(), store.committed_space_dims(),
                 stamps(snapshot)) is None
    assert_same(kept, second)  # second's rows were not written over
    assert_same(whole(index), store.matrix())


def test_an_index_made_again_in_the_same_folder_is_read_anew(db_path, fake):
    """Its first rows have the same Lance row ids as the old index's (fragments count from 0 again),
    even the same chunk ids here, but other vectors: the manifest's index id tells the indexes apart.
    (An open index notices the new one when the manifest's version moves: here a second write.)"""
    reader = Index.open(db_path, embedder=fake)
    reader.add(docs(0, 4))
    first = reader.store.matrix()
    shutil.rmtree(db_path)
    again = Index.open(db_path, embedder=fake)
    again.add([{**doc, "text": f"Something else entirely: {doc['text'][::-1]}"} for doc in docs(0, 4)])
    again.add(docs(4, 4))
    now = reader.store.matrix()
    assert now.rows is not first.rows and now.row_ids[:4].tolist() == first.row_ids.tolist()
    assert_same(whole(again), now)
    assert reader.store.manifest.index_id == again.store.manifest.index_id != None  # noqa: E711


def test_an_index_made_again_at_the_same_version_is_read_anew(db_path, fake):
    """The folder made again by another process with as many commits: the manifest's version number is
    the one the open index last read. It searched the old rows (or failed on their files) and its next
    write committed the old manifest, sums and settings over the new index (a reviewer's run)."""
    reader = Index.open(db_path, embedder=fake)
    reader.add([{"id": f"old{i}", "text": f"common words old index {i}"} for i in range(6)])
    assert len(reader.search("common words", k=20, strategy="standard")) == 6
    made = subprocess.run([sys.executable, "-c", (
        "import shutil, sys; sys.path.insert(0, sys.argv[2]); from conftest import FakeEmbedder; "
        "from mrag.index import Index; shutil.rmtree(sys.argv[1]); "
        "Index.open(sys.argv[1], embedder=FakeEmbedder(), chunk_chars=500).add("
        "[{'id': f'new{i}', 'text': f'common words new index {i}'} for i in range(4)])"),
        str(db_path), str(Path(__file__).parent)], capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr[-2000:]
    hits = reader.search("common words", k=20, strategy="standard")
    assert sorted(h.doc_id for h in hits) == [f"new{i}" for i in range(4)]
    reader.add([{"id": "later", "text": "common words added by the reader"}])
    fresh = Index.open(db_path, embedder=fake)
    assert fresh.store.manifest.settings["chunk_chars"] == 500
    assert fresh.store.count() == 5 and fresh.verify()["sums_drift"] < 1e-9


def test_copies_of_an_index_swapped_under_a_reader_are_told_apart(tmp_path, fake):
    """A blue/green deploy: `cp -r live staging`, both take writes, then staging replaces live. Both
    copies give their new fragments the same ids, so their row ids agree where their rows do not; the
    commit stamps of the versions tell the tables apart."""
    live, staging = tmp_path / "live", tmp_path / "staging"
    Index.open(live, embedder=fake).add(docs(0, 4))
    shutil.copytree(live, staging)
    reader = Index.open(live, embedder=fake)
    Index.open(live, embedder=fake).add(docs(4, 2))
    held = reader.store.matrix()  # the live copy's 6 rows
    other = Index.open(staging, embedder=fake)
    other.add([{**doc, "text": f"Other text: {doc['text'][::-1]}"} for doc in docs(4, 2)])
    other.add(docs(6, 2))
    shutil.rmtree(live)
    shutil.move(str(staging), str(live))
    now = reader.store.matrix()
    assert now.row_ids[:6].tolist() == held.row_ids.tolist()  # the same row ids, other rows
    assert now.rows is not held.rows
    assert_same(whole(reader), now)


def test_a_matrix_of_a_pruned_version_is_read_again(index, reads):
    index.add(docs(0, 4))
    index.store.matrix()
    index.add(docs(4, 2))
    index.optimize()  # prunes every version but the committed one (and compacts)
    index.add(docs(6, 2))
    reads.clear()
    assert_same(whole(index), index.store.matrix())
    assert reads[0][0] == 0


def test_no_room_left_reads_the_whole_table(index, monkeypatch):
    monkeypatch.setattr(matrix_module, "LOAD_ROWS", 1)
    monkeypatch.setattr(matrix_module, "ROOM_SHARE", 0.0)
    index.add(docs(0, 3))
    first = index.store.matrix()
    assert first.rows is not None and first.rows.capacity == len(first.ids) + 1
    index.add(docs(3, 2))  # two rows: more than the one of room
    second = index.store.matrix()
    assert second.rows is not first.rows
    assert_same(whole(index), second)


def test_growth_across_stores_follows_another_writer(db_path, fake):
    """A reader's matrix follows appends committed by another writer (another `Index` on the folder)."""
    writer, reader = Index.open(db_path, embedder=fake), Index.open(db_path, embedder=fake)
    writer.add(docs(0, 4))
    first = reader.store.matrix()
    for start in (4, 6, 9):
        writer.add(docs(start, 2))
        now = reader.store.matrix()
        assert now.rows is first.rows
        assert_same(whole(writer), now)
        assert reader.search(f"Doc {start + 1} is about", k=1, exact=True)[0].id.startswith(f"doc{start + 1}")


WRITER = """
import sys, time
from conftest import FakeEmbedder
from test_matrix_growth import docs
from mrag.index import Index
index = Index.open(sys.argv[1], embedder=FakeEmbedder())
for i in range(12):
    index.add(docs(10 + 3 * i, 3))
    if i == 6:
        index.delete(["doc11"])  # rows dropped: the readers read the whole table once
    time.sleep(0.05)
"""


def test_a_reader_follows_a_writer_process(db_path, fake):
    """Beside a real writer process, each matrix this process reads equals a whole read at its
    version, and most are grown, not read again."""
    reader = Index.open(db_path, embedder=fake)
    reader.add(docs(0, 10))
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(db_path)], cwd=str(Path(__file__).parent),
                              stderr=subprocess.PIPE, text=True)
    seen: dict[int, Matrix] = {}
    compared = 0
    while writer.poll() is None or not seen:
        mine = reader.store.matrix()
        if mine.version in seen:
            time.sleep(0.005)
            continue
        other = whole(reader)
        if other.version == mine.version:
            assert_same(other, mine)
            hits = reader.search("Doc 12 is about canal", k=4, exact=True)
            fresh = Index.open(db_path, embedder=fake)
            again = fresh.search("Doc 12 is about canal", k=4, exact=True)
            if reader.store.committed_version == fresh.store.committed_version == mine.version:
                assert [(h.id, h.score) for h in hits] == [(h.id, h.score) for h in again]
                compared += 1
            seen[mine.version] = mine
    assert writer.wait() == 0, writer.stderr.read()
    final = reader.store.matrix()
    assert_same(whole(reader), final)
    assert len(final.ids) == 10 + 36 - 1
    families = {id(m.rows) for m in seen.values()}
    assert len(seen) > len(families)  # some matrices grew from one before them
    assert compared > 0


@pytest.mark.parametrize("old_matrix", ["dropped", "held"])
def test_the_bf16_copy_of_a_grown_matrix_rounds_only_the_new_rows(index, monkeypatch, old_matrix):
    """Whether a search still holds the matrix before (held) or not (dropped, as the store drops it):
    the grown matrix's copies extend its copies."""
    index.add(docs(0, 6))
    first = index.store.matrix()
    m = len(first.ids)
    lowprec.bf16_copy(first.heads), lowprec.bf16_copy(first.standard)
    index.add(docs(6, 4))
    second = index.store.matrix()
    if old_matrix == "dropped":
        del first
        gc.collect()
    rounded = []
    real = lowprec.Bf16Copy.__init__

    def counted(self, vectors, prefix=None, m=0):
        rounded.append((vectors.shape[-2], m))
        real(self, vectors, prefix, m)

    monkeypatch.setattr(lowprec.Bf16Copy, "__init__", counted)
    n = len(second.ids)
    for new in (second.heads, second.standard):
        extended = lowprec.bf16_copy(new)
        built = lowprec.Bf16Copy(np.array(new))  # from scratch: a copy of rows no matrix shares
        assert torch_equal(extended.rows, built.rows)
        assert torch_equal(extended.row_norm, built.row_norm) and torch_equal(extended.row_error, built.row_error)
        assert extended.finite
    assert rounded == [(n, m), (n, 0), (n, m), (n, 0)]  # the extensions round rows m..n; the others all
    assert lowprec.bf16_copy(np.array(second.standard)) is not lowprec.bf16_copy(second.standard)
    assert rounded[-1] == (n, 0)  # an array that is not a growing matrix's never extends one


def torch_equal(a, b) -> bool:
    return a.shape == b.shape and bool((a == b).all())


def test_the_full_text_hits_of_a_grown_matrix_are_placed_by_its_row_ids(index):
    """The default's full-text hits are mapped to matrix rows by Lance row id: a grown matrix places
    every row, the matrix before its own rows alone, and finds no row for the new rows' row ids."""
    from mrag.retrieve import fulltext

    index.add(docs(0, 6))
    first = index.store.matrix()
    index.add(docs(6, 4))
    second = index.store.matrix()
    found = [int(r) for r in second.row_ids[::-1]]  # Lance row ids, as a full-text search gives them
    assert fulltext._ROWS.rows(second.row_ids, found).tolist() == list(range(len(second.row_ids)))[::-1]
    assert fulltext._ROWS.rows(first.row_ids, found).tolist() == [-1] * 4 + list(range(len(first.row_ids)))[::-1]
    query = "Doc 8 is about engine. And a second part about river."
    hits = index.search(query, k=4, strategy="segment-bm25", exact=True)
    fresh = Index.open(index.store.uri, embedder=index.embedder).search(query, k=4, strategy="segment-bm25",
                                                                          exact=True)
    assert [(h.id, h.score) for h in hits] == [(h.id, h.score) for h in fresh]
    assert hits[0].id.startswith("doc8")


def test_versions_pruned_while_listed_give_no_stamps():
    """The stamps are read beside writers that prune versions: a manifest gone mid-listing leaves no
    stamps, so the matrix is read whole, never grown unchecked."""

    class Pruned:
        def list_versions(self):
            raise RuntimeError("lance error: Not found: db/chunks.lance/_versions/3.manifest")

    assert matrix_module.stamps(Pruned()) == {}


def test_threads_growing_one_matrix_at_once_all_get_the_rows(index):
    """A server's threads refresh together after a commit: each grows from the same matrix (one writes
    the new rows under the lock, the others find them written), and every result is the whole read."""
    from concurrent.futures import ThreadPoolExecutor

    index.add(docs(0, 6))
    first = index.store.matrix()
    store = index.store
    columns = ["id", *(c.column for c in store.vector_columns(committed=True))]
    for start in (6, 9):
        index.add(docs(start, 3))
        store.refresh()
        snapshot = store.snapshot()
        args = (first, snapshot, columns, snapshot.count_rows(), store.committed_space_dims(), stamps(snapshot))
        with ThreadPoolExecutor(4) as pool:
            found = list(pool.map(lambda call: grown(*call), [args] * 8))
        expected = whole(index)
        assert all(m is not None and m.rows is first.rows for m in found)
        for m in found:
            assert_same(expected, m)


def test_concurrent_searches_share_one_load(index, monkeypatch):
    """Searches that all need a new matrix (a server's first requests, or its requests after a delete)
    wait for one read of it, not one each; a search that asks for the heads later reads them once more."""
    from concurrent.futures import ThreadPoolExecutor

    from mrag import store as store_module

    index.add(docs(0, 12))
    reader = Index.open(index.store.uri, embedder=index.embedder)  # nothing loaded yet
    loads: list[int] = []
    real = store_module.load_matrix
    monkeypatch.setattr(store_module, "load_matrix", lambda *a, **k: (loads.append(a[2]), time.sleep(0.2),
                                                                      real(*a, **k))[2])
    stories = [f"Doc {i} is about river. It also mentions legion." for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        found = list(pool.map(lambda q: reader.search(q, k=3, strategy="segment+standard", exact=True), stories))
    assert loads == [12]  # one read, shared by the eight searches
    assert [[h.id for h in hits] for hits in found] == [
        [h.id for h in whole_hits] for whole_hits in
        (Index.open(index.store.uri, embedder=index.embedder).search(q, 3, "segment+standard", exact=True)
         for q in stories)]
    loads.clear()
    index.delete(["doc3"])  # not an append: read whole again, once
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda q: reader.search(q, k=3, strategy="mrag", exact=True), stories))
    assert loads == [11]
