"""mrag inside LanceDB: the `multi-head` registry function (real MiniLM) and the MRAG merger."""

from __future__ import annotations

import lancedb
import numpy as np
import pyarrow as pa
import pytest
from lancedb.embeddings import get_registry
from lancedb.pydantic import LanceModel, Vector

import mrag.lancedb_ext  # noqa: F401  (registers "multi-head")
from mrag import lancedb_ext
from mrag.lancedb_ext import MRAGReranker, column_scale, multi_head_table, vector_columns, vote_search
from mrag.scales import brute_force_scales

TEXTS = [
    "Roman aqueducts carried water over long distances using gravity.",
    "Algae use light for photosynthesis inside chloroplasts.",
    "Bees fan their wings to cool the hive in summer.",
]


def test_multi_head_function_in_a_lance_model(tmp_path, minilm):
    f = get_registry().get("multi-head").create()
    assert f.ndims() == 384

    class Doc(LanceModel):
        text: str = f.SourceField()
        vector: Vector(f.ndims()) = f.VectorField()

    table = lancedb.connect(tmp_path).create_table("docs", schema=Doc)
    table.add([{"text": t} for t in TEXTS])
    assert table.search("How did Romans move water?").limit(1).to_list()[0]["text"] == TEXTS[0]
    stored = np.array(table.to_arrow()["vector"].to_pylist())
    expected = minilm.embed(TEXTS).standard
    assert np.allclose(stored, expected, atol=1e-4)  # the same vectors as mrag's own embedder


def test_head_outputs_and_bad_options():
    registry = get_registry().get("multi-head")
    assert registry.create(output="head:11").ndims() == 32
    assert registry.create(output="heads").ndims() == 12 * 32
    with pytest.raises(ValueError, match="heads 0..11"):
        registry.create(output="head:12").ndims()
    with pytest.raises(ValueError, match="output must be"):
        registry.create(output="everything")


def test_multi_head_table_computes_all_heads_in_one_forward_pass(tmp_path, minilm, monkeypatch):
    table = multi_head_table(lancedb.connect(tmp_path), "docs")
    embedder = get_registry().get("multi-head").create().embedder()
    lancedb_ext._RECENT.clear()  # earlier tests may have embedded the same texts
    calls = []
    real = embedder.embed_batch
    monkeypatch.setattr(embedder, "embed_batch", lambda texts: calls.append(len(texts)) or real(texts))
    table.add([{"text": t} for t in TEXTS])
    assert calls == [3]  # 13 vector columns, one forward pass
    assert vector_columns(table) == ["vector", *(f"head_{i}" for i in range(12))]
    heads = minilm.embed(TEXTS).heads  # (3, 12, 32)
    stored = np.array(table.to_arrow()["head_5"].to_pylist())
    assert np.allclose(stored, heads[:, 5, :], atol=1e-4)
    assert column_scale(table, "head_5") == pytest.approx(brute_force_scales(heads)[5], rel=1e-4)
    hits = vote_search(table, "How do bees keep the hive cool?", k=2)
    assert hits[0]["text"] == TEXTS[2]
    assert {v["space"] for v in hits[0]["_votes"]} >= {"vector", "head_0"}
    assert len(vote_search(table, "water", k=3, method="rrf")) == 3


def test_merger_hand_worked_vote_and_rrf():
    a = [{"id": "x", "text": "X"}, {"id": "y", "text": "Y"}]
    b = [{"id": "y", "text": "Y"}, {"id": "z", "text": "Z"}]
    c = [{"id": "z", "text": "Z"}]
    # weights 1, 1, 3: x = 1; y = 0.5 + 1 = 1.5; z = 0.5 + 3 = 3.5
    merged = MRAGReranker([1, 1, 3], names=["a", "b", "c"]).merge([a, b, c])
    assert [(r["id"], r["_score"]) for r in merged] == [("z", 3.5), ("y", 1.5), ("x", 1.0)]
    assert merged[0]["_votes"] == [{"space": "b", "rank": 1, "weight": 0.5}, {"space": "c", "rank": 0, "weight": 3.0}]
    rrf = MRAGReranker(method="rrf").merge([a, b, c], k=1)
    assert rrf[0]["id"] in ("y", "z") and rrf[0]["_score"] == pytest.approx(1 / 61 + 1 / 62)
    by_text = MRAGReranker().merge([[{"text": "X"}], [{"text": "X"}]])
    assert by_text == [{"text": "X", "_score": 2.0, "_votes": [
        {"space": "0", "rank": 0, "weight": 1.0}, {"space": "1", "rank": 0, "weight": 1.0}]}]
    with pytest.raises(ValueError, match="2 weights for 3"):
        MRAGReranker([1, 2]).merge([a, b, c])
    with pytest.raises(ValueError, match="method"):
        MRAGReranker(method="sum")
    with pytest.raises(ValueError, match="no column 'id'"):
        MRAGReranker(key="id").merge([[{"text": "X"}]])
    with pytest.raises(ValueError, match="k must be positive"):
        MRAGReranker().merge([a], k=0)


def test_a_set_votes_once_for_a_document_and_no_results_are_an_empty_table():
    # set 0 holds X twice: one vote at its best rank (1), then Y at rank 1 (0.5); set 1: Y (1). Y = 1.5, X = 1
    repeated = [{"text": "X"}, {"text": "X"}, {"text": "Y"}]
    merged = MRAGReranker().merge([repeated, [{"text": "Y"}]])
    assert [(r["text"], r["_score"]) for r in merged] == [("Y", 1.5), ("X", 1.0)]
    # LanceDB asks a reranker for `_relevance_score` even when a full-text search matched nothing
    empty = pa.table({"text": pa.array([], pa.string()), "_score": pa.array([], pa.float32())})
    table = MRAGReranker().rerank_fts("zzzq", empty)
    assert table.num_rows == 0 and table.column_names == ["text", "_relevance_score"]
    vectors = pa.table({"text": ["a"], "_distance": pa.array([0.1], pa.float32())})
    assert MRAGReranker().rerank_hybrid("q", vectors, empty).column("text").to_pylist() == ["a"]


def test_merger_over_tables_one_per_space(tmp_path):
    """The LanceDB page's shape: one table per embedding space, results merged for one question."""
    from tests.conftest import MINILM_DIR

    pytest.importorskip("sentence_transformers")
    db = lancedb.connect(tmp_path)
    tables = []
    for name, f in [
        ("minilm", get_registry().get("sentence-transformers").create(name=str(MINILM_DIR))),
        ("multi_head", get_registry().get("multi-head").create()),
    ]:
        class Doc(LanceModel):
            text: str = f.SourceField()
            vector: Vector(f.ndims()) = f.VectorField()

        table = db.create_table(name, schema=Doc)
        table.add([{"text": t} for t in TEXTS])
        tables.append(table)
    question = "How do plants use sunlight?"
    reranked = MRAGReranker(names=["minilm", "multi_head"]).rerank_multivector(
        [t.search(question).limit(3) for t in tables], question
    )
    assert isinstance(reranked, pa.Table) and reranked.num_rows == 3
    assert reranked["text"][0].as_py() == TEXTS[1]
    scores = reranked["_relevance_score"].to_pylist()
    assert scores == sorted(scores, reverse=True) and scores[0] == pytest.approx(2.0)
