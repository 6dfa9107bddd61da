"""The stages of a Ray ingestion job as plain functions and classes: listing and reading files,
planning what to embed, chunk rows, the embedding actor, and the completeness check. Ray Data runs
them (`mrag.distributed.job`); tests call them directly."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from mrag.chunk import chunk_text
from mrag.documents import document_digest
from mrag.embed.base import Embeddings, HeadEmbedder
from mrag.ingest import IngestError, Skipped, read_file, unreadable_reason
from mrag.rows import build_rows, chunk_schema
from mrag.scales import HeadStats, split_unit
from mrag.writing import AddReport, check_unique_ids, triage

EmbedderFactory = Callable[[], HeadEmbedder]
STATS_COLUMN = "_embedded"  # JSON of one output table's worker and head sums, on its first row only


@dataclass
class RayIndexReport(AddReport):
    """What `index_with_ray` did: the `AddReport` counts plus the chunks each worker embedded."""

    workers: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return super().to_dict() | {"workers": self.workers}


def read_documents(
    item: dict[str, Any], chunk_chars: int, overlap: int, fields: dict[str, str]
) -> list[dict[str, Any]]:
    """The read stage (a Ray Data `flat_map`): one input file -> one row per document, with its chunks.

    `item`: path (absolute), shown (the path as the user gave it), explicit (named, not found in a
    folder), order (its place in the input). A file that cannot be read gives one row with `problem`
    set and no document; the driver raises for a file named explicitly and skips one found in a folder."""
    name = item["path"]
    try:
        docs = read_file(Path(name), **fields)
    except IngestError as e:
        return [_document_row(item, 0, problem=unreadable_reason(e, Path(name)))]
    return [
        _document_row(
            item,
            position,
            doc_id=doc.id,
            source=doc.source,
            title=doc.title,
            metadata=json.dumps(doc.metadata, ensure_ascii=False, default=str),
            digest=document_digest(doc),
            stamp=list(doc.stamp or ()),
            chunks=chunk_text(doc.text, chunk_chars, overlap),
        )
        for position, doc in enumerate(docs)
    ]


def _document_row(item: dict[str, Any], position: int, **values: Any) -> dict[str, Any]:
    """Every column given a value of its type, so all blocks of the read stage share one schema."""
    row: dict[str, Any] = {
        "shown": item["shown"],
        "explicit": item["explicit"],
        "order": item["order"],
        "position": position,
        "problem": "",
        "doc_id": "",
        "source": "",
        "title": "",
        "metadata": "{}",
        "digest": "",
        "stamp": [],  # the file's (inode, size, mtime) before the read (`ingest.file_stamp`)
        "chunks": [],
    } | values
    row["n_chunks"] = len(row["chunks"])
    return row


def chunk_rows(doc: dict[str, Any], wanted: frozenset[str] | None = None) -> list[dict[str, Any]]:
    """A document row -> one row per chunk, with what the store keeps of its document; none for a
    document not in `wanted` (when given)."""
    if wanted is not None and doc["doc_id"] not in wanted:
        return []
    keep = {k: doc[k] for k in ("doc_id", "source", "title", "metadata", "digest")}
    return [keep | {"id": f"{doc['doc_id']}#{i}", "position": i, "text": text} for i, text in enumerate(doc["chunks"])]


class EmbedChunks:
    """The embed stage (a Ray Data `map_batches` callable class): one instance per actor of the pool,
    loading the embedder once. A batch of chunk rows in, the store's rows out, tagged."""

    def __init__(self, make_embedder: EmbedderFactory) -> None:
        self.embedder = make_embedder()
        self.worker = f"{socket.gethostname()}:{os.getpid()}"

    def __call__(self, chunks: pa.Table) -> pa.Table:
        e, rows = self.embedder, chunks.to_pydict()
        emb: Embeddings = e.embed(rows["text"], kind="document")
        stats = HeadStats(e.n_heads, e.head_dim)
        stats.add(*split_unit(emb.heads))  # (B, H) norms, (B, H, d) units: what the store will fold in
        table = build_rows(
            ids=rows["id"],
            doc_ids=rows["doc_id"],
            sources=rows["source"],
            titles=rows["title"],
            positions=rows["position"],
            texts=rows["text"],
            metadata=[json.loads(m) for m in rows["metadata"]],
            doc_hashes=rows["digest"],
            standard=emb.standard,
            heads=emb.heads,
            schema=chunk_schema(e.dim, e.n_heads, e.head_dim),
        )
        tag = json.dumps({"worker": self.worker, **stats.to_json()})
        # on the first row only: however Ray Data re-blocks the tables, each tag reaches the driver once
        return table.append_column(STATS_COLUMN, pa.array([tag] + [None] * (len(table) - 1), pa.string()))


def per_worker(tags: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Chunks embedded by each worker process (host:pid), from the tables' tags."""
    counts: dict[str, int] = {}
    for t in tags:
        counts[t["worker"]] = counts.get(t["worker"], 0) + t["count"]
    return [{"worker": w, "chunks": n} for w, n in sorted(counts.items())]


def plan(listing: list[dict[str, Any]], existing: dict[str, str]) -> tuple[RayIndexReport, dict[str, int]]:
    """Document rows in input order and the indexed digests (doc id -> digest) -> the report and the
    documents to embed (doc id -> chunk count): new and changed ones. An unreadable file named
    explicitly stops the job; one found in a folder is skipped."""
    report = RayIndexReport()
    for row in listing:
        if row["problem"] and row["explicit"]:
            raise IngestError(f"{row['shown']}: {row['problem']}")
        if row["problem"]:
            report.skipped.append(Skipped(row["shown"], row["problem"]))
    docs = [row for row in listing if not row["problem"]]
    check_unique_ids([row["doc_id"] for row in docs], [row["source"] for row in docs])
    chosen = triage([(row["doc_id"], row["digest"]) for row in docs], existing, report)
    todo = {docs[i]["doc_id"]: docs[i]["n_chunks"] for i in chosen}
    return report, todo


def check_complete(
    expected: set[str], written: list[str], before: HeadStats, after: HeadStats, worker_sums: list[HeadStats] | None
) -> None:
    """No chunk lost or written twice, and the workers' head sums (when given) equal what the store folded in."""
    if len(written) != len(set(written)) or set(written) != expected:
        twice = len(written) - len(set(written))
        raise RuntimeError(
            f"distributed write incomplete: {len(expected - set(written))} chunk(s) lost, {twice} written twice"
        )
    if worker_sums is None:
        return
    count = sum(s.count for s in worker_sums)
    norm_sum = sum((s.norm_sum for s in worker_sums), np.zeros_like(before.norm_sum))
    unit_sum = sum((s.unit_sum for s in worker_sums), np.zeros_like(before.unit_sum))
    if (
        after.count - before.count != count
        or not np.allclose(after.norm_sum - before.norm_sum, norm_sum, rtol=1e-6, atol=1e-6)
        or not np.allclose(after.unit_sum - before.unit_sum, unit_sum, rtol=1e-6, atol=1e-6)
    ):
        raise RuntimeError("the workers' head statistics do not match the rows written")
