"""The library front door on real LanceDB in tmp_path, with the fake embedder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import FakeEmbedder

import mrag.index
from mrag import documents, ingest, sync
from mrag.documents import Document
from mrag.embed.base import PROBE
from mrag.errors import StoreError
from mrag.index import Index
from mrag.scales import brute_force_scales
from mrag.store import Store

DOCS = [
    {"id": "rome", "text": "Roman aqueducts carried water downhill into the city by gravity.", "title": "Rome"},
    {"id": "bees", "text": "Honeybees fan their wings to cool the hive on hot days.", "era": "modern"},
    {"id": "chess", "text": "Deep Blue beat Kasparov at chess in 1997."},
    {"id": "tides", "text": "The Moon pulls the oceans and raises the tides twice a day."},
]


def table_rows(index: Index) -> list[dict]:
    """Every stored row, sorted by id, vectors included: the table's whole content."""
    rows = index.store.rows().to_pylist()
    return sorted(rows, key=lambda r: r["id"])


def stored_raw_heads(index: Index) -> np.ndarray:
    """Raw head vectors rebuilt from the table: unit vector x stored norm.  -> (N, H, d)."""
    table = index.store.rows(columns=[*index.store.head_columns(), "head_norms"])
    units = np.stack([np.array(table[c].to_pylist(), dtype=np.float64) for c in index.store.head_columns()], axis=1)
    norms = np.array(table["head_norms"].to_pylist(), dtype=np.float64)
    return units * norms[..., None]


def fake_raw_heads(fake: FakeEmbedder, index: Index) -> np.ndarray:
    """Raw head vectors recomputed from the stored chunk texts, independently of the table's vectors."""
    texts = index.store.rows(columns=["text"])["text"].to_pylist()
    return np.stack([fake.vectors(t)[1] for t in texts]).astype(np.float64)


