"""mrag inside LanceDB's Embedding API: the `multi-head` registry function and an MRAG merger.

Importing mrag registers `multi-head`, so a LanceDB user writes

    f = get_registry().get("multi-head").create(name="minilm", layer=-1)
    class Doc(LanceModel):
        text: str = f.SourceField()
        vector: Vector(f.ndims()) = f.VectorField()

and gets the model's standard vector on add and on query. `output="head:3"` gives head 3 of the
hooked layer instead, `output="heads"` all heads as one vector (each head unit length).
`multi_head_table()` creates a table with the standard vector plus one column per head; one
forward pass serves all of them (the last batches are cached). `vote_search()` queries every
vector column of such a table (or of any table with several embedding functions) and merges the
lists with the MRAG vote; `MRAGReranker` merges result sets of several searches or tables (one
per space, as LanceDB's Multi-Head RAG page does) by the vote or by reciprocal rank fusion.
Left out: async tables and remote (LanceDB Cloud) tables.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
from lancedb.embeddings import TextEmbeddingFunction, register
from lancedb.rerankers import Reranker

from mrag.scales import HeadStats, split_unit
from mrag.vote import fuse, rank_weights, rrf_weights

_EMBEDDERS: dict[tuple[Any, ...], Any] = {}
_RECENT: OrderedDict[tuple[Any, ...], Any] = OrderedDict()  # (model key, kind, texts) -> Embeddings
_LOCK = threading.Lock()
_RECENT_SIZE = 8


@register("multi-head")
class MultiHeadEmbeddings(TextEmbeddingFunction):
    """mrag's multi-head embedder as a LanceDB embedding function.

    name: model alias, Hugging Face id or folder (default the packaged all-MiniLM-L6-v2);
    layer: the layer whose heads are hooked (-1 = last); output: "standard", "heads" or "head:I".
    """

    name: str = "minilm"
    layer: int = -1
    pooling: str | None = None
    output: str = "standard"
    device: str = "auto"
    dtype: str = "float32"
    query_instruction: str = ""
    document_instruction: str = ""

    def model_post_init(self, context: Any, /) -> None:
        super().model_post_init(context)
        if self.output not in ("standard", "heads") and not self.output.startswith("head:"):
            raise ValueError(f"output must be 'standard', 'heads' or 'head:I', got {self.output!r}")

    def _key(self) -> tuple[Any, ...]:
        return (self.name, self.layer, self.pooling, self.device, self.dtype, self.query_instruction,
                self.document_instruction)

    def embedder(self) -> Any:
        """The shared TransformerEmbedder of this configuration (loaded once per process)."""
        with _LOCK:
            if self._key() not in _EMBEDDERS:
                from mrag.embed.transformer import TransformerEmbedder

                _EMBEDDERS[self._key()] = TransformerEmbedder(
                    self.name, layer=self.layer, pooling=self.pooling, device=self.device,  # type: ignore[arg-type]
                    dtype=self.dtype, query_instruction=self.query_instruction,
                    document_instruction=self.document_instruction,
                )
            return _EMBEDDERS[self._key()]

    def _head_index(self) -> int:
        n = self.embedder().n_heads
        try:
            i = int(self.output.split(":", 1)[1])
        except ValueError:
            raise ValueError(f"output {self.output!r}: the head must be a number") from None
        if not 0 <= i < n:
            raise ValueError(f"output {self.output!r}: the model has heads 0..{n - 1}")
        return i

    def ndims(self) -> int:
        e = self.embedder()
        if self.output == "standard":
            return int(e.dim)
        if self.output == "heads":
            return int(e.n_heads * e.head_dim)
        self._head_index()
        return int(e.head_dim)

    def _embed(self, texts: list[str], kind: str) -> list[np.ndarray]:
        key = (self._key(), kind, tuple(texts))
        with _LOCK:
            emb = _RECENT.get(key)
        if emb is None:
            emb = self.embedder().embed(texts, kind=kind)  # type: ignore[arg-type]
            with _LOCK:
                _RECENT[key] = emb
                while len(_RECENT) > _RECENT_SIZE:
                    _RECENT.popitem(last=False)
        if self.output == "standard":
            out = emb.standard  # (N, D)
        elif self.output == "heads":
            out = split_unit(emb.heads)[1].reshape(len(texts), -1)  # (N, H*d), every head unit length
        else:
            out = emb.heads[:, self._head_index(), :]  # (N, d), raw: its norms give the head's scale
        return list(np.asarray(out, dtype=np.float32))

    def compute_query_embeddings(  # type: ignore[override]  # LanceDB's stubs say np.array, not np.ndarray
        self, query: str, *args: Any, **kwargs: Any
    ) -> list[np.ndarray]:
        return self._embed(list(self.sanitize_input(query)), "query")

    def generate_embeddings(self, texts: Any, *args: Any, **kwargs: Any) -> list[np.ndarray]:  # type: ignore[override]
        return self._embed([str(t) for t in texts], "document")


def multi_head_table(
    db: Any, table_name: str, heads: bool = True, text_field: str = "text", mode: str = "create", **options: Any
) -> Any:
    """A new LanceDB table with `text_field`, `vector` (standard) and, when `heads`, `head_0..head_{H-1}`.

    Each vector column has its own `multi-head` function (options: name, layer, pooling, ...); add
    rows with only the text; `mode="overwrite"` replaces an existing table. A LanceModel pairs one
    source field with one function, so the columns are declared through `embedding_functions`.
    """
    from lancedb.embeddings import EmbeddingFunctionConfig, get_registry

    registry = get_registry().get("multi-head")
    functions = {"vector": registry.create(**options, output="standard")}
    if heads:
        for i in range(functions["vector"].embedder().n_heads):
            functions[f"head_{i}"] = registry.create(**options, output=f"head:{i}")
    schema = pa.schema([pa.field(text_field, pa.string())] + [
        pa.field(col, pa.list_(pa.float32(), f.ndims())) for col, f in functions.items()
    ])
    configs = [EmbeddingFunctionConfig(source_column=text_field, vector_column=col, function=f)
               for col, f in functions.items()]
    return db.create_table(table_name, schema=schema, embedding_functions=configs, mode=mode)


def column_scale(table: Any, column: str) -> float:
    """A vector column's scale, computed like a head's: mean norm x mean pairwise cosine distance."""
    data = table.to_arrow().select([column])[column]
    if len(data) == 0:
        return 0.0
    values = np.asarray(data.combine_chunks().flatten().to_numpy(zero_copy_only=False), dtype=np.float32)
    values = values.reshape(len(data), -1)  # (N, D)
    norms, units = split_unit(values)
    stats = HeadStats(1, values.shape[1])
    stats.add(norms[:, None], units[:, None, :])
    return float(stats.scales()[0])


def vector_columns(table: Any) -> list[str]:
    """The vector columns that a LanceDB embedding function fills, in schema order."""
    configured = set(table.embedding_functions)
    return [f.name for f in table.schema if f.name in configured]


def vote_search(
    table: Any,
    query: str,
    k: int = 5,
    c: int = 32,
    columns: Sequence[str] | None = None,
    weights: dict[str, float] | None = None,
    method: str = "vote",
) -> list[dict[str, Any]]:
    """Search every embedding space (vector column) of `table` and merge the lists (MRAG vote or RRF).

    Each column's weight is `weights[column]` or its scale, computed like a head's (`column_scale`).
    Returns rows best first with `_score` and `_votes` (column, rank, weight).
    """
    columns = list(columns or vector_columns(table))
    if not columns:
        raise ValueError("the table has no vector column filled by an embedding function")
    given = weights or {}
    results = [
        table.search(query, vector_column_name=col).distance_type("cosine").with_row_id(True).limit(c).to_arrow()
        for col in columns
    ]
    space_weights = [given[col] if col in given else column_scale(table, col) for col in columns]
    return MRAGReranker(space_weights, method=method, key="_rowid", names=columns).merge(results, k)


class MRAGReranker(Reranker):
    """Merges several result sets (one per embedding space or per table) with the MRAG vote or RRF.

    The vote gives the row at 0-based rank p of set s the weight w_s * 2**-p (w_s: `weights`, default 1)
    and sums over sets (Besta et al., Multi-Head RAG, arXiv 2406.05085); "rrf" sums 1 / (60 + rank).
    Rows are the same document when their `key` column agrees (default: "id" if every set has it,
    else "text"). Use it with LanceDB's `rerank_multivector`, or call `merge()` directly.
    """

    def __init__(
        self,
        weights: Sequence[float] | None = None,
        method: str = "vote",
        key: str | None = None,
        names: Sequence[str] | None = None,
        return_score: str = "relevance",
    ) -> None:
        super().__init__(return_score)
        if method not in ("vote", "rrf"):
            raise ValueError(f"method must be 'vote' or 'rrf', got {method!r}")
        if weights is not None and any(w < 0 for w in weights):
            raise ValueError("space weights must be >= 0")
        self.weights = None if weights is None else [float(w) for w in weights]
        self.method = method
        self.key = key
        self.names = list(names) if names is not None else None

    def merge(self, result_sets: Sequence[Any], k: int | None = None) -> list[dict[str, Any]]:
        """Merge result sets (pa.Table, list of dicts, or query builders), best first, the top k."""
        sets = [_as_rows(r) for r in result_sets]
        if not sets:
            raise ValueError("no result sets to merge")
        if k is not None and k <= 0:
            raise ValueError(f"k must be positive, got {k}")
        if self.weights is not None and len(self.weights) != len(sets):
            raise ValueError(f"{len(self.weights)} weights for {len(sets)} result sets")
        key = self.key or ("id" if all(all("id" in row for row in s) for s in sets) else "text")
        ids: dict[Any, int] = {}
        first: list[dict[str, Any]] = []
        depth = max((len(s) for s in sets), default=0)
        ranking = np.full((len(sets), max(depth, 1)), -1, dtype=np.int64)  # (S, c)
        for s, rows in enumerate(sets):
            rank, seen = 0, set()
            for row in rows:
                if key not in row:
                    raise ValueError(f"result set {s} has no column {key!r} to match rows by")
                item = ids.setdefault(row[key], len(ids))
                if item == len(first):
                    first.append(row)
                if item not in seen:  # a set votes once for a document, at its best rank
                    seen.add(item)
                    ranking[s, rank], rank = item, rank + 1
        if not ids:
            return []
        if self.method == "rrf":
            w = rrf_weights(ranking)
        else:
            w = rank_weights(ranking, np.asarray(self.weights if self.weights is not None else np.ones(len(sets))))
        fused = fuse(ranking, w, k or len(ids))
        names = self.names or [str(i) for i in range(len(sets))]
        return [
            {kk: v for kk, v in first[item].items() if kk not in ("_score", "_votes")}
            | {"_score": float(score),
               "_votes": [{"space": names[v.space], "rank": v.rank, "weight": v.weight} for v in votes]}
            for item, score, votes in zip(fused.ids, fused.scores, fused.votes)
        ]

    def _to_table(self, sets: Sequence[Any]) -> pa.Table:
        """The merged rows as LanceDB's rerankers return them; no rows: an empty table of the first input
        table's columns (LanceDB asks for `_relevance_score` even then)."""
        own = ("_score", "_votes", "_relevance_score")
        rows = self.merge(sets)
        if not rows:
            like = next((t.schema for t in sets if isinstance(t, pa.Table)), pa.schema([]))
            fields = [f for f in like if f.name not in own]
            return pa.schema([*fields, pa.field("_relevance_score", pa.float32())]).empty_table()
        return pa.Table.from_pylist([{kk: v for kk, v in r.items() if kk not in own}
                                     | {"_relevance_score": r["_score"]} for r in rows])

    def rerank_multivector(self, vector_results: Any, query: Any = None, deduplicate: bool = False) -> pa.Table:
        return self._to_table(vector_results if isinstance(vector_results, list) else [vector_results])

    def rerank_vector(self, query: Any, vector_results: pa.Table) -> pa.Table:
        return self._to_table([vector_results])

    def rerank_fts(self, query: Any, fts_results: pa.Table) -> pa.Table:
        return self._to_table([fts_results])

    def rerank_hybrid(self, query: Any, vector_results: pa.Table, fts_results: pa.Table) -> pa.Table:
        return self._to_table([vector_results, fts_results])


def _as_rows(result: Any) -> list[dict[str, Any]]:
    if isinstance(result, pa.Table):
        return result.to_pylist()
    if hasattr(result, "to_arrow"):
        return result.to_arrow().to_pylist()
    return [dict(r) for r in result]
