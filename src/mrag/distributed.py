"""Indexing on a Ray cluster with Ray Data: files read and embedded on workers (GPUs when the cluster has
them), rows committed once by the driver.

1. Read: a Ray Data `flat_map` over the input files reads and chunks each file on the cluster into one
   row per document (id, content digest, chunk texts); the result is materialised, so every file is
   read once and later stages see one snapshot.
2. Plan: the driver drops the documents already indexed with the same content, exactly as
   `Index.add_paths` does, and lists the chunk ids it expects.
3. Embed: `map_batches` runs `EmbedDocuments` on a pool of `num_workers` actors (`ActorPoolStrategy`),
   each loading the embedder once; it chunks the documents to embed and yields store rows in tables
   of `batch_size` chunks, each table tagged with the running head sums (`HeadStats`) of its rows.
4. Write: the driver streams the tables into one `Store.writing()`, so readers see nothing until the
   manifest commits, and any failure (a worker's error, a bad file) rolls the whole job back. Before
   the commit it checks that the chunk ids written are exactly those expected (none lost, none twice)
   and that the workers' head sums add up to what the store folded in.

Left out: workers writing Lance fragments straight to object storage (every row passes through the
driver; docs/scaling.md describes that next step) and indexes with extra embedding spaces (refused).
"""

from __future__ import annotations

import functools
import json
import os
import socket
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from mrag.chunk import chunk_text
from mrag.embed.base import Embeddings, HeadEmbedder
from mrag.index import AddReport, Index
from mrag.ingest import IngestError, Skipped, document_digest, read_file, walk_files
from mrag.scales import HeadStats, split_unit
from mrag.store import Store, build_rows, chunk_schema, quote

EmbedderFactory = Callable[[], HeadEmbedder]
# Ray starts its processes with fork + exec, so no LanceDB code runs in a forked child
warnings.filterwarnings("ignore", message="lancedb fork support is experimental", category=RuntimeWarning)
STATS_COLUMN = "_embedded"  # JSON of one output table's worker and head sums, on its first row only


