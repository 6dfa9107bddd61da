"""Indexing on a Ray cluster: embedding spread over worker processes (GPUs when the cluster has them), one commit.

The driver lists the input files and splits them over `num_workers` Ray actors, balanced by size.
Each actor loads the embedder once, reads and chunks its files, and reports the documents it found
(id, content digest, chunk count). The driver drops the documents already indexed with the same
content, exactly as `Index.add_paths` does; then every actor embeds its remaining chunks in batches
and streams the rows back as Arrow tables, keeping running head-statistic sums (`HeadStats`) of what
it embedded. The driver writes the batches inside one `Store.writing()`, so readers see nothing until
the manifest commits and any failure (a worker dying, a bad file) rolls the whole job back. Before the
commit it checks that the chunk ids written are exactly the ones the workers announced (none lost,
none twice) and that the workers' head sums add up to what the store folded in.

Left out: workers writing Lance fragments straight to object storage (here every row passes through
the driver; docs/scaling.md describes that next step), and retrying a lost worker (the job fails and
rolls back; run it again: unchanged documents are skipped only once committed).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from mrag.chunk import chunk_text
from mrag.embed.base import Embeddings, HeadEmbedder
from mrag.index import AddReport, Index
from mrag.ingest import Document, IngestError, Skipped, document_digest, read_file, walk_files
from mrag.scales import HeadStats, split_unit
from mrag.store import Store, build_rows, chunk_schema, quote

EmbedderFactory = Callable[[], HeadEmbedder]


@dataclass
class RayIndexReport(AddReport):
    """What `index_with_ray` did: the `AddReport` counts plus the chunks each worker embedded."""

    workers: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return super().to_dict() | {"workers": self.workers}


class EmbedWorker:
    """One Ray actor: loads the embedder once, reads and chunks its files, embeds the chunks it is told to."""

    def __init__(self, make_embedder: EmbedderFactory) -> None:
        self.embedder = make_embedder()
        self.stats = HeadStats(self.embedder.n_heads, self.embedder.head_dim)
        self.docs: dict[str, tuple[Document, str, list[str]]] = {}  # id -> (document, digest, chunk texts)

    def info(self) -> dict[str, Any]:
        return self.embedder.info()

    def load(
        self, files: list[tuple[str, bool]], chunk_chars: int, overlap: int, fields: dict[str, str]
    ) -> tuple[list[tuple[str, str, int]], list[Skipped]]:
        """Read and chunk files -> ((doc id, digest, chunks) per document, files skipped). A file named
        explicitly must be readable (IngestError); one found in a folder is skipped with the reason."""
        found, skipped = [], []
        for name, explicit in files:
            try:
                docs = read_file(Path(name), **fields)
            except IngestError as e:
                if explicit:
                    raise
                reason = str(e).removeprefix(f"{name}: ").removeprefix(f"{Path(name).resolve()}: ")
                skipped.append(Skipped(name, reason))
                continue
            for doc in docs:
                if doc.id in self.docs:
                    raise ValueError(f"duplicate document ids in one batch: {doc.id}")
                digest = document_digest(doc)
                chunks = chunk_text(doc.text, chunk_chars, overlap)
                self.docs[doc.id] = (doc, digest, chunks)
                found.append((doc.id, digest, len(chunks)))
        return found, skipped

    def embed(self, doc_ids: list[str], batch_size: int) -> Iterator[pa.Table]:
        """Rows for the chunks of these documents, `batch_size` chunks per table (a Ray streaming generator)."""
        e = self.embedder
        schema = chunk_schema(e.dim, e.n_heads, e.head_dim)
        chunks = [(self.docs[d], i, text) for d in doc_ids for i, text in enumerate(self.docs[d][2])]
        for start in range(0, len(chunks), batch_size):
            batch = chunks[start : start + batch_size]
            emb: Embeddings = e.embed([text for _, _, text in batch], kind="document")
            norms, units = split_unit(emb.heads)  # (B, H), (B, H, d): what the store will fold in
            self.stats.add(norms, units)
            yield build_rows(
                ids=[f"{doc.id}#{i}" for (doc, _, _), i, _ in batch],
                doc_ids=[doc.id for (doc, _, _), _, _ in batch],
                sources=[doc.source for (doc, _, _), _, _ in batch],
                titles=[doc.title for (doc, _, _), _, _ in batch],
                positions=[i for _, i, _ in batch],
                texts=[text for _, _, text in batch],
                metadata=[doc.metadata for (doc, _, _), _, _ in batch],
                doc_hashes=[digest for (_, digest, _), _, _ in batch],
                standard=emb.standard,
                heads=emb.heads,
                schema=schema,
            )

    def head_stats(self) -> dict[str, Any]:
        """The running head sums of every chunk this worker embedded."""
        return self.stats.to_json()


class _RecordedEmbedder(HeadEmbedder):
    """Stands for the workers' embedder on the driver: it has their `info()` but never embeds."""

    def __init__(self, info: dict[str, Any]) -> None:
        self._info = info
        self.name, self.dim = info["model"], info["dim"]
        self.n_heads, self.head_dim = info["n_heads"], info["head_dim"]

    def embed_batch(self, texts: list[str]) -> Embeddings:
        raise RuntimeError("in a Ray job the workers embed, not the driver")

    def info(self) -> dict[str, Any]:
        return self._info