def assert_scales_match_corpus(index: Index, fake: FakeEmbedder) -> None:
    scales = [s["scale"] for s in index.head_scales()]
    if index.store.count() == 0:
        assert scales == [0.0] * fake.n_heads
        return
    np.testing.assert_allclose(scales, brute_force_scales(fake_raw_heads(fake, index)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(scales, brute_force_scales(stored_raw_heads(index)), rtol=1e-5, atol=1e-6)


def test_add_then_search_finds_the_document(index, fake):
    report = index.add(DOCS)
    assert report.to_dict() == {"added": 4, "updated": 0, "unchanged": 0, "removed": 0, "chunks": 4, "skipped": []}
    assert report.added == ["rome", "bees", "chess", "tides"]
    for strategy in ("mrag", "standard"):
        hits = index.search("Honeybees fan their wings to cool the hive", k=2, strategy=strategy)
        assert hits[0].id == "bees#0" and hits[0].doc_id == "bees"
        assert len(hits) == 2 and hits[0].score >= hits[1].score
    top = index.search("aqueducts water gravity Roman", k=1)[0]
    assert top.to_dict() == {
        "id": "rome#0",
        "score": top.score,
        "text": DOCS[0]["text"],
        "source": "",
        "title": "Rome",
        "doc_id": "rome",
        "position": 0,
        "metadata": {},
    }
    assert index.search("Honeybees fan their wings", k=1)[0].metadata == {"era": "modern"}


def test_a_failure_after_the_commit_does_not_fail_the_write(index, monkeypatch):
    """An S3 store lost just after a commit: the ANN upkeep that follows raised, and `add` reported a
    failed write that was in the index. The write's report stands, with a warning."""
    def unreachable(*args, **kwargs):
        raise RuntimeError("lance error: LanceError(IO): Generic S3 error: error sending request")

    monkeypatch.setattr(Index, "maintain_ann", unreachable)
    with pytest.warns(RuntimeWarning, match="is committed, but the ANN upkeep after it failed"):
        report = index.add([{"id": "a", "text": "bees and honey"}])
    assert report.added == ["a"] and index.store.count() == 1


def test_verify_reads_the_sums_and_the_rows_of_one_commit(index, fake, monkeypatch):
    """Another thread committed between verify's look at the sums and its read of the rows: the rows of the
    later commit against the sums of the earlier gave a drift of 1% on a sound index."""
    index.add([{"id": f"d{i}", "text": f"bees and honey {i}"} for i in range(5)])
    other = Index.open(index.store.uri, embedder=fake)
    real, calls = index.store.snapshot, []

    def meanwhile(*args, **kwargs):
        if not calls:
            calls.append(1)
            other.add([{"id": "late", "text": "the moon and the tides"}])
            index.store.refresh()  # as another thread's search would
        return real(*args, **kwargs)

    monkeypatch.setattr(index.store, "snapshot", meanwhile)
    assert calls == [] and index.verify()["sums_drift"] < 1e-9 and calls == [1]


def test_metadata_values_are_stored_as_json_holds_them(index):
    import datetime
    import decimal

    import numpy as np

    given = {"n": np.int64(3), "x": np.float32(0.5), "v": np.array([1, 2]), "on": datetime.date(2026, 1, 2),
             "at": datetime.datetime(2026, 1, 2, 3, 4), "tags": {"b", "a"}, "mixed": frozenset({1, "a"}),
             "pair": (1, float("nan")), "price": decimal.Decimal("1.50"), "deep": {"s": {3, 1, 2}},
             "when": np.datetime64("2024-03-01T12:00:00.000000000"), "days": np.array(["2024-03-01"], "M8[D]"),
             "took": np.timedelta64(1500, "ms")}
    index.add([{"id": "m", "text": "Honeybees fan their wings.", "metadata": given}])
    assert index.search("bees", k=1)[0].metadata == {
        "n": 3, "x": 0.5, "v": [1, 2], "on": "2026-01-02", "at": "2026-01-02T03:04:00", "tags": ["a", "b"],
        "mixed": ["a", 1], "pair": [1, None], "price": "1.50", "deep": {"s": [1, 2, 3]},
        "when": "2024-03-01T12:00:00.000000000", "days": ["2024-03-01"], "took": "1500 milliseconds"}
    version = index.store.committed_version
    with pytest.raises(ValueError, match="document 0: a metadata value is bytes"):
        index.add([{"id": "b", "text": "Tides.", "blob": b"\x00"}])
    assert index.store.committed_version == version and [h.doc_id for h in index.search("tides", k=5)] == ["m"]


def test_metadata_keys_are_text_as_json_writes_them(index):
    import datetime

    import numpy as np

    # mixed keys used to stop the add with "'<' not supported between instances of 'int' and 'datetime.date'"
    given = {"seen": {datetime.date(2026, 1, 2): "first", 3: "x", None: 1, True: "t", np.int64(7): 2, 1.5: "f"}}
    index.add([{"id": "k", "text": "Honeybees fan their wings.", "metadata": given}])
    assert index.search("bees", k=1)[0].metadata == {
        "seen": {"2026-01-02": "first", "3": "x", "null": 1, "true": "t", "7": 2, "1.5": "f"}}
    version = index.store.committed_version
    with pytest.raises(ValueError, match="two metadata keys are both '1' as JSON text"):  # not one lost in silence
        index.add([{"id": "two", "text": "Tides.", "metadata": {1: "a", "1": "b"}}])
    assert index.store.committed_version == version


def test_search_votes_explain_the_score(index):
    index.add(DOCS)
    (hit,) = index.search("Deep Blue beat Kasparov at chess in 1997.", k=1, strategy="mrag-paper")
    assert hit.id == "chess#0"
    # the exact text is the nearest chunk in every head space: rank 0 everywhere, weight = head scale
    scales = [s["scale"] for s in index.head_scales()]
    assert sorted(v["space"] for v in hit.votes) == [f"head:{i}" for i in range(4)]
    assert all(v["rank"] == 0 for v in hit.votes)
    assert sorted(v["weight"] for v in hit.votes) == pytest.approx(sorted(scales))
    assert hit.score == pytest.approx(sum(scales))
    assert "votes" in hit.to_dict(explain=True) and "votes" not in hit.to_dict()
    # mrag-std adds the standard space as a voter, weighted by its own scale
    (hit,) = index.search("Deep Blue beat Kasparov at chess in 1997.", k=1, strategy="segment+mrag-std")
    standard_scale = float(index.store.committed_scales()["standard"][0])
    assert sorted(v["space"] for v in hit.votes) == [f"head:{i}" for i in range(4)] + ["standard"]
    assert hit.score == pytest.approx(sum(scales) + standard_scale)
    # the default ranks this one-sentence query by the standard vector alone: cosine 1 for the same text
    (hit,) = index.search("Deep Blue beat Kasparov at chess in 1997.", k=1, strategy="mrag")
    assert [v["space"] for v in hit.votes] == ["standard"] and hit.score == pytest.approx(1.0)


@pytest.mark.parametrize("strategy", ["standard", "mrag-paper", "mrag", "split", "hybrid", "segment-bm25"])
def test_a_query_part_of_no_direction_votes_for_nothing(index, strategy):
    """The fake embedder maps a text of no word to zero vectors: the exact scan ranked every row at 0 and
    voted for the first rows (LanceDB's ANN path returned none); now no space votes for it."""
    index.add(DOCS)
    assert index.search("🐝 蜜蜂 !!", k=3, strategy=strategy, exact=True) == []
    assert index.search("Honeybees. 🐝 蜜蜂 !!", k=3, strategy=strategy, exact=True)  # a part with words votes


def test_search_on_an_empty_index(index):
    assert index.search("anything", k=3) == []


@pytest.mark.parametrize(
    "query, kwargs, message",
    [("", {}, "empty"), ("   ", {}, "empty"), ("bees", {"k": 0}, "k must be positive"),
     ("bees", {"strategy": "nope"}, "unknown strategy")],
)
def test_search_rejects_bad_input(index, query, kwargs, message):
    index.add(DOCS)
    with pytest.raises(ValueError, match=message):
        index.search(query, **kwargs)


def test_more_rows_than_a_default_query_limit(index):
    docs = [{"id": f"d{i:02d}", "text": f"document number {i} about subject{i}"} for i in range(40)]
    assert index.add(docs).chunks == 40
    assert index.store.count() == 40
    assert len(index.store.matrix().ids) == 40
    assert index.search("document number 37 about subject37", k=1)[0].id == "d37#0"
    assert_scales_match_corpus(index, index.embedder)


def test_readding_unchanged_documents_does_no_work(index, fake):
    index.add(DOCS)
    version, batches, rows = index.store.chunks.version, fake.batches, table_rows(index)
    for write in (index.add, index.upsert):
        report = write(DOCS)
        assert report.to_dict() == {"added": 0, "updated": 0, "unchanged": 4, "removed": 0, "chunks": 0, "skipped": []}
        assert report.unchanged == ["rome", "bees", "chess", "tides"]
    assert index.store.chunks.version == version
    assert fake.batches == batches  # nothing embedded
    assert table_rows(index) == rows


def test_a_folder_that_cannot_be_written_is_refused_before_any_embedding(index, fake, monkeypatch):
    """A table folder on a read-only file system (as `mount -o ro`, where even root cannot write), or a lock
    file that cannot be opened: refused at once, named, nothing embedded, the index as it was. The index's
    own folder need not be writable (only its tables and lock file are written)."""
    import os
    import shutil

    import mrag.locking

    index.add(DOCS[:2])
    version, batches, rows = index.store.chunks.version, fake.batches, table_rows(index)
    folder, access = Path(index.store.uri), os.access
    chunks = folder / "chunks.lance"
    monkeypatch.setattr(mrag.locking.os, "access", lambda path, mode: Path(path) != chunks and access(path, mode))
    monkeypatch.setattr(mrag.locking, "_read_only", lambda path: True)
    with pytest.raises(StoreError, match="chunks.lance: Read-only file system.*nothing was embedded or written"):
        index.add(DOCS[2:])
    assert fake.batches == batches and index.store.chunks.version == version and table_rows(index) == rows
    assert index.add(DOCS[:2]).unchanged == ["rome", "bees"]  # no work to do: no refusal
    monkeypatch.setattr(mrag.locking.os, "access", lambda path, mode: Path(path) != folder and access(path, mode))
    lock = folder / mrag.locking.LOCK_FILE
    lock.unlink()
    lock.mkdir()  # a lock file that cannot be opened for writing (for real: no mock)
    with pytest.raises(StoreError, match="write.lock: Is a directory.*nothing was embedded or written"):
        index.add(DOCS[2:])
    assert fake.batches == batches and table_rows(index) == rows
    for write in (lambda: index.delete(["rome"]), index.optimize, lambda: index.set_default_strategy(None)):
        with pytest.raises(StoreError, match="cannot be written .*write.lock: Is a directory.*nothing was written"):
            write()  # said as `index` says it (a raw "[Errno 21] Is a directory" before)
    assert table_rows(index) == rows
    shutil.rmtree(lock)
    assert index.add(DOCS[2:]).added == ["chess", "tides"]  # the folder itself not writable: still fine


def test_add_refuses_changed_content_upsert_replaces_it(db_path, fake):
    index = Index.open(db_path, embedder=fake, chunk_chars=45, overlap=0)  # chess fits in one chunk
    long_text = "Roman roads ran straight. They had layers of stone. Milestones marked each mile."
    index.add([{"id": "roads", "text": long_text}, DOCS[2]])
    assert sorted(r["id"] for r in table_rows(index)) == ["chess#0", "roads#0", "roads#1", "roads#2"]

    changed = {"id": "roads", "text": "Roman roads were paved."}
    with pytest.raises(ValueError, match="already exists with other content: use upsert"):
        index.add([changed])
    assert len(table_rows(index)) == 4

    report = index.upsert([changed, DOCS[2]])
    assert (report.updated, report.unchanged, report.chunks) == (["roads"], ["chess"], 1)
    rows = table_rows(index)
    assert [(r["id"], r["text"]) for r in rows] == [
        ("chess#0", DOCS[2]["text"]),
        ("roads#0", "Roman roads were paved."),
    ]
    assert index.search("Roman roads were paved.", k=1)[0].id == "roads#0"
    assert_scales_match_corpus(index, fake)


def test_metadata_or_title_change_counts_as_a_change(index):
    index.add([DOCS[0]])
    report = index.upsert([{**DOCS[0], "title": "Aqueducts"}])
    assert report.updated == ["rome"]
    assert index.search("Roman aqueducts", k=1)[0].title == "Aqueducts"


def test_documents_as_strings_and_objects(index):
    report = index.add(["Plain string document about tides.", Document("doc-1", "An object document.", "src.txt")])
    assert len(report.added) == 2 and report.added[1] == "doc-1"
    # the same string again has the same content id: unchanged
    assert index.add(["Plain string document about tides."]).unchanged == report.added[:1]


@pytest.mark.parametrize(
    "docs, error, message",
    [
        ([{"id": "a", "text": "x"}, {"id": "a", "text": "y"}], ValueError, "duplicate document ids"),
        ([{"id": "a", "text": "   "}], ValueError, "is empty"),
        ([{"id": "a"}], ValueError, "no string 'text'"),
        ([42], TypeError, "expected Document, dict or str"),
    ],
)
def test_bad_documents_write_nothing(index, docs, error, message):
    index.add(DOCS[:1])
    version = index.store.chunks.version
    with pytest.raises(error, match=message):
        index.add(docs)
    assert index.store.chunks.version == version and index.store.count() == 1


def test_delete_by_document_id_and_by_chunk_id(db_path, fake):
    index = Index.open(db_path, embedder=fake, chunk_chars=70, overlap=0)  # DOCS fit in one chunk each
    long_text = " ".join(f"The {n} part of this long text is here." for n in ("first", "second", "third"))
    index.add([{"id": "long", "text": long_text}, *DOCS])
    assert sorted(r["id"] for r in table_rows(index) if r["doc_id"] == "long") == ["long#0", "long#1", "long#2"]

    assert index.delete(["long#1"]) == 1
    assert sorted(r["id"] for r in table_rows(index) if r["doc_id"] == "long") == ["long#0", "long#2"]
    assert_scales_match_corpus(index, fake)

    assert index.delete(["long", "bees"]) == 3
    assert sorted(r["id"] for r in table_rows(index)) == ["chess#0", "rome#0", "tides#0"]
    assert_scales_match_corpus(index, fake)
    assert all(h.doc_id != "bees" for h in index.search("Honeybees fan their wings", k=3))

    # reopening reads the same scales back from the manifest
    again = Index.open(db_path, embedder=fake)
    assert again.head_scales() == index.head_scales()


def test_an_id_that_names_a_document_deletes_that_document_only(db_path, fake):
    """Document "long#0" and chunk 0 of document "long" share an id: deleting it deletes the document."""
    index = Index.open(db_path, embedder=fake, chunk_chars=70, overlap=0)
    long_text = " ".join(f"The {n} part of this long text is here." for n in ("first", "second", "third"))
    index.add([{"id": "long", "text": long_text}, {"id": "long#0", "text": "A document whose id is a chunk id."}])
    assert index.delete(["long#0", "long#0"]) == 1
    assert sorted((r["doc_id"], r["id"]) for r in table_rows(index)) == [
        ("long", "long#0"), ("long", "long#1"), ("long", "long#2")]
    assert index.delete(["long#0"]) == 1  # now only the chunk has the id
    assert sorted(r["id"] for r in table_rows(index)) == ["long#1", "long#2"]
    assert_scales_match_corpus(index, fake)


def test_delete_unknown_ids_deletes_nothing(index):
    index.add(DOCS)
    rows, version, scales = table_rows(index), index.store.chunks.version, index.head_scales()
    for ids in (["nope"], ["bees", "nope"], ["bees#7"]):
        with pytest.raises(ValueError, match="unknown id"):
            index.delete(ids)
    with pytest.raises(ValueError, match="no ids"):
        index.delete([])
    assert index.delete(["nope"], missing_ok=True) == 0
    assert table_rows(index) == rows
    assert index.store.chunks.version == version
    assert index.head_scales() == scales
    assert index.delete(["nope", "bees"], missing_ok=True) == 1 and "bees#0" not in {r["id"] for r in table_rows(index)}


def test_ids_with_quotes_are_safe(index):
    index.add([{"id": "it's", "text": "An id with a quote."}, {"id": "x') OR ('1'='1", "text": "Injection?"}])
    assert index.add([{"id": "it's", "text": "An id with a quote."}]).unchanged == ["it's"]
    assert index.delete(["it's"]) == 1
    assert [r["id"] for r in table_rows(index)] == ["x') OR ('1'='1#0"]


def test_head_scales_follow_adds_and_deletes(index, fake):
    assert_scales_match_corpus(index, fake)
    index.add(DOCS[:2])
    assert_scales_match_corpus(index, fake)
    index.add(DOCS[2:])
    assert_scales_match_corpus(index, fake)
    index.upsert([{"id": "bees", "text": "Bees dance to tell where flowers are."}])
    assert_scales_match_corpus(index, fake)
    index.delete(["rome", "tides"])
    assert_scales_match_corpus(index, fake)
    index.delete(["bees", "chess"])
    assert index.store.count() == 0
    assert_scales_match_corpus(index, fake)


def test_manifest_records_the_embedder(index, db_path, fake):
    index.add(DOCS)
    embedder = index.store.manifest.embedder
    assert {k: embedder[k] for k in ("model", "dim", "n_heads", "head_dim")} == {
        "model": "fake-bow", "dim": 32, "n_heads": 4, "head_dim": 8,
    }
    assert index.store.manifest.settings == {"chunk_chars": 1000, "overlap": 1}
    info = Index.open(db_path, embedder=fake).info()
    assert (info["chunks"], info["documents"], info["embedder"]["model"]) == (4, 4, "fake-bow")


class OtherFake(FakeEmbedder):
    n_heads = 2
    head_dim = 16


class LayeredFake(FakeEmbedder):
    def info(self):
        return super().info() | {"layer": 1, "n_layers": 3}


def test_reopening_with_another_model_is_refused(index, db_path):
    index.add(DOCS)
    with pytest.raises(StoreError, match="built with fake-bow, not some/other-model"):
        Index.open(db_path, model="some/other-model")
    with pytest.raises(StoreError, match="n_heads=4, not 2"):
        Index.open(db_path, embedder=OtherFake())
    assert Index.open(db_path, model="fake-bow").store.count() == 4


def test_reopening_with_another_layer_is_refused(db_path):
    Index.open(db_path, embedder=LayeredFake()).add(DOCS)
    for layer in (1, -2):  # the recorded layer, counted from either end
        assert Index.open(db_path, layer=layer, embedder=LayeredFake()).store.count() == 4
    for layer in (0, 2, -1, 3, -4):
        with pytest.raises(StoreError, match="holds layer 1"):
            Index.open(db_path, layer=layer)
    other = LayeredFake()
    other.info = lambda: LayeredFake.info(other) | {"layer": 2}  # a ready embedder hooked elsewhere
    with pytest.raises(StoreError, match="built with layer=1, not 2"):
        Index.open(db_path, embedder=other)


def test_a_first_open_that_another_process_beat_to_the_creation_must_match_its_settings(db_path, fake, monkeypatch):
    """Two first runs at once: both saw no index, the other created it first (`Store.create` then returns
    theirs). Another layer, embedder or space would embed other vectors into it: refused, nothing written;
    the same embedder, or chunk settings not given, just join it."""
    import test_spaces  # noqa: F401  (registers the "test-words" function)

    Index.open(db_path, embedder=LayeredFake(), chunk_chars=300).add(DOCS[:1])
    exists = Store.exists

    def racing(**given):  # Index.open's first look finds no index; Store.create's, under the lock, finds theirs
        looks = []

        def seen(cls, uri, options=None):
            looks.append(uri)
            return len(looks) > 1 and exists(uri, options)

        monkeypatch.setattr(Store, "exists", classmethod(seen))
        try:
            return Index.open(db_path, **given)
        finally:
            monkeypatch.setattr(Store, "exists", exists)

    other = LayeredFake()
    other.info = lambda: LayeredFake.info(other) | {"layer": 2}
    for embedder in (other, OtherFake()):
        with pytest.raises(StoreError, match="another process created the index .* at the same moment, with another"):
            racing(embedder=embedder)
    with pytest.raises(StoreError, match="at the same moment, with another spaces"):
        racing(embedder=LayeredFake(), spaces=["w=test-words:dim=8"])
    with pytest.raises(StoreError, match="built with chunk_chars=300, not 500"):
        racing(embedder=LayeredFake(), chunk_chars=500)
    joined = racing(embedder=LayeredFake())
    assert joined.store.count() == 1 and joined.store.manifest.settings["chunk_chars"] == 300
    assert Index.open(db_path, embedder=LayeredFake()).store.count() == 1  # nothing written by the refused ones


def test_other_settings_for_an_index_that_holds_nothing_yet_say_how_to_start_again(db_path, fake):
    """A first run stopped before its first commit (Ctrl-C, a wrong option) leaves an empty index that pins
    its settings: the refusal says it holds nothing, so deleting the folder loses nothing."""
    Index.open(db_path, embedder=fake, chunk_chars=300)
    with pytest.raises(StoreError, match="built with chunk_chars=300, not 500 .it holds no documents yet: delete"):
        Index.open(db_path, embedder=fake, chunk_chars=500)
    Index.open(db_path, embedder=fake).add(DOCS)
    with pytest.raises(StoreError, match="built with chunk_chars=300, not 500$"):  # documents: no such advice
        Index.open(db_path, embedder=fake, chunk_chars=500)


def test_reopening_with_other_embedder_options_is_refused(index, db_path, fake):
    index.add(DOCS)
    for options in ({"pooling": "cls"}, {"query_instruction": "query: "}, {"max_length": 64}):
        with pytest.raises(StoreError, match=f"built with {next(iter(options))}="):
            Index.open(db_path, **options)
    # the recorded values, or options that do not change the vectors, are fine
    assert Index.open(db_path, embedder=fake, query_instruction="", device="cpu").store.count() == 4


def test_open_without_create(tmp_path):
    with pytest.raises(StoreError, match="no mrag index"):
        Index.open(tmp_path / "none", create=False)


@pytest.mark.parametrize("options", [{"chunk_chars": 0}, {"overlap": -1}])
def test_bad_chunk_settings(tmp_path, fake, options):
    with pytest.raises(ValueError, match="chunk size"):
        Index.open(tmp_path / "db", embedder=fake, **options)


class FailingEmbedder(FakeEmbedder):
    """Raises on the n-th call to `embed` (one call per write batch)."""

    def __init__(self, fail_on: int) -> None:
        super().__init__()
        self.fail_on = fail_on
        self.calls = 0
        self.before_failing = lambda: None

    def embed(self, texts, kind="document", batch_size=32, show_progress=False):
        self.calls += 1
        if self.calls == self.fail_on:
            self.before_failing()
            raise RuntimeError("embedder died")
        return super().embed(texts, kind, batch_size, show_progress)


def snapshot(index: Index) -> tuple:
    return table_rows(index), index.head_scales(), json.dumps(index.store.sums.heads.to_json())


@pytest.mark.parametrize("staged", [False, True])
@pytest.mark.parametrize("replace", [False, True])
def test_failure_in_the_middle_of_a_write_changes_nothing(db_path, monkeypatch, replace, staged):
    monkeypatch.setattr(mrag.writing, "WRITE_BATCH", 2)
    # staged: rows wait in memory until the whole write is embedded; else (a write past STAGE_BYTES)
    # each batch goes into the table under the lock as soon as it is embedded
    monkeypatch.setattr(mrag.writing, "STAGE_BYTES", 2**30 if staged else 1)
    embedder = FailingEmbedder(fail_on=0)
    index = Index.open(db_path, embedder=embedder)
    index.add(DOCS[:2])
    before = snapshot(index)

    # 5 chunks in batches of 2: batch 1 is written, batch 2 fails
    new = [{"id": f"n{i}", "text": f"new document {i} about planets and moons"} for i in range(4)]
    if replace:  # an upsert first deletes the changed document's old chunks
        new.append({"id": "rome", "text": "Rome was not built in a day."})
    else:
        new.append({"id": "n4", "text": "new document 4"})
    seen = []

    def reader_during_the_write():  # unless staged, batch 1 is in the table now, but not committed
        assert index.store.chunks.count_rows() == (2 if staged else 2 - replace + 2)
        reader = Index.open(db_path, embedder=FakeEmbedder())
        seen.append(snapshot(reader))
        seen.append([h.doc_id for h in reader.search("new document 0 about planets and moons", k=5)])

    embedder.calls, embedder.fail_on, embedder.before_failing = 0, 2, reader_during_the_write
    with pytest.raises(RuntimeError, match="embedder died"):
        (index.upsert if replace else index.add)(new)
    assert embedder.calls == 2
    assert seen[0] == before and sorted(seen[1]) == ["bees", "rome"]  # readers see only committed rows

    assert snapshot(index) == before
    reopened = Index.open(db_path, embedder=FakeEmbedder())
    assert snapshot(reopened) == before
    assert_scales_match_corpus(reopened, embedder)

    # and the index still works
    embedder.fail_on = 0
    report = index.upsert(new)
    assert report.chunks == 5
    assert index.store.count() == 7 - replace
    assert index.search("new document 3 about planets and moons", k=1)[0].id == "n3#0"
    assert_scales_match_corpus(index, embedder)
    assert snapshot(Index.open(db_path, embedder=FakeEmbedder())) == snapshot(index)


def test_add_paths_upserts_files_and_reports_skipped(index, tmp_path):
    folder = tmp_path / "files"
    folder.mkdir()
    (folder / "a.txt").write_text("Glaciers carve valleys.")
    (folder / "b.bin.txt").write_bytes(b"\x00\x00")
    report = index.add_paths([folder])
    assert report.to_dict() == {
        "added": 1, "updated": 0, "unchanged": 0, "removed": 0, "chunks": 1,
        "skipped": [{"source": str(folder / "b.bin.txt"), "reason": "a binary file, not text"}],
    }
    (folder / "a.txt").write_text("Glaciers carve U-shaped valleys.")
    assert index.add_paths([folder / "a.txt"]).updated == [str((folder / "a.txt").resolve())]
    assert index.search("glaciers", k=1)[0].text == "Glaciers carve U-shaped valleys."


def doc_ids(index: Index) -> list[str]:
    return sorted({r["doc_id"] for r in index.store.rows(None, ["doc_id"]).to_pylist()})


def test_a_file_s_records_are_its_documents(index, tmp_path):
    """Records gone from a file are deleted when it is indexed again; a record without an id (numbered by
    its place in the file) is not left twice when the records before it change."""
    import json

    records = tmp_path / "recs.jsonl"
    rows = [{"id": "r1", "text": "Octopuses have three hearts."}, {"id": "r2", "text": "Jenner used cowpox."},
            {"text": "A record without an id about chess openings."}]
    records.write_text("\n".join(map(json.dumps, rows)))
    source = str(records.resolve())
    assert index.add_paths([records]).added == ["r1", "r2", f"{source}#2"]
    records.write_text("\n".join(map(json.dumps, [rows[0], rows[2]])))
    report = index.add_paths([tmp_path])
    assert report.removed == sorted(["r2", f"{source}#2"]) and report.added == [f"{source}#1"]
    assert doc_ids(index) == sorted(["r1", f"{source}#1"]) and report.to_dict()["removed"] == 2
    assert [h.text for h in index.search("chess openings", k=5)].count(rows[2]["text"]) == 1


def test_an_id_indexed_from_another_file_is_refused_unless_both_are_read(index, tmp_path):
    import json

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, second = tmp_path / "a" / "arr.json", tmp_path / "b" / "other.jsonl"
    first.write_text(json.dumps([{"id": "a1", "text": "Octopuses have three hearts."}]))
    second.write_text(json.dumps({"id": "a1", "text": "Volcanoes in Iceland."}))
    index.add_paths([first])
    version, rows = index.store.chunks.version, table_rows(index)
    with pytest.raises(ValueError, match="already indexed from another file, nothing written: a1"):
        index.add_paths([second])
    assert index.store.chunks.version == version and table_rows(index) == rows
    both = f"duplicate document ids in one batch: a1 \\({first.resolve()} and {second.resolve()}\\)"
    with pytest.raises(ValueError, match=both):  # both files hold it: indexing them together names them
        index.add_paths([tmp_path / "a", tmp_path / "b"])
    twice = tmp_path / "twice.jsonl"
    twice.write_text("\n".join(json.dumps({"id": "t", "text": t}) for t in ("one", "two")))
    with pytest.raises(ValueError, match=f"t \\(2 times in {twice.resolve()}\\)"):
        index.add_paths([twice])
    first.write_text('[{"id": "a2", "text": "Lemurs."')  # a1 moved to the other, this one left broken
    with pytest.raises(ValueError, match=f"a1 \\(indexed from {first.resolve()}, which could not be read now: "
                                         "invalid JSON at line 1"):  # not "index both files together": it was
        index.add_paths([tmp_path / "a", tmp_path / "b"])
    assert index.store.chunks.version == version and table_rows(index) == rows
    first.write_text(json.dumps([{"id": "a2", "text": "Lemurs live on Madagascar."}]))  # a1 moved to the other
    report = index.add_paths([tmp_path / "a", tmp_path / "b"])
    assert sorted(report.added) == ["a2"] and report.updated == ["a1"] and report.removed == []
    assert {r["doc_id"]: r["source"] for r in table_rows(index)} == {"a1": str(second.resolve()),
                                                                     "a2": str(first.resolve())}


def test_a_file_s_new_and_gone_records_are_one_commit(index, tmp_path):
    """A file indexed again with one record changed and one gone: the upsert and the delete commit together
    (readers never see the new record beside the gone one; a crash between two commits left the gone one)."""
    import json

    notes = tmp_path / "notes.jsonl"
    notes.write_text("\n".join(json.dumps({"id": i, "text": f"Record {i} about owls."}) for i in "xyz"))
    index.add_paths([notes])
    writes = index.store.manifest.maintenance["writes"]
    notes.write_text("\n".join([json.dumps({"id": "x", "text": "Record x, now about herons."}),
                                json.dumps({"id": "y", "text": "Record y about owls."})]))
    report = index.add_paths([notes])
    assert report.updated == ["x"] and report.removed == ["z"]
    assert index.store.manifest.maintenance["writes"] == writes + 1
    assert doc_ids(index) == ["x", "y"]
    assert Index.open(index.store.uri, embedder=FakeEmbedder()).search("herons", k=1)[0].doc_id == "x"


def test_an_id_another_process_indexes_meanwhile_is_refused_under_the_lock(index, db_path, tmp_path, monkeypatch):
    """The id check runs again under the write lock: another process that indexes the id from its own file
    between the first check and the lock keeps it, and nothing of this batch is written."""
    import json

    mine, theirs = tmp_path / "mine.jsonl", tmp_path / "theirs.jsonl"
    mine.write_text("\n".join([json.dumps({"id": "shared", "text": "Octopuses have three hearts."}),
                               json.dumps({"id": "own", "text": "Lemurs live on Madagascar."})]))
    theirs.write_text(json.dumps({"id": "shared", "text": "Volcanoes in Iceland."}))
    other = Index.open(db_path, embedder=FakeEmbedder())
    writing = index.store.writing

    def after_the_other(*args, **kwargs):
        if not doc_ids(other):
            other.add_paths([theirs])
        return writing(*args, **kwargs)

    monkeypatch.setattr(index.store, "writing", after_the_other)
    with pytest.raises(ValueError, match="already indexed from another file, nothing written: shared"):
        index.add_paths([mine])
    assert {r["doc_id"]: r["source"] for r in table_rows(other)} == {"shared": str(theirs.resolve())}


def test_records_gone_alone_are_found_again_under_the_lock(index, db_path, tmp_path, monkeypatch):
    """A run with nothing to embed that deletes a gone record decides under the write lock: a document
    another process wrote meanwhile under that id (here by hand, with no file) is not the file's to delete;
    and a delete runs the ANN upkeep a write of rows runs."""
    import json

    notes = tmp_path / "notes.jsonl"
    notes.write_text("\n".join(json.dumps({"id": i, "text": f"Record {i} about owls."}) for i in "xyz"))
    index.add_paths([notes])
    notes.write_text("\n".join(json.dumps({"id": i, "text": f"Record {i} about owls."}) for i in "xy"))
    other = Index.open(db_path, embedder=FakeEmbedder())
    writing, upkeep = index.store.writing, []

    def after_the_other(*args, **kwargs):
        other.upsert([{"id": "z", "text": "Now the library's own note."}])
        return writing(*args, **kwargs)

    monkeypatch.setattr(index.store, "writing", after_the_other)
    monkeypatch.setattr(index, "maintain_ann", lambda force=False: upkeep.append(force))
    assert index.add_paths([notes]).removed == []
    assert {r["doc_id"]: r["source"] for r in table_rows(other)}["z"] == ""
    monkeypatch.setattr(index.store, "writing", writing)
    notes.write_text(json.dumps({"id": "x", "text": "Record x about owls."}))
    assert index.add_paths([notes]).removed == ["y"] and upkeep == [False]


def chunk_texts(index: Index) -> dict[str, str]:
    index.store.refresh()  # other Index objects wrote since
    return {r["doc_id"]: r["text"] for r in table_rows(index)}


class DuringEmbedding(FakeEmbedder):
    """Runs `meanwhile` at its first embedding: another run's writes while this one embeds."""

    def __init__(self, meanwhile) -> None:
        super().__init__()
        self.meanwhile = meanwhile

    def embed_batch(self, texts):
        if self.meanwhile is not None and texts != [PROBE]:  # not the index's look at its embedder
            meanwhile, self.meanwhile = self.meanwhile, None
            meanwhile()
        return super().embed_batch(texts)


def test_a_run_slower_than_another_never_writes_what_a_file_held_before(index, db_path, tmp_path):
    """Run A reads the files; while it embeds, a file is edited and run B indexes it, and a file is deleted
    and run C prunes it. Under the write lock A finds those documents written by another run since it
    looked, and their files changed since it read them: it leaves them as committed (listed as skipped),
    and writes the others."""
    from mrag import sync

    folder = tmp_path / "notes"
    folder.mkdir()
    edited, deleted, other = folder / "edited.txt", folder / "deleted.txt", folder / "other.txt"
    for path, text in ((edited, "Version one of the glacier note."), (deleted, "A secret about bees."),
                       (other, "Tides follow the Moon.")):
        path.write_text(text)
    index.add_paths([folder])
    edited.write_text("Version two, the glacier note rewritten.")
    other.write_text("Tides follow the Moon and the Sun.")
    deleted.write_text("A secret about bees, edited.")

    def runs_b_and_c() -> None:
        edited.write_text("Version three, the glacier note as it is now.")
        index.add_paths([edited])
        deleted.unlink()
        assert index.add_paths([deleted], prune=True).removed == [str(deleted.resolve())]

    report = Index.open(db_path, embedder=DuringEmbedding(runs_b_and_c)).add_paths([folder], prune=True)  # run A
    assert sorted(Path(s.source).name for s in report.skipped) == ["deleted.txt", "edited.txt"]
    assert {s.reason for s in report.skipped} == {sync.CHANGED}
    assert report.added == [] and report.updated == [str(other.resolve())] and report.removed == []
    texts = chunk_texts(index)
    assert texts[str(edited.resolve())].startswith("Version three") and str(deleted.resolve()) not in texts
    assert texts[str(other.resolve())] == "Tides follow the Moon and the Sun."


def test_a_records_file_another_run_wrote_meanwhile_is_left_whole_as_committed(index, db_path, tmp_path):
    """Run A read r1 and r2 at v2; the file then went to r1 v3, r2 v1 (the committed text), which run B
    indexed (r1 alone changed). A leaves the whole file as committed: its r2 v2 is in neither the file nor
    B's commit."""
    records = tmp_path / "r.jsonl"

    def write(r1: str, r2: str) -> None:
        records.write_text("\n".join(json.dumps({"id": i, "text": t}) for i, t in (("r1", r1), ("r2", r2))))

    write("r1 v1 plums", "r2 v1 plums")
    index.add_paths([records])
    write("r1 v2 grapes", "r2 v2 grapes")

    def run_b() -> None:
        write("r1 v3 pears, longer", "r2 v1 plums")
        assert index.add_paths([records]).updated == ["r1"]

    report = Index.open(db_path, embedder=DuringEmbedding(run_b)).add_paths([records])
    assert report.updated == [] and [s.reason for s in report.skipped] == [sync.CHANGED]
    assert chunk_texts(index) == {"r1": "r1 v3 pears, longer", "r2": "r2 v1 plums"}


def test_a_file_that_keeps_changing_is_indexed_as_read_when_no_other_run_wrote_it(index, db_path, tmp_path):
    """A log that grows while a run embeds it: no other run wrote its documents meanwhile, so what the run
    read is written (a file always changing would otherwise never be indexed)."""
    log = tmp_path / "log.txt"
    log.write_text("First line about owls.")
    index.add_paths([log])
    log.write_text("First line about owls. Second line about bats.")
    grows = DuringEmbedding(lambda: log.write_text("First line about owls. Second line about bats. Third."))
    report = Index.open(db_path, embedder=grows).add_paths([log])
    assert report.updated == [str(log.resolve())] and report.skipped == []
    assert chunk_texts(index)[str(log.resolve())] == "First line about owls. Second line about bats."


def test_a_records_file_changed_since_it_was_read_keeps_its_records_as_committed(index, tmp_path):
    """Run A read a records file without record y and has nothing to embed; y is then written back and run B
    indexes it: A's run, deciding under the lock, does not delete y."""
    from mrag import sync
    from mrag.ingest import read_paths

    notes = tmp_path / "notes.jsonl"
    records = {i: json.dumps({"id": i, "text": f"Record {i} about owls."}) for i in "xy"}
    notes.write_text("\n".join(records.values()))
    index.add_paths([notes])
    notes.write_text(records["x"])
    docs, skipped = read_paths([notes])  # run A: y is gone
    notes.write_text("\n".join(records.values()) + "\n")
    index.add_paths([notes])  # run B: nothing changed for it
    report = sync.index_files(index, [notes], docs, skipped)
    assert report.removed == [] and [s.reason for s in report.skipped] == [sync.CHANGED]
    assert doc_ids(index) == ["x", "y"]


def test_a_renamed_records_file_takes_its_ids_and_library_documents_are_left_alone(index, tmp_path):
    """A records file renamed (its old name gone) is no conflict: its ids move to the new name, and --prune
    deletes what the old name held no longer. Documents the library added, with a file's path as source
    and ids of their own, or a name under the folder that no file has, are not the files' to delete."""
    import json

    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "a.jsonl").write_text("\n".join(json.dumps({"id": i, "text": f"Record {i} about owls."}) for i in "xy"))
    (notes / "book.md").write_text("The whole book in one file.")
    index.add_paths([notes])
    book = str((notes / "book.md").resolve())
    index.add([{"id": "book-ch1", "text": "Chapter one.", "source": book},
               {"id": "virtual", "text": "No file has this.", "source": str(notes / "virtual-name")},
               {"id": "plain", "text": "Added by hand."}])
    (notes / "a.jsonl").rename(notes / "b.jsonl")
    report = index.add_paths([notes], prune=True)
    assert report.updated == ["x", "y"] and report.removed == []
    assert {r["doc_id"]: r["source"] for r in table_rows(index)}["x"] == str((notes / "b.jsonl").resolve())
    assert doc_ids(index) == sorted(["x", "y", book, "book-ch1", "virtual", "plain"])
    (notes / "c.jsonl").write_text(json.dumps({"id": "plain", "text": "Now a record of a file."}))
    assert index.add_paths([notes]).updated == ["plain"]  # the library's sourceless id: replaced, no conflict


def test_a_library_document_naming_a_records_file_as_its_source_is_left_alone(index, tmp_path):
    """The library's (and the server's) documents never follow a file: one whose source is a records file
    survives that file's next index, where a record gone from the file is deleted. A record of the file with
    the same id takes the document over, which follows the file from then on."""
    records = tmp_path / "r.jsonl"
    records.write_text(json.dumps({"id": "rec1", "text": "A record about giraffes."}))
    source = str(records.resolve())
    index.add_paths([records])
    index.add([{"id": "own", "text": "Server doc about kangaroos.", "source": source}])
    records.write_text(json.dumps({"id": "rec2", "text": "Another record, about emus."}))
    assert index.add_paths([records]).removed == ["rec1"]
    assert doc_ids(index) == ["own", "rec2"]
    records.write_text("\n".join(json.dumps(r) for r in ({"id": "rec2", "text": "Another record, about emus."},
                                                         {"id": "own", "text": "Server doc about kangaroos."})))
    assert index.add_paths([records]).updated == ["own"]  # now the file's record
    records.write_text(json.dumps({"id": "rec2", "text": "Another record, about emus."}))
    assert index.add_paths([records]).removed == ["own"]


def test_a_library_document_added_before_the_mark_is_still_unchanged(index):
    """An index written before library documents' digests were marked holds them unmarked: adding the same
    document again is no change (and no error)."""
    doc = {"id": "old", "text": "Written by an older mrag."}
    index.add([doc])
    index.store.chunks.update(where="doc_id = 'old'", values={"doc_hash": documents.document_digest(
        documents.as_document(doc, 0))})  # as an older version wrote it
    assert index.add([doc]).unchanged == ["old"]


def test_a_document_missing_deleted_chunks_is_written_whole_again(db_path, fake, tmp_path):
    """Deleting one chunk of a document leaves it partial: indexing its unchanged file again restores it, and
    adding the same library document again writes it whole instead of calling it unchanged."""
    long_text = " ".join(f"Sentence number {i} talks about topic {i} in some detail here." for i in range(12))
    path = tmp_path / "long.txt"
    path.write_text(long_text)
    index = Index.open(db_path, embedder=fake, chunk_chars=150)
    index.add_paths([path])
    chunks = sorted(r["id"] for r in table_rows(index))
    assert len(chunks) > 2
    index.delete(chunks[1])
    marks = [r["doc_hash"] for r in table_rows(index)]
    assert marks.count("partial") == 1 and len(set(marks)) == 2  # one row rewritten, not the document
    assert index.verify()["partial_documents"] == 1
    assert index.add_paths([path]).updated == [str(path.resolve())]
    assert sorted(r["id"] for r in table_rows(index)) == chunks and index.verify()["partial_documents"] == 0
    index.add([{"id": "lib", "text": long_text}])
    lib_chunks = sorted(r["id"] for r in table_rows(index) if r["doc_id"] == "lib")
    index.delete([lib_chunks[0]])
    assert index.add([{"id": "lib", "text": long_text}]).updated == ["lib"]  # add, not upsert: no error
    assert sorted(r["id"] for r in table_rows(index) if r["doc_id"] == "lib") == lib_chunks
    assert index.add([{"id": "lib", "text": long_text}]).unchanged == ["lib"]
    assert index.delete("lib") == len(lib_chunks)  # one id, as a string
    index.add([{"id": 5, "text": "A number id."}, {"id": 6, "text": "Another."}])
    assert index.delete(5) == 1 and index.delete([6.0], missing_ok=True) == 0 and index.delete([6]) == 1
    with pytest.raises(ValueError, match="ids are strings or numbers"):
        index.delete([None])
    index.add([{"id": "lib", "text": long_text}])
    version = index.store.chunks.version
    assert index.delete(lib_chunks) == len(lib_chunks)  # every chunk by its id: nothing left to mark
    assert "lib" not in doc_ids(index) and index.store.chunks.version == version + 1


def test_a_folder_holding_no_file_of_a_kind_read_is_a_warning(index, tmp_path):
    """Its .csv, .docx and suffix-less files were left out without a word (`"added": 0`, nothing skipped)."""
    odd, good, empty = tmp_path / "odd", tmp_path / "good", tmp_path / "empty"
    for folder in (odd, good, empty):
        folder.mkdir()
    (odd / "data.csv").write_text("a,b\n1,2\n")
    (odd / "README").write_text("Read me.")
    (good / "bees.txt").write_text("Bees fan their hives.")
    report = index.add_paths([odd, good, empty])
    assert report.added == [str((good / "bees.txt").resolve())]
    assert [w.split(" holds")[0] for w in report.warnings] == [str(odd), str(empty)]
    assert "holds no file mrag reads (.htm .html .json" in report.to_dict()["warnings"][0]
    assert index.add_paths([odd / "README"]).warnings == []  # named on its own: read as text


def test_prune_deletes_the_documents_of_a_file_or_folder_now_a_link(index, tmp_path):
    """A path that is now a link (or lies under one) is no longer the file its document was read from: a link to
    a file is indexed under its target's path, a link to a folder is not followed; the old text stayed for ever."""
    import shutil

    folder, moved = tmp_path / "docs", tmp_path / "moved"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("Old text of a.")
    (folder / "sub" / "x.txt").write_text("Old text of x.")
    (folder / "keep.txt").write_text("Kept.")
    index.add_paths([folder])
    a, _, x = doc_ids(index)  # their resolved paths, sorted: a.txt, keep.txt, sub/x.txt
    moved.mkdir()
    shutil.move(folder / "a.txt", moved / "a.txt")
    (moved / "a.txt").write_text("New text of a.")
    (folder / "a.txt").symlink_to(moved / "a.txt")
    shutil.move(folder / "sub", moved / "sub")
    (folder / "sub").symlink_to(moved / "sub")
    assert index.add_paths([folder]).removed == []  # without --prune: nothing
    report = index.add_paths([folder], prune=True)
    assert report.removed == [a, x]
    texts = {r["text"] for r in index.store.rows(None, ["text"]).to_pylist()}
    assert texts == {"New text of a.", "Kept."}
    # the folder itself moved and linked back, indexed by its old path (which now resolves elsewhere)
    old_keep = str((folder / "keep.txt").resolve())
    shutil.move(folder, moved / "docs")
    folder.symlink_to(moved / "docs")
    assert index.add_paths([folder], prune=True).removed == [old_keep]
    assert str((moved / "docs" / "keep.txt").resolve()) in doc_ids(index)
    # a records file now a link to another holding the same ids: the ids move with it (they were refused)
    (tmp_path / "recs.jsonl").write_text('{"id": "r1", "text": "One."}\n')
    index.add_paths([tmp_path / "recs.jsonl"])
    (tmp_path / "recs-v2.jsonl").write_text('{"id": "r1", "text": "One, again."}\n')
    (tmp_path / "recs.jsonl").unlink()
    (tmp_path / "recs.jsonl").symlink_to(tmp_path / "recs-v2.jsonl")
    assert index.add_paths([tmp_path / "recs.jsonl"]).updated == ["r1"]
    # but a records file still there behind a link, not read now, still holds its ids: another file may not
    # take one (its record was replaced in silence)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "r.jsonl").write_text('{"id": "r2", "text": "Bees."}\n')
    index.add_paths([tmp_path / "data"])
    shutil.move(tmp_path / "data", moved / "data")
    (tmp_path / "data").symlink_to(moved / "data")
    (tmp_path / "new.jsonl").write_text('{"id": "r2", "text": "Taxes."}\n')
    with pytest.raises(ValueError, match="already indexed from another file, nothing written: r2"):
        index.add_paths([tmp_path / "new.jsonl"])


def test_prune_deletes_the_documents_of_deleted_and_emptied_files_under_the_paths(index, tmp_path):
    folder, other = tmp_path / "docs", tmp_path / "elsewhere"
    (folder / "sub").mkdir(parents=True)
    other.mkdir()
    texts = {folder / "keep.txt": "Glaciers carve valleys.", folder / "sub" / "gone.txt": "Volcanoes erupt magma.",
             folder / "empty.md": "Lemurs live on Madagascar.", folder / "broken.txt": "Bees fan their hives.",
             other / "outside.txt": "Tides follow the Moon.", other / "stays.txt": "Owls hunt at night."}
    for path, text in texts.items():
        path.write_text(text)
    index.add_paths([folder, other])
    (folder / "sub" / "gone.txt").unlink()
    (folder / "empty.md").write_text("  \n")
    (folder / "broken.txt").write_bytes(b"\x00\x01")  # unreadable now: its document stays
    (other / "outside.txt").unlink()  # not under the paths indexed: stays
    kept = doc_ids(index)
    assert index.add_paths([folder]).removed == [] and doc_ids(index) == kept  # without --prune: nothing
    report = index.add_paths([folder], prune=True)
    assert report.removed == sorted(str((folder / f).resolve()) for f in ("empty.md", "sub/gone.txt"))
    assert doc_ids(index) == sorted(str(p.resolve()) for p in (folder / "keep.txt", folder / "broken.txt",
                                                                other / "outside.txt", other / "stays.txt"))
    assert all("Volcanoes" not in h.text for h in index.search("volcano magma", k=5))
    import shutil

    shutil.rmtree(folder)  # a folder given that is gone: nothing to read, its documents pruned
    assert index.add_paths([folder], prune=True).removed == sorted(
        str(p.resolve()) for p in (folder / "keep.txt", folder / "broken.txt"))
    with pytest.raises(ValueError, match="no such file or folder"):
        index.add_paths([folder])
    with pytest.raises(ValueError, match="no document indexed from there to prune: .*docs"):
        index.add_paths([folder], prune=True)  # pruned already, and nothing else to do: refused as a typo is
    version = index.store.chunks.version
    with pytest.raises(ValueError, match="no document indexed from there to prune: .*typo"):
        index.add_paths([tmp_path / "typo"], prune=True)
    assert index.store.chunks.version == version  # nothing written
    report = index.add_paths([other, folder], prune=True)  # a scheduled run over both goes on, saying so
    assert report.removed == [str((other / "outside.txt").resolve())]
    assert [(s.source, s.reason) for s in report.skipped] == [(str(folder), sync.UNKNOWN)]


def test_prune_leaves_the_documents_under_an_empty_folder_given_a_share_not_mounted(index, tmp_path):
    """A share not mounted leaves its mount point empty: `mrag index SHARE --prune` deleted every document
    indexed from it (exit 0), and the next run embedded them all again."""
    root = tmp_path / "root"
    share, other = root / "share", root / "other"
    (share / "sub").mkdir(parents=True)
    other.mkdir()
    (share / "a.txt").write_text("Glaciers carve valleys.")
    (share / "sub" / "b.txt").write_text("Volcanoes erupt magma.")
    (other / "c.txt").write_text("Tides follow the Moon.")
    (other / "d.txt").write_text("Owls hunt at night.")
    index.add_paths([share, other])
    (share / "a.txt").rename(root / "a.txt")  # "unmounted": the mount point stays, empty
    (share / "sub" / "b.txt").unlink()
    (share / "sub").rmdir()
    (other / "c.txt").unlink()
    report = index.add_paths([share, other], prune=True)
    assert report.removed == [str((other / "c.txt").resolve())]  # the other folder's deleted file goes
    assert [(s.source, s.reason) for s in report.skipped] == [(str(share), sync.EMPTY_FOLDER)]
    assert doc_ids(index) == sorted([*(str((share / f).resolve()) for f in ("a.txt", "sub/b.txt")),
                                     str((other / "d.txt").resolve())])
    (share / "sub").mkdir()
    (share / "sub" / "b.txt").write_text("Volcanoes erupt magma.")
    index.add_paths([share / "sub"])
    (share / "sub" / "b.txt").unlink()
    (share / "sub").rmdir()  # `mrag index /mnt/share/sub --prune` with the share not mounted: sub is gone
    report = index.add_paths([share / "sub"], prune=True)
    assert report.removed == [] and [(s.source, s.reason) for s in report.skipped] == [
        (str(share / "sub"), sync.GONE_FROM_EMPTY.format(folder=share))]
    assert f"nearest folder above it, {share}, is empty" in report.skipped[0].reason
    report = index.add_paths([root], prune=True)  # the folder above is not empty: what is gone under it goes
    assert report.removed == sorted(str((share / f).resolve()) for f in ("a.txt", "sub/b.txt"))
    assert doc_ids(index) == sorted(str((root / f).resolve()) for f in ("a.txt", "other/d.txt"))


def test_prune_deletes_a_file_of_another_kind_named_on_its_own(index, tmp_path):
    """A .csv named on its own is read as text, its id its path: it follows its file as a .txt does."""
    data = tmp_path / "data.csv"
    data.write_text("name,value\nbeta,2 about rockets\n")
    index.add_paths([data])
    data.unlink()
    assert index.add_paths([data], prune=True).removed == [str(data.resolve())]


class NanEmbedder(FakeEmbedder):
    """Returns NaN in one head of every text that mentions `word`."""

    def __init__(self, word: str) -> None:
        super().__init__()
        self.word = word

    def vectors(self, text):
        standard, heads = super().vectors(text)
        if self.word in text:
            heads[2, 0] = np.nan
        return standard, heads


def test_nan_vectors_are_refused_and_nothing_is_written(db_path, monkeypatch):
    monkeypatch.setattr(mrag.writing, "WRITE_BATCH", 2)
    index = Index.open(db_path, embedder=NanEmbedder("broken"))
    index.add(DOCS[:2])
    before = snapshot(index)
    new = [{"id": "ok", "text": "a fine note about rivers"}, {"id": "ok2", "text": "another fine note"},
           {"id": "bad", "text": "a broken note about rivers"}]  # the 2nd write batch holds the NaN
    refused = r"NaN or infinite values for 1 chunk\(s\), first 'bad#0'; nothing was written"
    with pytest.raises(StoreError, match=refused):
        index.add(new)
    assert snapshot(Index.open(db_path, embedder=FakeEmbedder())) == before
    with pytest.raises(ValueError, match="NaN or infinite values for the query text 'broken rivers'"):
        index.search("broken rivers")
    assert index.search("Roman aqueducts carried water", k=1)[0].doc_id == "rome"  # the index still works


def test_threads_asking_a_new_index_for_its_embedder_make_it_once(index, fake):
    """8 threads' first searches on a freshly opened index: one model load (each made its own, and
    transformers' lazy imports failed when several threads imported it at once)."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    made: list[FakeEmbedder] = []
    start = threading.Barrier(8)

    def make() -> FakeEmbedder:
        time.sleep(0.05)  # a model takes a while to load
        made.append(FakeEmbedder())
        return made[-1]

    fresh = Index(index.store, make)

    def first_use(_: int) -> object:
        start.wait()
        return fresh.embedder

    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(first_use, range(8)))
    assert len(made) == 1 and all(e is made[0] for e in got)


def test_a_commit_seen_in_the_middle_of_a_search_gives_the_search_of_one_commit(index, monkeypatch):
    """Another thread's refresh between a search's read of the weights and its read of the rows (a commit of
    another process): the search starts again, so its weights and rows are of one commit."""
    import mrag.retrieve.search as search

    index.add(DOCS[:2])
    other = Index.open(index.store.uri, embedder=index.embedder)
    real, calls = search.ranker_for, []

    def meanwhile(store, *args, **kwargs):
        calls.append(store.committed_version)
        if len(calls) == 1:  # between the weights and the rows: a commit, seen by another thread's refresh
            other.add(DOCS[2:])
            store.refresh()
        return real(store, *args, **kwargs)

    monkeypatch.setattr(search, "ranker_for", meanwhile)
    hits = index.search("Roman water and honeybees, chess and tides", k=4, strategy="mrag-paper")
    assert len(calls) == 2 and calls[0] < calls[1]  # searched again, at the new commit
    monkeypatch.setattr(search, "ranker_for", real)
    again = index.search("Roman water and honeybees, chess and tides", k=4, strategy="mrag-paper")
    assert [(h.id, h.score) for h in hits] == [(h.id, h.score) for h in again]


def test_manifest_changes_of_a_write_are_seen_only_once_committed(index, monkeypatch):
    """A write's manifest changes (the default strategy, the ANN record) reach this process's readers only
    at the commit: at the moment the manifest is written, another thread still reads the committed one, and a
    failed write's staged change never reaches a later commit."""
    index.add(DOCS[:2])
    store, seen = index.store, []
    write = store._manifest_table.add

    def at_the_commit(*args, **kwargs):
        seen.append(store.manifest.default_strategy)  # what a reader in another thread would read now
        return write(*args, **kwargs)

    monkeypatch.setattr(store._manifest_table, "add", at_the_commit)
    index.set_default_strategy({"strategy": "standard"})
    assert seen == [None] and index.default_strategy == "standard"

    with pytest.raises(RuntimeError), store.writing(maintain=False):
        store.stage(default_strategy={"strategy": "mrag-paper"})
        raise RuntimeError("the write fails before its commit")
    index.add(DOCS[2:3])  # the next commit: without the failed write's change
    assert index.default_strategy == "standard"
    assert Index.open(store.uri, embedder=index.embedder).default_strategy == "standard"


def test_info_counts_chunks_and_documents_of_one_commit(index, monkeypatch):
    """A commit landing while `info` reads (a server's writer thread): both counts come from one read, so a
    one-chunk-per-document index never shows one chunk less than documents (2 of 103 polls did)."""
    index.add(DOCS[:2])
    store, other = index.store, Index.open(index.store.uri, embedder=index.embedder)

    def then_a_commit(read):
        def reading(*args, **kwargs):
            found = read(*args, **kwargs)
            if not other.store.count() > 2:  # once: another writer commits, and this process sees it
                other.add(DOCS[2:3])
                store.refresh()
            return found
        return reading

    monkeypatch.setattr(store, "count", then_a_commit(store.count))
    monkeypatch.setattr(store, "rows", then_a_commit(store.rows))
    info = index.info()
    assert info["chunks"] == info["documents"] == 2


def test_the_last_record_moved_out_of_a_file_moves_and_an_emptied_file_named_is_pruned(index, tmp_path):
    """A file whose last record moved to another file holds no ids: the move is recorded (every run refused
    it as "already indexed from another file", the file being empty or '[]'). With --prune, a file named on
    its own that is now empty has its documents removed (it was refused as empty, the documents kept)."""
    folder = tmp_path / "d"
    folder.mkdir()
    a, b = folder / "a.json", folder / "b.json"
    record = {7: {"id": 7, "text": "Owls hunt at night."}, 8: {"id": 8, "text": "Bees fan their hive."}}
    a.write_text(json.dumps([record[7]]))
    b.write_text(json.dumps([record[8]]))
    index.add_paths([folder])
    for emptied in ("[]", ""):
        a.write_text(emptied)
        b.write_text(json.dumps([record[8], record[7]]))
        report = index.add_paths([folder])
        assert report.updated == ["7"] and [(s.source, s.reason) for s in report.skipped] == [
            (str(a), "the file is empty" if not emptied else "no records")]
        assert {r["id"]: r["source"] for r in table_rows(index)} == {"7#0": str(b), "8#0": str(b)}
        a.write_text(json.dumps([record[7]]))  # back, for the second form
        b.write_text(json.dumps([record[8]]))
        index.add_paths([folder])
    b.write_text("")
    with pytest.raises(ingest.IngestError, match="b.json: the file is empty"):
        index.add_paths([b])  # named without --prune: an error, as before
    report = index.add_paths([b], prune=True)
    assert report.removed == ["8"] and doc_ids(index) == ["7"]


def test_add_after_the_text_cleaning_writes_an_older_digest_again_not_refuses(db_path, fake, monkeypatch):
    """An index written before text was cleaned (NFC, soft hyphens) holds the raw text's digest: `add` of the
    same document then said "already exists with other content" (upsert and indexing files wrote it again)."""
    raw = "coop\u00aderation in Zu\u0308rich"
    with monkeypatch.context() as before:
        before.setattr(documents, "clean_text", lambda text: text)  # as an older mrag wrote it
        Index.open(db_path, embedder=fake).add([{"id": "a", "text": raw}, {"id": "b", "text": "plain"}])
    index = Index.open(db_path, embedder=fake)
    report = index.add([{"id": "a", "text": raw}, {"id": "b", "text": "plain"}])
    assert (report.updated, report.unchanged) == (["a"], ["b"])
    assert index.add([{"id": "a", "text": raw}]).unchanged == ["a"]  # once
    assert [h.doc_id for h in index.search("Zürich cooperation", k=1, strategy="bm25")] == ["a"]
    for changed in ({"id": "b", "text": "other"}, {"id": "a", "text": "other cont\u00adent"}):
        with pytest.raises(ValueError, match="already exists with other content"):
            index.add([changed])  # a change of content is still refused, with a soft hyphen too