class RayJobError(RuntimeError):
    """A Ray task or actor of the job failed; the index is as it was before the job."""


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

    A file that cannot be read gives one row with `problem` set and no document; the driver raises
    for a file named explicitly and skips one found in a folder."""
    name = item["path"]
    try:
        docs = read_file(Path(name), **fields)
    except IngestError as e:
        reason = str(e).removeprefix(f"{name}: ").removeprefix(f"{Path(name).resolve()}: ")
        return [_document_row(name, item["explicit"], problem=reason)]
    return [
        _document_row(
            name,
            item["explicit"],
            doc_id=doc.id,
            source=doc.source,
            title=doc.title,
            metadata=json.dumps(doc.metadata, ensure_ascii=False, default=str),
            digest=document_digest(doc),
            chunks=chunk_text(doc.text, chunk_chars, overlap),
        )
        for doc in docs
    ]


def _document_row(path: str, explicit: bool, **values: Any) -> dict[str, Any]:
    """Every column filled (no nulls), so all blocks of the read stage share one schema."""
    row: dict[str, Any] = {
        "path": path,
        "explicit": explicit,
        "problem": "",
        "doc_id": "",
        "source": "",
        "title": "",
        "metadata": "{}",
        "digest": "",
        "chunks": [],
    } | values
    row["n_chunks"] = len(row["chunks"])
    return row


class EmbedDocuments:
    """The embed stage (a Ray Data `map_batches` callable class): one instance per actor of the pool,
    loading the embedder once. Document rows in, store rows out, `batch_size` chunks per table."""

    def __init__(self, make_embedder: EmbedderFactory, wanted: frozenset[str], batch_size: int) -> None:
        self.embedder = make_embedder()
        self.wanted, self.batch_size = wanted, batch_size
        self.worker = f"{socket.gethostname()}:{os.getpid()}"

    def __call__(self, docs: pa.Table) -> Iterator[pa.Table]:
        chunks = [
            (d, i, text) for d in docs.to_pylist() if d["doc_id"] in self.wanted for i, text in enumerate(d["chunks"])
        ]
        for start in range(0, len(chunks), self.batch_size):
            yield self.rows(chunks[start : start + self.batch_size])

    def rows(self, batch: list[tuple[dict[str, Any], int, str]]) -> pa.Table:
        e = self.embedder
        emb: Embeddings = e.embed([text for _, _, text in batch], kind="document")
        stats = HeadStats(e.n_heads, e.head_dim)
        stats.add(*split_unit(emb.heads))  # (B, H) norms, (B, H, d) units: what the store will fold in
        table = build_rows(
            ids=[f"{d['doc_id']}#{i}" for d, i, _ in batch],
            doc_ids=[d["doc_id"] for d, _, _ in batch],
            sources=[d["source"] for d, _, _ in batch],
            titles=[d["title"] for d, _, _ in batch],
            positions=[i for _, i, _ in batch],
            texts=[text for _, _, text in batch],
            metadata=[json.loads(d["metadata"]) for d, _, _ in batch],
            doc_hashes=[d["digest"] for d, _, _ in batch],
            standard=emb.standard,
            heads=emb.heads,
            schema=chunk_schema(e.dim, e.n_heads, e.head_dim),
        )
        tag = json.dumps({"worker": self.worker, **stats.to_json()})
        # on the first row only: however Ray Data re-blocks the tables, each tag reaches the driver once
        return table.append_column(STATS_COLUMN, pa.array([tag] + [None] * (len(batch) - 1), pa.string()))


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
    show_progress: bool = False,
    **embedder_options: Any,
) -> RayIndexReport:
    """Index files and folders into the index at `index_path` (a folder or s3://...) on a Ray cluster.

    `address`: the cluster (`ray://host:10001`, `auto`); None starts a local one (or uses the one this
    process is connected to). `make_embedder`: a picklable function building the embedder on each worker;
    by default a TransformerEmbedder of `model`/`layer` (or of what the existing index records) with
    `embedder_options` (device, dtype, pooling, ...). `num_workers`: the embedding actors;
    `gpus_per_worker`: None gives each one GPU when the cluster has GPUs. `fields`: text_field /
    id_field / title_field for JSON records. `show_progress`: Ray Data's progress bars.
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
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = show_progress
        gpus = gpus_per_worker if gpus_per_worker is not None else float(ray.cluster_resources().get("GPU", 0) >= 1)
        # the embedder's description, from a worker (the driver may have no GPU, nor the model's files)
        info = ray.get(ray.remote(_embedder_info).options(num_cpus=cpus_per_worker, num_gpus=gpus).remote(make))
        store = Index.open(uri, embedder=_RecordedEmbedder(info), storage_options=storage_options).store
        if store.spaces:
            raise ValueError("this index has extra embedding spaces, which --ray does not embed: index without --ray")
        settings = store.manifest["settings"]
        documents = (
            ray.data.from_items(
                [{"path": f, "explicit": e} for f, e in files], override_num_blocks=min(len(files), 4 * num_workers)
            )
            .flat_map(
                read_documents,
                fn_kwargs={
                    "chunk_chars": settings["chunk_chars"],
                    "overlap": settings["overlap"],
                    "fields": fields or {},
                },
            )
            .materialize()
        )
        listing = documents.select_columns(["path", "explicit", "problem", "doc_id", "digest", "n_chunks"]).take_all()
        report, todo = _plan(store, listing)
        expected = {f"{doc_id}#{i}" for doc_id, n in todo.items() for i in range(n)}
        with store.writing():
            if report.updated:
                store.delete(f"doc_id IN ({quote(report.updated)})")
            before = HeadStats.from_json(store.stats.to_json())
            written: list[str] = []
            tags: list[dict[str, Any]] = []
            if todo:
                embedded = documents.map_batches(
                    EmbedDocuments,
                    fn_constructor_args=(make, frozenset(todo), batch_size),
                    batch_size=None,  # a block of documents per call; the class yields batch_size-chunk tables
                    batch_format="pyarrow",
                    compute=ray.data.ActorPoolStrategy(size=min(num_workers, documents.num_blocks())),
                    num_cpus=cpus_per_worker,
                    num_gpus=gpus,
                )
                for table in embedded.iter_batches(batch_size=None, batch_format="pyarrow"):
                    tags += [json.loads(t) for t in table[STATS_COLUMN].drop_null().to_pylist()]
                    rows = table.drop_columns([STATS_COLUMN]).cast(store.chunks.schema)
                    store.add(rows)
                    written.extend(rows["id"].to_pylist())
            _check_complete(expected, written, before, store.stats, [HeadStats.from_json(t) for t in tags])
        report.chunks = len(written)
        report.workers = _per_worker(tags)
        return report
    except Exception as e:
        if not type(e).__module__.startswith("ray."):
            raise
        cause = _root_cause(e)  # Ray wraps a worker's exception, with its traceback, in its own
        message = str(cause).splitlines()[0] if str(cause) else ""  # Ray appends hints on retrying
        raise RayJobError(f"the Ray job failed, nothing was written: {type(cause).__name__}: {message}") from e
    finally:
        if started:
            ray.shutdown()


def _root_cause(error: BaseException) -> BaseException:
    """The innermost exception behind Ray's wrappers (`RayTaskError.cause`, `__cause__`)."""
    seen = {id(error)}
    while (inner := getattr(error, "cause", None) or error.__cause__) is not None and id(inner) not in seen:
        seen.add(id(inner))
        error = inner
    return error


def _embedder_info(make: EmbedderFactory) -> dict[str, Any]:
    return make().info()


def _per_worker(tags: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Chunks embedded by each worker process (host:pid), from the tables' tags."""
    counts: dict[str, int] = {}
    for t in tags:
        counts[t["worker"]] = counts.get(t["worker"], 0) + t["count"]
    return [{"worker": w, "chunks": n} for w, n in sorted(counts.items())]


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


def _plan(store: Store, listing: list[dict[str, Any]]) -> tuple[RayIndexReport, dict[str, int]]:
    """The report and the documents to embed (doc id -> chunk count): new and changed ones.
    An unreadable file named explicitly stops the job; one found in a folder is skipped."""
    report = RayIndexReport()
    for row in listing:
        if row["problem"] and row["explicit"]:
            raise IngestError(f"{row['path']}: {row['problem']}")
        if row["problem"]:
            report.skipped.append(Skipped(row["path"], row["problem"]))
    report.skipped.sort(key=lambda s: s.source)
    docs = [row for row in listing if not row["problem"]]
    ids = [row["doc_id"] for row in docs]
    if len(set(ids)) < len(ids):
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"duplicate document ids in one batch: {', '.join(dupes[:5])}")
    existing = store.doc_hashes(ids)
    todo = {}
    for row in sorted(docs, key=lambda r: r["doc_id"]):
        doc_id = row["doc_id"]
        if existing.get(doc_id) == row["digest"]:
            report.unchanged.append(doc_id)
            continue
        (report.updated if doc_id in existing else report.added).append(doc_id)
        todo[doc_id] = row["n_chunks"]
    return report, todo


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
        kept = {
            k: recorded[k]
            for k in ("pooling", "max_length", "query_instruction", "document_instruction")
            if recorded.get(k) is not None
        }
        model, layer = recorded["model"], recorded.get("layer")
        options = kept | {k: v for k, v in options.items() if k in ("device", "dtype")}
    return functools.partial(_load_transformer, model, -1 if layer is None else layer, options)


def _load_transformer(model: str | None, layer: int, options: dict[str, Any]) -> HeadEmbedder:
    from mrag.embed.transformer import TransformerEmbedder

    return TransformerEmbedder(model, layer=layer, **options)


def _import_ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError:
        raise ImportError("distributed indexing needs Ray Data: pip install 'ray[data]'") from None
    return ray
