"""`mrag index`: files and folders into an index, incrementally, and its spaces and ANN indexes kept up."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import click

from mrag import settings
from mrag.cli_common import CONTEXT, db_option, emit, model_option, one_line, output_options, user_errors
from mrag.settings import ANN_THRESHOLD, COMMIT_EVERY, DEFAULT_EF, DEFAULT_NPROBES
from mrag.settings import DEFAULT_INDEX as DEFAULT_ANN_INDEX
from mrag.settings import INDEX_TYPES as ANN_INDEX_TYPES


def ray_cluster_address(value: str) -> bool:
    """Whether --ray's value reads as a cluster's address: auto, a URL (ray://host:10001), host:port."""
    return value == "auto" or "://" in value or re.fullmatch(r"[\w.\-\[\]:]+:\d+", value) is not None


@click.command(context_settings=CONTEXT)
@click.argument("paths", nargs=-1)
@db_option
@model_option
@click.option("--layer", type=int, default=None, help="Layer whose heads are kept (default: last; -1 = last).")
@click.option("--pooling", type=click.Choice(["mean", "cls", "last"]), default=None, help="Token pooling of the heads.")
@click.option("--chunk-chars", type=click.IntRange(min=1), default=None,
              help="Maximum chunk size in characters (default 1000).")
@click.option("--overlap", type=click.IntRange(min=0), default=None,
              help="Sentences shared by neighbouring chunks (default 1).")
@click.option("--text-field", default="text", show_default=True, help="Text field of .json/.jsonl records.")
@click.option("--id-field", default="id", show_default=True, help="Id field of .json/.jsonl records.")
@click.option("--prune", is_flag=True,
              help="Also delete the documents of files under PATHS that no longer exist or are now empty (a PATH "
                   "that is an empty folder, a share not mounted, prunes nothing).")
@click.option("--commit-every", type=click.IntRange(min=0), default=COMMIT_EVERY, show_default=True, metavar="CHUNKS",
              help="Commit a long run in parts of about this many chunks embedded, or a quarter of the rows "
                   "indexed before, where more (a run stopped midway keeps them; the next skips them); 0: one commit.")
@click.option("--query-instruction", default="", help="Prefix for queries (new index).")
@click.option("--document-instruction", default="", help="Prefix for documents (new index).")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, mps or auto.")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default="float32", show_default=True,
              help="Weights dtype (bfloat16: faster on CPUs with bf16 kernels, AVX-512 and up; 6x slower "
                   "on an AVX2-only one).")
@click.option("--space", "spaces", multiple=True, metavar="[LABEL=]FUNCTION[:key=value,...]",
              help="Add an embedding space from LanceDB's registry, e.g. "
                   "'mpnet=sentence-transformers:name=/models/all-mpnet-base-v2' (repeatable; docs/spaces.md).")
@click.option("--drop-space", "drop_spaces", multiple=True, metavar="LABEL",
              help="Remove an embedding space from the index, its vectors and scale (repeatable; on its own).")
@click.option("--build-ann", is_flag=True, help="Build (or rebuild) the ANN indexes of every space now.")
@click.option("--drop-ann", is_flag=True,
              help="Drop the ANN indexes: searches scan exactly (below 1M chunks the faster path for queries of "
                   "several sentences); writes past --ann-threshold build them again.")
@click.option("--ann-index", type=click.Choice(list(ANN_INDEX_TYPES)), default=None,
              help="ANN index type for --build-ann and automatic builds: LanceDB's IVF_*, or HNSW (in-process "
                   f"faiss graphs; mrag[graph]) [default: the index's, else {DEFAULT_ANN_INDEX}].")
@click.option("--ann-nprobes", type=click.IntRange(min=1), default=None,
              help=f"IVF partitions (or HNSW's ef) each ANN search reads by default; more: slower, closer to "
                   f"exact [default: {DEFAULT_NPROBES}, HNSW {DEFAULT_EF}].")
@click.option("--ann-spaces", default=None, metavar="SPACE,...",
              help="HNSW: the spaces that get a graph (standard, heads, head:I, a label; default: every one); "
                   "the default strategy needs 'standard' alone, the others are scanned exactly.")
@click.option("--ann-threshold", type=click.IntRange(min=0), default=ANN_THRESHOLD, show_default=True,
              help="Build the ANN indexes automatically from this many chunks (0: never); indexes that exist "
                   "are rebuilt as rows grow, at any size (0: not rebuilt either).")
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]",
              help="Embed on a Ray cluster (ray://host:10001, auto); without ADDRESS a local one.")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True, help="Ray workers (with --ray).")
