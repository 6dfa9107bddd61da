"""The embedder interface: one forward pass gives a standard vector and H head vectors per text."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

Kind = Literal["query", "document"]
# what an index records of its embedder's output (`HeadEmbedder.probe`): longer than a short max_length
PROBE = ("The Roman aqueducts carried water downhill into the city, and honeybees fan their wings to cool "
         "the hive on hot summer days.")
PROBE_VALUES = 16  # of the standard vector; and a quarter as many of each head


@dataclass
class Embeddings:
    """standard: (N, D) float32; heads: (N, H, d_head) float32."""

    standard: np.ndarray
    heads: np.ndarray

    def __len__(self) -> int:
        return len(self.standard)

    def non_finite(self) -> np.ndarray:
        """Positions of the texts whose standard vector or heads hold a NaN or an infinity."""
        finite = np.isfinite(self.standard).all(axis=1) & np.isfinite(self.heads).all(axis=(1, 2))
        return np.flatnonzero(~finite)

    def check_queries(self, texts: Sequence[str]) -> None:
        """Refuse query embeddings that hold a NaN or an infinity, naming the first such text."""
        if len(bad := self.non_finite()):
            raise ValueError(f"the embedder returned NaN or infinite values for the query text {texts[bad[0]]!r}")

    @classmethod
    def concat(cls, parts: Sequence[Embeddings], dim: int, n_heads: int, head_dim: int) -> Embeddings:
        if not parts:
            return cls(np.zeros((0, dim), np.float32), np.zeros((0, n_heads, head_dim), np.float32))
        return cls(
            np.concatenate([p.standard for p in parts]), np.concatenate([p.heads for p in parts])
        )


class HeadEmbedder(ABC):
    """Subclasses set the sizes and implement `embed_batch`; this class does batching and prefixes."""

    name: str = "embedder"
    dim: int  # D, size of the standard embedding
    n_heads: int  # H
    head_dim: int  # d_head
    query_instruction: str = ""
    document_instruction: str = ""

    @abstractmethod
    def embed_batch(self, texts: list[str]) -> Embeddings:
        """Embed texts that already carry their instruction prefix, in one forward pass."""

    def embed(
        self,
        texts: Sequence[str],
        kind: Kind = "document",
        batch_size: int = 32,
        show_progress: bool = False,
    ) -> Embeddings:
        """Embed texts of one kind; the kind's instruction is prepended (queries and documents differ)."""
        prefix = self.query_instruction if kind == "query" else self.document_instruction
        prepared = [prefix + t for t in texts]
        # longest first, so batches hold texts of similar length and pad little
        order = sorted(range(len(prepared)), key=lambda i: -len(prepared[i]))
        parts = [self.embed_batch([prepared[i] for i in idx]) for idx in _batches(order, batch_size, show_progress)]
        out = Embeddings.concat(parts, self.dim, self.n_heads, self.head_dim)
        inverse = np.empty(len(order), dtype=np.int64)
        inverse[order] = np.arange(len(order))
        return Embeddings(out.standard[inverse], out.heads[inverse])

    def unread(self, texts: Sequence[str]) -> tuple[int, int]:
        """Of these documents' texts, (how many are longer than the model reads, how many are mostly tokens it
        cannot read): what a write warns of. An embedder without a tokenizer tells none."""
        return 0, 0

    def probe(self) -> dict[str, list[float]]:
        """A fingerprint of the weights, layer and settings: the first values of the standard vector and of each
        head for `PROBE` as a document. An index records it and refuses an embedder whose own differs
        (`mrag.fits.loaded`): a model folder whose files were replaced keeps its name. Made once per embedder."""
        made: dict[str, list[float]] | None = getattr(self, "_probe_made", None)
        if made is None:
            out = self.embed([PROBE], kind="document")
            heads = out.heads[0, :, : max(1, PROBE_VALUES // 4)].reshape(-1)
            made = {"standard": [round(float(v), 6) for v in out.standard[0, :PROBE_VALUES]],
                    "heads": [round(float(v), 6) for v in heads]}
            self._probe_made = made
        return dict(made)

    def recorded(self) -> dict[str, Any]:
        """What an index records of the embedder: its `info` and its `probe`."""
        return self.info() | {"probe": self.probe()}

    def info(self) -> dict[str, Any]:
        """What an index records about the embedder, to refuse a different one later."""
        return {
            "model": self.name,
            "dim": self.dim,
            "n_heads": self.n_heads,
            "head_dim": self.head_dim,
            "query_instruction": self.query_instruction,
            "document_instruction": self.document_instruction,
        }


def _batches(order: list[int], size: int, show_progress: bool) -> Iterator[list[int]]:
    if size <= 0:
        raise ValueError(f"batch size must be positive, got {size}")
    starts = range(0, len(order), size)
    if show_progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="embedding", unit="batch")  # type: ignore[assignment]
    for s in starts:
        yield order[s : s + size]