def index_with_ray(
    index_path: str | Path,
    paths: Sequence[str | Path],
    address: str | None = None,
    num_workers: int = 2,
    model: str | None = None,
    layer: int | None = None,
    make_embedder: EmbedderFactory | None = None,
    batch_size: int = 256,
    cpus_per_worker: float = 1.0,
    gpus_per_worker: float | None = None,
    storage_options: dict[str, str] | None = None,
    fields: dict[str, str] | None = None,
    **embedder_options: Any,
) -> RayIndexReport:
    """Index files and folders into the index at `index_path` (a folder or s3://...) on a Ray cluster.

    `address`: the cluster (`ray://host:10001`, `auto`); None starts a local one (or uses the one this
    process is connected to). `make_embedder`: a picklable function building the embedder on each worker;
    by default a TransformerEmbedder of `model`/`layer` (or of what the existing index records) with
    `embedder_options` (device, dtype, pooling, ...). `gpus_per_worker`: None gives each worker one GPU
    when the cluster has GPUs. `fields`: text_field / id_field / title_field for JSON records.
    Same semantics as `Index.add_paths`: unchanged documents are skipped, changed ones replaced.
    """
    ray = _import_ray()
    if num_workers <= 0 or batch_size <= 0:
        raise ValueError("num_workers and batch_size must be positive")
    uri = str(index_path)
    files = list_files(paths)
    make = make_embedder or _transformer_factory(uri, model, layer, storage_options, embedder_options)
    started = not ray.is_initialized()
    if started and address:
        ray.init(address=address)
    elif started:
        ray.init(include_dashboard=False, log_to_driver=False)
    workers: list[Any] = []
    try:
        gpus = gpus_per_worker if gpus_per_worker is not None else float(ray.cluster_resources().get("GPU", 0) >= 1)
        groups = split_by_size(files, num_workers)
        actor = ray.remote(EmbedWorker).options(num_cpus=cpus_per_worker, num_gpus=gpus)
        workers = [actor.remote(make) for _ in groups]
        info = ray.get(workers[0].info.remote())
        store = Index.open(uri, embedder=_RecordedEmbedder(info), storage_options=storage_options).store
        chunking = store.manifest["settings"]["chunk_chars"], store.manifest["settings"]["overlap"]
        found = ray.get([w.load.remote(g, *chunking, fields or {}) for w, g in zip(workers, groups)])
        report, todo = _plan(store, found)
        expected = {f"{doc_id}#{i}" for docs in todo for doc_id, n in docs for i in range(n)}
        with store.writing():
            if report.updated:
                store.delete(f"doc_id IN ({quote(report.updated)})")
            before = HeadStats.from_json(store.stats.to_json())
            streams = [
                w.embed.options(num_returns="streaming").remote([d for d, _ in docs], batch_size)
                for w, docs in zip(workers, todo)
            ]
            written: list[str] = []
            for table in _stream(ray, streams):
                store.add(table)
                written.extend(table["id"].to_pylist())
            sums = [HeadStats.from_json(s) for s in ray.get([w.head_stats.remote() for w in workers])]
            _check_complete(expected, written, before, store.stats, sums)
        report.chunks = len(written)
        report.workers = [
            {"worker": i, "files": len(g), "chunks": s.count} for i, (g, s) in enumerate(zip(groups, sums))
        ]
        return report
    finally:
        for w in workers:
            ray.kill(w)
        if started:
            ray.shutdown()


