"""A Hypothesis state machine over `Index`: random adds, upserts, deletes (of existing and missing ids),
writes that fail half-way, ANN index builds, compactions and reopenings, checked after every step
against a plain dict of documents, against head-scale sums recomputed from the rows and against the
O(N^2) head scales of the model's texts; once ANN indexes exist, a search through them finds every
document, written before the build or after."""

from __future__ import annotations

import shutil
import tempfile

import hypothesis.strategies as st
import numpy as np
from conftest import FakeEmbedder
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

import mrag.writing
from mrag.index import Index
from mrag.scales import brute_force_scales

IDS = st.sampled_from(["a", "b", "c", "d", "e"])
WORDS = st.lists(st.sampled_from("river moon bee castle tide honey oak storm".split()), min_size=1, max_size=6)


class Flaky(FakeEmbedder):
    """Fails the call after `fail_after` more calls (None: never)."""

    fail_after: int | None = None

    def embed(self, texts, kind="document", batch_size=32, show_progress=False):
        if self.fail_after is not None:
            if self.fail_after == 0:
                self.fail_after = None
                raise RuntimeError("embedder died")
            self.fail_after -= 1
        return super().embed(texts, kind, batch_size, show_progress)


class IndexMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.folder = tempfile.mkdtemp()
        self.embedder = Flaky()
        self.index = Index.open(self.folder + "/db", embedder=self.embedder)
        self.docs: dict[str, str] = {}  # the model: id -> text

    @rule(doc=IDS, words=WORDS)
    def add(self, doc: str, words: list[str]) -> None:
        text = " ".join(words)
        if doc in self.docs and self.docs[doc] != text:
            try:
                self.index.add([{"id": doc, "text": text}])
                raise AssertionError("adding an existing id with other content succeeded")
            except ValueError:
                return
        self.index.add([{"id": doc, "text": text}])
        self.docs[doc] = text

    @rule(doc=IDS, words=WORDS)
    def upsert(self, doc: str, words: list[str]) -> None:
        self.index.upsert([{"id": doc, "text": " ".join(words)}])
        self.docs[doc] = " ".join(words)

    @rule(ids=st.lists(IDS, min_size=1, max_size=3, unique=True))
    def delete(self, ids: list[str]) -> None:
        if all(i in self.docs for i in ids):
            self.index.delete(ids)
            for i in ids:
                del self.docs[i]
            return
        try:
            self.index.delete(ids)
            raise AssertionError("deleting a missing id succeeded")
        except ValueError:
            pass

    @rule(words=WORDS, batches=st.integers(0, 2), early_lock=st.booleans())
    def failing_write(self, words: list[str], batches: int, early_lock: bool) -> None:
        """New documents in batches of one; the embedder dies after `batches` of them. `early_lock`:
        each batch goes into the table as it is embedded (a write past STAGE_BYTES), else all at the end."""
        todo = [{"id": f"new{i}", "text": " ".join(words)} for i in range(3) if f"new{i}" not in self.docs]
        self.embedder.fail_after = batches
        saved = mrag.writing.WRITE_BATCH, mrag.writing.STAGE_BYTES
        mrag.writing.WRITE_BATCH, mrag.writing.STAGE_BYTES = 1, 1 if early_lock else 2**30
        try:
            self.index.upsert(todo)
        except RuntimeError:
            assert batches < len(todo)
        else:
            self.docs.update({d["id"]: d["text"] for d in todo})
        finally:
            self.embedder.fail_after = None
            mrag.writing.WRITE_BATCH, mrag.writing.STAGE_BYTES = saved

    @rule()
    def reopen(self) -> None:
        self.index = Index.open(self.folder + "/db", embedder=self.embedder)

    @rule()
    def build_ann(self) -> None:
        if not self.docs:
            try:
                self.index.build_ann()
                raise AssertionError("building ANN indexes on an empty index succeeded")
            except ValueError:
                return
        assert self.index.build_ann()["rows"] == len(self.docs)

    @rule()
    def optimize(self) -> None:
        self.index.optimize(keep_versions=0)

    @invariant()
    def matches_the_model(self) -> None:
        rows = self.index.store.rows(columns=["doc_id", "text"]).to_pylist()
        assert {r["doc_id"]: r["text"] for r in rows} == self.docs
        assert len(rows) == len(self.docs)  # one chunk each: no duplicates
        check = self.index.verify()
        assert check["duplicate_ids"] == 0 and check["sums_drift"] < 1e-6, check
        scales = [h["scale"] for h in self.index.head_scales()]
        if self.docs:  # the O(N^2) definition on the model's texts
            heads = np.stack([self.embedder.vectors(text)[1] for text in self.docs.values()])
            np.testing.assert_allclose(scales, brute_force_scales(heads), rtol=1e-5, atol=1e-5)
        else:
            assert scales == [0.0] * self.embedder.n_heads
        if self.docs and self.index.store.manifest.ann:  # rows written since the build are found too
            hits = self.index.search("river moon", k=len(self.docs), strategy="standard", exact=False)
            assert {h.doc_id for h in hits} == set(self.docs)

    def teardown(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


IndexMachine.TestCase.settings = settings(
    max_examples=20, stateful_step_count=10, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
test_index_state_machine = IndexMachine.TestCase