@output_options()
@user_errors
def index(paths: tuple[str, ...], db: str, model: str | None, layer: int | None, pooling: str | None,
          chunk_chars: int | None, overlap: int | None, text_field: str, id_field: str, query_instruction: str,
          document_instruction: str, device: str, dtype: str, spaces: tuple[str, ...], drop_spaces: tuple[str, ...],
          build_ann: bool, drop_ann: bool,
          ann_index: str | None, ann_nprobes: int | None, ann_spaces: str | None, ann_threshold: int,
          ray_address: str | None, workers: int, prune: bool, commit_every: int, plain: bool) -> None:
    """Index files and folders (in folders: .txt .md .rst .html .json .jsonl .pdf) into DB.

    A file of another kind named on its own is read as text. Changed files are re-embedded, unchanged
    ones skipped; files in folders that cannot be read are skipped and listed. A file's records are its
    documents: records gone from a file are deleted (--prune: also the documents of deleted or emptied
    files). Past --ann-threshold chunks (or with
    --build-ann) every space gets an ANN index. Example:

    \b
        mrag index notes/ papers/intro.md --db idx
        mrag index --build-ann --db idx          # ANN indexes for an existing index
        mrag index --drop-ann --db idx           # and back to exact search
    """
    from mrag import sync
    from mrag.index import AddReport, Index
    from mrag.ingest import read_paths
    from mrag.settings import AnnPolicy

    if ray_address not in (None, "local") and Path(ray_address).exists() and not ray_cluster_address(ray_address):
        raise click.UsageError(f"--ray took {ray_address!r}, a file or folder, as the cluster's address: put "
                               "--ray after the paths (or give the address: --ray auto, --ray ray://host:10001)")
    if not paths and not build_ann and not drop_ann and not drop_spaces:
        raise click.UsageError("give files or folders to index (or --build-ann / --drop-ann / --drop-space for an "
                               "existing index)")
    if build_ann and drop_ann:
        raise click.UsageError("--build-ann and --drop-ann contradict each other: give one")
    options: dict[str, Any] = {"device": device, "dtype": dtype}
    if pooling:
        options["pooling"] = pooling
    if query_instruction or document_instruction:
        options |= {"query_instruction": query_instruction, "document_instruction": document_instruction}
    report: AddReport
    if ann_spaces is not None and ann_index != "HNSW":
        raise click.UsageError("--ann-spaces chooses the spaces of HNSW graphs: give it with --ann-index HNSW")
    chosen = tuple(settings.names(ann_spaces)) if ann_spaces is not None else None
    policy = AnnPolicy(ann_threshold, ann_index, ann_nprobes, chosen)
    dropped = None
    if drop_spaces:  # a write of its own: a later step that failed would leave it done
        if paths or spaces or ray_address is not None:
            raise click.UsageError("--drop-space runs on its own (mrag index --drop-space LABEL --db DB), "
                                   "without files, --space or --ray")
        dropped = Index.open(db, create=False).drop_spaces(drop_spaces)
    if ray_address is not None:
        from mrag.distributed import RayJobError, index_with_ray
        from mrag.store import Store

        if not paths:
            raise click.UsageError("--ray needs files or folders to index")
        if prune:
            raise click.UsageError("--ray does not prune: index without --ray to --prune")
        if spaces:
            raise click.UsageError("--ray does not embed extra spaces (--space): index without --ray")
        progress = sys.stderr.isatty()
        try:
            report = index_with_ray(db, paths, address=None if ray_address == "local" else ray_address,
                                    num_workers=workers, model=model, layer=layer, chunk_chars=chunk_chars,
                                    overlap=overlap, show_progress=progress, ann_policy=policy,
                                    fields={"text_field": text_field, "id_field": id_field}, **options)
        except (RayJobError, ImportError) as e:
            raise click.ClickException(str(e).splitlines()[0]) from e
        idx = Index.open(db, create=False) if Store.exists(db) else None  # nothing to index: no new index
        if idx is not None:
            idx.ann_policy = policy
    else:
        docs, skipped = read_paths(sync.to_read(paths, prune), text_field=text_field, id_field=id_field,
                                   empty_ok=prune) if paths else ([], [])
        idx = Index.open(db, model=model, layer=layer, chunk_chars=chunk_chars, overlap=overlap, spaces=spaces,
                         create=bool(paths), **options)
        idx.ann_policy = policy  # the library's policy: upsert (re)builds the ANN indexes past the threshold
        report = sync.index_files(idx, paths, docs, skipped, show_progress=sys.stderr.isatty(), prune=prune,
                                  commit_every=commit_every)
    if build_ann and not report.ann and idx is not None:
        report.ann = idx.maintain_ann(force=True)
    summary = report.to_dict()
    if dropped is not None:
        summary["spaces_dropped"] = dropped
    if drop_ann:
        summary["ann_dropped"] = idx.drop_ann() if idx is not None else None
    if plain:
        click.echo(f"added {summary['added']}, updated {summary['updated']}, unchanged {summary['unchanged']}, "
                   f"removed {summary['removed']} documents ({summary['chunks']} chunks written)")
        for s in report.skipped:
            click.echo(one_line(f"skipped {s.source}: {s.reason}"))
        for warning in report.warnings:
            click.echo(one_line(f"warning: {warning}"), err=True)
        if dropped:
            click.echo(f"dropped the spaces {', '.join(dropped)}")
        if drop_ann:
            dropped = summary["ann_dropped"]
            click.echo(f"dropped the {dropped['index_type']} ANN indexes" if dropped else "no ANN indexes to drop")
    else:
        emit(summary)