def list_files(paths: Sequence[str | Path]) -> list[tuple[str, bool]]:
    """(file, named explicitly) for every input file; folders are walked like `read_paths` does."""
    out: list[tuple[str, bool]] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.exists():
            raise IngestError(f"no such file or folder: {raw}")
        if path.is_file():
            out.append((str(path), True))
        else:
            out.extend((str(f), False) for f in sorted(walk_files(path)))
    if not out:
        raise ValueError("no files to index")
    return out


def split_by_size(files: list[tuple[str, bool]], n_groups: int) -> list[list[tuple[str, bool]]]:
    """At most n_groups non-empty groups of about equal total size (largest file to the lightest group)."""
    groups: list[list[tuple[str, bool]]] = [[] for _ in range(min(n_groups, len(files)))]
    load = np.zeros(len(groups))
    for item in sorted(files, key=lambda f: -Path(f[0]).stat().st_size):
        lightest = int(load.argmin())
        groups[lightest].append(item)
        load[lightest] += Path(item[0]).stat().st_size + 1
    return groups


def _plan(
    store: Store, found: list[tuple[list[tuple[str, str, int]], list[Skipped]]]
) -> tuple[RayIndexReport, list[list[tuple[str, int]]]]:
    """The report and, per worker, the (doc id, chunk count) to embed: new and changed documents."""
    ids = [doc_id for docs, _ in found for doc_id, _, _ in docs]
    if len(set(ids)) < len(ids):
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"duplicate document ids in one batch: {', '.join(dupes[:5])}")
    existing = store.doc_hashes(ids)
    report = RayIndexReport(skipped=[s for _, skipped in found for s in skipped])
    todo = []
    for docs, _ in found:
        mine = []
        for doc_id, digest, n_chunks in docs:
            if existing.get(doc_id) == digest:
                report.unchanged.append(doc_id)
                continue
            (report.updated if doc_id in existing else report.added).append(doc_id)
            mine.append((doc_id, n_chunks))
        todo.append(mine)
    return report, todo


def _stream(ray: Any, streams: list[Any]) -> Iterator[pa.Table]:
    """Tables from several streaming generators, in the order they become ready."""
    pending = list(streams)
    while pending:
        ready, _ = ray.wait(pending, num_returns=1)
        try:
            yield ray.get(next(ready[0]))
        except StopIteration:
            pending.remove(ready[0])


def _check_complete(
    expected: set[str], written: list[str], before: HeadStats, after: HeadStats, worker_sums: list[HeadStats]
) -> None:
    """No chunk lost or written twice, and the workers' head sums equal what the store folded in."""
    if len(written) != len(set(written)) or set(written) != expected:
        twice = len(written) - len(set(written))
        raise RuntimeError(
            f"distributed write incomplete: {len(expected - set(written))} chunk(s) lost, {twice} written twice"
        )
    count = sum(s.count for s in worker_sums)
    norm_sum = sum((s.norm_sum for s in worker_sums), np.zeros_like(before.norm_sum))
    unit_sum = sum((s.unit_sum for s in worker_sums), np.zeros_like(before.unit_sum))
    if (
        after.count - before.count != count
        or not np.allclose(after.norm_sum - before.norm_sum, norm_sum, rtol=1e-6, atol=1e-6)
        or not np.allclose(after.unit_sum - before.unit_sum, unit_sum, rtol=1e-6, atol=1e-6)
    ):
        raise RuntimeError("the workers' head statistics do not match the rows written")


def _transformer_factory(
    uri: str, model: str | None, layer: int | None, storage_options: dict[str, str] | None, options: dict[str, Any]
) -> EmbedderFactory:
    """A picklable TransformerEmbedder builder: the existing index's recorded settings, else the arguments."""
    if Store.exists(uri, storage_options):
        index = Index.open(uri, model=model, layer=layer, storage_options=storage_options, create=False)
        recorded = index.store.manifest["embedder"]
        kept = {k: recorded[k] for k in ("pooling", "max_length", "query_instruction", "document_instruction")
                if recorded.get(k) is not None}
        model, layer = recorded["model"], recorded.get("layer")
        options = kept | {k: v for k, v in options.items() if k in ("device", "dtype")}
    return functools.partial(_load_transformer, model, -1 if layer is None else layer, options)


def _load_transformer(model: str | None, layer: int, options: dict[str, Any]) -> HeadEmbedder:
    from mrag.embed.transformer import TransformerEmbedder

    return TransformerEmbedder(model, layer=layer, **options)


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ImportError("distributed indexing needs Ray: pip install 'ray[default]'") from None
    return ray
