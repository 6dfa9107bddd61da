"""The LanceDB caches' bounds (MRAG_INDEX_CACHE_MB, MRAG_METADATA_CACHE_MB): parsed with clear errors,
and an ANN search in a process with a small bound keeps the caches under it (real processes: the
session is made once per process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from mrag.connection import cache_limits
from mrag.errors import StoreError

CHILD = textwrap.dedent("""
    import hashlib, json, sys
    import numpy as np
    from mrag.embed.base import Embeddings, HeadEmbedder
    from mrag.index import Index
    from mrag.connection import session

    class Seeded(HeadEmbedder):
        name, dim, n_heads, head_dim = "seeded", 64, 8, 16
        def embed_batch(self, texts):
            rngs = [np.random.default_rng(int.from_bytes(hashlib.md5(t.encode()).digest()[:8], "little"))
                    for t in texts]
            return Embeddings(np.stack([r.standard_normal(64) for r in rngs]).astype(np.float32),
                              np.stack([r.standard_normal((8, 16)) for r in rngs]).astype(np.float32))

    index = Index.open(sys.argv[1], embedder=Seeded())
    if index.store.count() == 0:
        index.add([{"id": f"d{i}", "text": f"Document {i} on topic {i % 9}."} for i in range(6000)])
        index.build_ann()
    for q in ["Roman roads. Chess engines.", "topic three", "comets and tides", "bees", "rivers. mountains."]:
        index.search(q, k=5, strategy="mrag", exact=False)
    print(json.dumps({"cached": session().size_bytes}))
""")


def run_child(db, **env: str) -> int:
    done = subprocess.run([sys.executable, "-c", CHILD, str(db)], capture_output=True, text=True,
                          env=os.environ | env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return int(json.loads(done.stdout.strip().splitlines()[-1])["cached"])


@pytest.mark.parametrize("value", ["abc", "0", "-5", "1.5"])
def test_bad_cache_size_is_refused(monkeypatch, value):
    monkeypatch.setenv("MRAG_INDEX_CACHE_MB", value)
    with pytest.raises(StoreError, match="MRAG_INDEX_CACHE_MB must be a positive number of MiB"):
        cache_limits()


def test_cache_sizes_from_the_environment(monkeypatch):
    monkeypatch.delenv("MRAG_INDEX_CACHE_MB", raising=False)
    monkeypatch.setenv("MRAG_METADATA_CACHE_MB", "3")
    assert cache_limits() == {"index": None, "metadata": 3 * 2**20}


def test_ann_search_stays_within_a_small_cache(tmp_path):
    db = tmp_path / "db"
    unbounded = run_child(db)  # builds the index and its ANN indexes, then searches
    bounded = run_child(db, MRAG_INDEX_CACHE_MB="1", MRAG_METADATA_CACHE_MB="1")
    assert unbounded > 2 * 2**20  # the default caches hold more than the bound below
    assert bounded <= 2 * 2**20
