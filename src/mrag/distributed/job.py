"""The Ray ingestion job: `index_with_ray` runs the stages of `mrag.distributed.stages` with Ray Data
and commits once (the design: `mrag.distributed`)."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import re
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from mrag import sync
from mrag.distributed.stages import (
    STATS_COLUMN,
    EmbedChunks,
    EmbedderFactory,
    RayIndexReport,
    check_complete,
    chunk_rows,
    per_worker,
    plan,
    read_documents,
)
from mrag.documents import Document
from mrag.embed.base import Embeddings, HeadEmbedder
from mrag.index import Index, embedder_factory
from mrag.ingest import list_files
from mrag.retrieve import fulltext
from mrag.scales import HeadStats
from mrag.settings import AnnPolicy
from mrag.store import Store
from mrag.writing import STAGE_BYTES, chunk_settings, retriage


class RayJobError(RuntimeError):
    """A Ray task or actor of the job failed; the index is as it was before the job."""


class _RecordedEmbedder(HeadEmbedder):
    """Stands for the workers' embedder on the driver: it has their `info()` but never embeds."""

    def __init__(self, info: dict[str, Any]) -> None:
        self._info = info
        self.name, self.dim = info["model"], info["dim"]
        self.n_heads, self.head_dim = info["n_heads"], info["head_dim"]

    def embed_batch(self, texts: list[str]) -> Embeddings:
        raise RuntimeError("in a Ray job the workers embed, not the driver")

    def info(self) -> dict[str, Any]:
        return {k: v for k, v in self._info.items() if k != "probe"}

    def probe(self) -> dict[str, list[float]]:
        return dict(self._info["probe"])  # the workers' (`_embedder_info`)


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
    chunk_chars: int | None = None,
    overlap: int | None = None,
    show_progress: bool = False,
    ann_policy: AnnPolicy | None = None,
    **embedder_options: Any,
) -> RayIndexReport:
    """Index files and folders into the index at `index_path` (a folder or s3://...) on a Ray cluster.

    `address`: the cluster (`ray://host:10001`, `auto`); None starts a local one (or uses the one this
    process is connected to). `make_embedder`: a picklable function building the embedder on each worker;
    by default a TransformerEmbedder of `model`/`layer` (or of what the existing index records) with
    `embedder_options` (device, dtype, pooling, ...). `num_workers`: the embedding actors, `batch_size`
    chunks per embedding call; `gpus_per_worker`: None gives each worker one GPU when the cluster has
    GPUs (and `device` is not "cpu"), the pool shrinking to the GPUs there are. `fields`: text_field /
    id_field / title_field for JSON records. `chunk_chars` / `overlap`: for a new index. `show_progress`:
    Ray Data's progress bars and messages (otherwise silenced during the job). `ann_policy`: when
    the write (re)builds the ANN indexes, as every `Index` write does (default `AnnPolicy()`).
    Same semantics as `Index.add_paths` (without `prune`): unchanged documents are skipped, changed ones
    replaced, and the records a file read no longer holds deleted, in the job's one commit; an id indexed
    from another file is refused; files that another run indexed or pruned since this job read them, and
    that changed since, stay as committed and are listed as skipped (`mrag.sync`).
    """
    ray = _import_ray()
    if num_workers <= 0 or batch_size <= 0:
        raise ValueError("num_workers and batch_size must be positive")
    uri = str(index_path)
    existing = Store.open(uri, storage_options) if Store.exists(uri, storage_options) else None
    if existing is not None and existing.spaces:
        raise ValueError("this index has extra embedding spaces, which --ray does not embed: index without --ray")
    chunking = chunk_settings(uri, existing, chunk_chars, overlap)
    files = list_files(paths)
    if not files:
        return RayIndexReport()
    make = make_embedder or _transformer_factory(uri, model, layer, storage_options, embedder_options)
    started = not ray.is_initialized()
    if not started and address:
        warnings.warn(f"address={address!r} is not used: this process is already connected to a Ray cluster, which "
                      "runs the job (ray.shutdown() first to use another)", RuntimeWarning, stacklevel=2)
    if started:
        with warnings.catch_warnings(), _local_ray_quiet(not address):  # Ray forks + execs: no LanceDB code runs there
            warnings.filterwarnings("ignore", "lancedb fork support is experimental", RuntimeWarning)
            ray.init(address=address, **({} if address else {"include_dashboard": False, "log_to_driver": False,
                                                             "logging_level": logging.ERROR}))
    try:
        with _ray_data_quiet(ray, not show_progress):
            return _run_job(
                ray,
                uri,
                paths,
                files,
                existing,
                chunking,
                make,
                num_workers,
                batch_size,
                cpus_per_worker,
                _gpus(ray, gpus_per_worker, embedder_options),
                storage_options,
                fields or {},
                ann_policy or AnnPolicy(),
            )
    except Exception as e:
        if not type(e).__module__.startswith("ray."):
            raise
        raise RayJobError(f"the Ray job failed, nothing was written: {_worker_failure(e)}") from e
    finally:
        if started:
            ray.shutdown()


