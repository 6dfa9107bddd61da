"""Indexing on a Ray cluster with Ray Data: files read and embedded on workers (GPUs when the cluster has
them), rows committed once by the driver.

1. Read: a Ray Data `flat_map` over the input files reads and chunks each file on the cluster into one
   row per document (id, content digest, chunk texts); the result is materialised, so every file is
   read once and later stages see one snapshot.
2. Plan: the driver drops the documents already indexed with the same content, exactly as
   `Index.add_paths` does, and lists the chunk ids it expects. Nothing is written, and no model is
   loaded, before the input is known to be good.
3. Embed: the documents to embed become one row per chunk, repartitioned into blocks of about
   `batch_size` chunks so that every worker gets a share even of one large file; `map_batches` runs
   `EmbedChunks` on a pool of `num_workers` actors (`ActorPoolStrategy`), each loading the embedder
   once, and every output table is tagged with the running head sums (`HeadStats`) of its rows.
4. Write: the driver streams the tables into one `Store.writing()`, so readers see nothing until the
   manifest commits, and any failure (a worker's error, a bad file) rolls the whole job back. Before
   the commit it checks that the chunk ids written are exactly those expected (none lost, none twice)
   and that the workers' head sums add up to what the store folded in.

Left out: workers writing Lance fragments straight to object storage (every row passes through the
driver; docs/scaling.md describes that next step) and indexes with extra embedding spaces (refused).
"""

from mrag.distributed.job import RayJobError, index_with_ray
from mrag.distributed.stages import EmbedChunks, RayIndexReport, chunk_rows, plan, read_documents
from mrag.ingest import list_files

__all__ = [
    "EmbedChunks",
    "RayIndexReport",
    "RayJobError",
    "chunk_rows",
    "index_with_ray",
    "list_files",
    "plan",
    "read_documents",
]