def _run_job(
    ray: Any,
    uri: str,
    paths: Sequence[str | Path],
    files: list[tuple[str, bool]],
    existing: Store | None,
    chunking: dict[str, int],
    make: EmbedderFactory,
    num_workers: int,
    batch_size: int,
    cpus: float,
    gpus: float,
    storage_options: dict[str, str] | None,
    fields: dict[str, str],
    ann_policy: AnnPolicy,
) -> RayIndexReport:
    # absolute, links not followed: the read stage names a link to nothing as such (the document's source is
    # resolved there)
    items = [{"path": str(Path(f).absolute()), "shown": f, "explicit": e, "order": i} for i, (f, e) in enumerate(files)]
    documents = (
        ray.data.from_items(items, override_num_blocks=min(len(items), 4 * num_workers))
        .flat_map(read_documents, fn_kwargs={**chunking, "fields": fields})
        .materialize()
    )
    columns = ["shown", "explicit", "order", "position", "problem", "doc_id", "source", "digest", "stamp", "n_chunks"]
    listing = sorted(documents.select_columns(columns).take_all(), key=lambda r: (r["order"], r["position"]))
    hashes = existing.doc_hashes([r["doc_id"] for r in listing if not r["problem"]]) if existing else {}
    report, todo = plan(listing, hashes)
    read = [Document(r["doc_id"], "", r["source"], stamp=tuple(r["stamp"]) or None)  # what `mrag.sync` asks
            for r in listing if not r["problem"]]
    if existing is not None:
        sync.refuse_taken(existing, read, report.skipped)
    changed: set[str] = set()  # files left as committed: another run wrote them since, and they changed
    if not todo:  # nothing new or changed: no model, and a commit only for records gone from their files
        if existing is not None:  # `delete_gone` looks first, and commits only where something is gone
            index = Index.open(uri, storage_options=storage_options, create=False)
            report.removed = sync.delete_gone(index, read, report.skipped, paths, False, changed)
        report.skipped += sync.changed_skips(changed)
        return report
    # the embedder's description, from a worker (the driver may have no GPU, nor the model's files)
    info = ray.get(ray.remote(_embedder_info).options(num_cpus=cpus, num_gpus=gpus).remote(make))
    pool = num_workers if gpus == 0 else min(num_workers, max(1, int(ray.cluster_resources().get("GPU", 0) // gpus)))
    opened = functools.partial(Index.open, uri, embedder=_RecordedEmbedder(info), storage_options=storage_options,
                               chunk_chars=chunking["chunk_chars"], overlap=chunking["overlap"])
    # an index there refuses another model's vectors before any is embedded
    checked = opened() if existing is not None else None
    # embedded before the write lock is taken (other writers go on meanwhile) and before a new index is made (a
    # failed job leaves none); Ray holds the rows, spilling them to disk past its memory
    embedded = _embedded(ray, documents, todo, make, pool, batch_size, cpus, gpus)
    index = checked or opened()
    index.ann_policy, store = ann_policy, index.store
    written: list[str] = []
    tags: list[dict[str, Any]] = []
    digests = {r["doc_id"]: r["digest"] for r in listing if not r["problem"]}
    planned = [(d, digests[d.id]) for d in read if d.id in todo]
    with store.writing():
        # under the lock, as `mrag index` does: files another run wrote (or pruned) since the plan, and that
        # changed since this job read them, stay as committed; the rest against what is committed now (the
        # old rows of changed ones deleted)
        wanted = retriage(store, planned, True, report, hashes, sync.leaving_out(read, changed))
        left_out = set(todo) - wanted  # embedded, not written
        todo = {doc_id: n for doc_id, n in todo.items() if doc_id in wanted}
        before = HeadStats.from_json(store.sums.heads.to_json())
        for table in _gathered(embedded, STAGE_BYTES):  # one fragment each
            tags += [json.loads(t) for t in table[STATS_COLUMN].drop_null().to_pylist()]
            rows = table.drop_columns([STATS_COLUMN]).cast(store.chunks.schema)
            if left_out:
                rows = rows.filter(pc.is_in(rows["doc_id"], value_set=pa.array(sorted(wanted), pa.string())))
            if rows.num_rows:
                store.add(rows)
                written.extend(rows["id"].to_pylist())
        expected = {f"{doc_id}#{i}" for doc_id, n in todo.items() for i in range(n)}
        # the workers' sums hold the rows left out too: then the chunk ids alone are checked
        check_complete(expected, written, before, store.sums.heads,
                       None if left_out else [HeadStats.from_json(t) for t in tags])
        report.removed = sync.settle(store, read, report.skipped, paths, False, changed)  # in this same commit
        fulltext.keep(store.chunks)  # the full-text index, in this same commit
        if "probe" not in store.manifest.embedder:  # an index made before probes: the workers' (`writing.write`)
            store.stage(embedder=store.manifest.embedder | {"probe": info["probe"]})
    report.skipped += sync.changed_skips(changed)
    report.chunks = len(written)
    report.workers = per_worker(tags)
    report.ann = index.maintain_ann() if written or report.removed else None
    return report


def _embedded(ray: Any, documents: Any, todo: dict[str, int], make: EmbedderFactory, pool: int, batch_size: int,
              cpus: float, gpus: float) -> Any:
    """The store's rows of the chunks of `todo`'s documents, embedded by a pool of actors: a materialized
    dataset."""
    blocks = max(1, -(-sum(todo.values()) // batch_size))  # ~batch_size chunks a block: work for every actor
    chunks = documents.flat_map(chunk_rows, fn_kwargs={"wanted": frozenset(todo)}).repartition(blocks).materialize()
    return chunks.map_batches(
        EmbedChunks,
        fn_constructor_args=(make,),
        batch_size=batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=pool, max_tasks_in_flight_per_actor=1),  # spread blocks
        num_cpus=cpus,
        num_gpus=gpus,
    ).materialize()


def _gathered(embedded: Any, most_bytes: int) -> Iterator[pa.Table]:
    """A dataset's batches joined into tables of about `most_bytes` (a batch per table made a Lance fragment
    each: 375 for 3,000 rows in batches of 8, every later search reading them all)."""
    staged: list[pa.Table] = []
    size = 0
    for table in embedded.iter_batches(batch_size=None, batch_format="pyarrow"):
        staged.append(table)
        size += table.nbytes
        if size >= most_bytes:
            yield pa.concat_tables(staged)
            staged, size = [], 0
    if staged:
        yield pa.concat_tables(staged)


def _gpus(ray: Any, gpus_per_worker: float | None, embedder_options: dict[str, Any]) -> float:
    """GPUs per worker: as asked, else one where the cluster has GPUs and the device is not the CPU."""
    if gpus_per_worker is not None:
        there = ray.cluster_resources().get("GPU", 0)
        if gpus_per_worker > there:  # Ray would wait for them forever
            raise ValueError(f"gpus_per_worker={gpus_per_worker}, but the Ray cluster has {there:g} GPUs")
        return gpus_per_worker
    if embedder_options.get("device") == "cpu":
        return 0.0
    return float(ray.cluster_resources().get("GPU", 0) >= 1)


@contextlib.contextmanager
def _local_ray_quiet(quiet: bool) -> Iterator[None]:
    """A local Ray instance started for one job says nothing of itself: its start-up lines ("Started a local Ray
    instance", the token notice) and its core's log lines on stderr (an "E ... core_worker" line on a job that
    went well read as a failure). A cluster's (`address`) are left as they are."""
    logger = logging.getLogger("ray")
    saved = logger.level
    if quiet:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(saved)


@contextlib.contextmanager
def _ray_data_quiet(ray: Any, quiet: bool) -> Iterator[None]:
    """Ray Data's progress bars and console messages off for the job (restored after) when `quiet`."""
    context = ray.data.DataContext.get_current()
    logger = logging.getLogger("ray.data")  # configured by Ray Data when imported: set after that
    saved = context.enable_progress_bars, context.print_on_execution_start, logger.level
    if quiet:
        context.enable_progress_bars = context.print_on_execution_start = False
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            if quiet:  # a job of few files, fewer blocks than actors: Ray Data's hint is none of the user's
                warnings.filterwarnings("ignore", "The minimum number of concurrent actors", UserWarning)
            yield
    finally:
        context.enable_progress_bars, context.print_on_execution_start = saved[:2]
        logger.setLevel(saved[2])


def _worker_failure(error: BaseException) -> str:
    """'Type: message' of the exception behind Ray's wrappers: the innermost one of the chain with a message
    of its own, else (a worker's exception may reach the driver only as text, in a traceback Ray prints)
    the last 'Type: message' line of the chain's texts, else the innermost type."""
    chain = _causes(error)
    for cause in reversed(chain):
        if not type(cause).__module__.startswith("ray.") and str(cause):
            return f"{type(cause).__name__}: {str(cause).splitlines()[0]}"  # Ray appends hints on retrying
    for cause in chain:
        raised = [line for line in RAISED.findall(str(cause)) if not line.startswith("ray.")]  # not Ray's wrappers
        if raised:
            return str(raised[-1])
    return type(chain[-1]).__name__


RAISED = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?[A-Za-z_]\w*(?:Error|Exception|Exit|Interrupt|Warning): \S.*$", re.M)


def _causes(error: BaseException) -> list[BaseException]:
    """The exception and those behind it, outermost first (`RayTaskError.cause`, `__cause__`)."""
    chain = [error]
    while True:
        inner = getattr(error, "cause", None)
        inner = inner if isinstance(inner, BaseException) else error.__cause__
        if inner is None or any(inner is seen for seen in chain):
            return chain
        chain.append(inner)
        error = inner


def _embedder_info(make: EmbedderFactory) -> dict[str, Any]:
    embedder = make()
    return embedder.recorded()


def _transformer_factory(
    uri: str, model: str | None, layer: int | None, storage_options: dict[str, str] | None, options: dict[str, Any]
) -> EmbedderFactory:
    """The workers' TransformerEmbedder builder: the one the existing index records (other settings are
    refused, as by `Index.open`), else one of the arguments."""
    if Store.exists(uri, storage_options):
        index = Index.open(uri, model=model, layer=layer, storage_options=storage_options, create=False, **options)
        return index._make_embedder  # the recorded model, layer and settings; picklable
    return embedder_factory(model, layer, **options)


def _import_ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError:
        raise ImportError("distributed indexing needs Ray Data: pip install 'mrag[ray]'") from None
    return ray
