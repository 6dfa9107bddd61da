"""The `mrag` command: a thin click layer over the library. JSON by default, `--plain` for people
(`mrag.cli_common.output_options`)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import click

from mrag import settings
from mrag.cli_common import CONTEXT, db_option, emit, model_option, output_options, user_errors
from mrag.settings import ANN_THRESHOLD, DEFAULT_EF, DEFAULT_NPROBES
from mrag.settings import DEFAULT_INDEX as DEFAULT_ANN_INDEX
from mrag.settings import INDEX_TYPES as ANN_INDEX_TYPES


@click.group(context_settings=CONTEXT)
@click.version_option(package_name="mrag")
def cli() -> None:
    """Multi-Head RAG: retrieval for questions that need several different documents.

    \b
    mrag demo                                   # see it work on the bundled corpus
    mrag index docs/ --db idx                   # index your files
    mrag search "roman roads and bees" --db idx --explain
    """


def ray_cluster_address(value: str) -> bool:
    """Whether --ray's value reads as a cluster's address: auto, a URL (ray://host:10001), host:port."""
    return value == "auto" or "://" in value or re.fullmatch(r"[\w.\-\[\]:]+:\d+", value) is not None


@cli.command(context_settings=CONTEXT)
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
              help="Also delete the documents of files under PATHS that no longer exist or are now empty.")
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
          ray_address: str | None, workers: int, prune: bool, plain: bool) -> None:
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
        report = sync.index_files(idx, paths, docs, skipped, show_progress=sys.stderr.isatty(), prune=prune)
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
            click.echo(f"skipped {s.source}: {s.reason}")
        if dropped:
            click.echo(f"dropped the spaces {', '.join(dropped)}")
        if drop_ann:
            dropped = summary["ann_dropped"]
            click.echo(f"dropped the {dropped['index_type']} ANN indexes" if dropped else "no ANN indexes to drop")
    else:
        emit(summary)


@cli.command(context_settings=CONTEXT)
@click.argument("query")
@db_option
@model_option
@click.option("-k", type=click.IntRange(min=1), default=5, show_default=True, help="Number of results.")
@click.option("--strategy", "-s", default=None,
              help=f"One of: {', '.join(settings.strategy_names())} (default: the index's, see mrag tune; else "
                   f"{settings.DEFAULT_STRATEGY}).")
@click.option("-c", "depth", type=click.IntRange(min=1), default=None, help="Per-space depth (default max(k, 32)).")
@click.option("--explain", is_flag=True, help="Show which spaces voted for each hit.")
@click.option("--spaces", "selection", default=None,
              help="Comma-separated voters to keep: standard, heads, head:I, split, bm25 (full text), "
                   "or a space label.")
@click.option("--exact/--ann", "exact", default=None,
              help="Exact search in memory, or the ANN indexes (default: ANN when the index has them).")
@click.option("--nprobes", type=click.IntRange(min=1), default=None,
              help="IVF partitions (HNSW: ef) per ANN search (default: the index's).")
@output_options()
@user_errors
def search(query: str, db: str, model: str | None, k: int, strategy: str | None, depth: int | None, explain: bool,
           selection: str | None, exact: bool | None, nprobes: int | None, plain: bool) -> None:
    """Search DB; prints one JSON object per hit.

    \b
        mrag search "How did Roman aqueducts work, and why do bees fan their hives?" --db idx -k 4
    """
    from mrag.index import Index
    from mrag.retrieve import fulltext

    if strategy is not None and settings.parse_strategy(strategy).expand == "fusion":
        raise click.UsageError(f"strategy {strategy!r} fuses sub-queries an LLM writes: use `mrag ask` (or the "
                               "server's /search with \"subqueries\")")
    chosen = settings.names(selection) if selection is not None else None
    index = Index.open(db, model=model, create=False)
    fulltext.searching_once(index.store)
    hits = index.search(query, k=k, strategy=strategy, c=depth, spaces=chosen, exact=exact, nprobes=nprobes)
    for rank, hit in enumerate(hits, 1):
        if plain:
            click.echo(f"{rank}. [{hit.score:.4f}] {hit.title or hit.doc_id}  ({hit.id})")
            click.echo("   " + hit.text[:200].replace("\n", " "))
            if explain:
                click.echo("   votes: " + ", ".join(f"{v['space']}@{v['rank']}={v['weight']:.3g}" for v in hit.votes))
        else:
            emit(hit.to_dict(explain=explain))


@cli.command(context_settings=CONTEXT)
@db_option
@output_options()
@user_errors
def heads(db: str, plain: bool) -> None:
    """Head scales of DB (mean norm x mean pairwise cosine distance).

    \b
        mrag heads --db idx
    """
    from mrag.index import Index

    scales = Index.open(db, create=False).head_scales()
    if plain:
        for s in scales:
            click.echo(f"head {s['head']:3d}  {s['scale']:.4f}")
    else:
        emit(scales)


@cli.command(context_settings=CONTEXT)
@db_option
@output_options()
@user_errors
def info(db: str, plain: bool) -> None:
    """What DB holds: counts, model, layer, pooling, heads, settings.

    \b
        mrag info --db idx
    """
    from mrag.index import Index

    facts = Index.open(db, create=False).info()
    if plain:
        for name, value in _lines(facts):
            click.echo(f"{name}: {value}")
    else:
        click.echo(json.dumps(facts, ensure_ascii=False))


def _lines(facts: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """Nested facts as (dotted name, value) lines for people: {"ann": {"rows": 5}, "spaces": []} ->
    [("ann.rows", "5"), ("spaces", "none")]; a list is its items, comma-separated."""
    found: list[tuple[str, str]] = []
    for key, value in facts.items():
        if isinstance(value, dict) and value:
            found += _lines(value, f"{prefix}{key}.")
        elif isinstance(value, list | dict):
            items = [json.dumps(v, ensure_ascii=False) if isinstance(v, dict | list) else str(v) for v in value]
            found.append((prefix + key, ", ".join(items) or "none"))
        else:
            found.append((prefix + key, "none" if value is None else str(value)))
    return found


@cli.command(context_settings=CONTEXT)
@click.argument("ids", nargs=-1, required=True)
@db_option
@output_options()
@user_errors
def delete(ids: tuple[str, ...], db: str, plain: bool) -> None:
    """Delete documents or chunks by id (all must exist, else nothing is deleted).

    \b
        mrag delete /home/me/notes/old.md --db idx
    """
    from mrag.index import Index

    try:
        deleted = Index.open(db, create=False).delete(list(ids))
    except ValueError as e:
        from mrag.ingest import SUFFIXES

        # a relative path of a file, or of one deleted since: a file's document id is its absolute path
        relative = [i for i in ids if not Path(i).is_absolute() and (Path(i).is_file() or
                                                                      Path(i).suffix.lower() in SUFFIXES)]
        if relative and str(e).startswith("unknown id"):
            raise click.ClickException(f"{e} (a file's document id is its absolute path: mrag delete "
                                       f"{Path(relative[0]).resolve()}; `mrag index FOLDER --prune` deletes the "
                                       "documents of deleted files)") from e
        raise
    if plain:
        click.echo(f"deleted {deleted} chunks")
    else:
        emit({"deleted_chunks": deleted})


@cli.command(context_settings=CONTEXT)
@db_option
@click.option("--keep-versions", type=click.FloatRange(min=0), default=None,
              help="Keep old versions younger than this many seconds (default: only the committed one).")
@output_options()
@user_errors
def optimize(db: str, keep_versions: float | None, plain: bool) -> None:
    """Compact DB's small fragments and prune old versions; safe beside searches and other writers.

    Writes do it by themselves every 32 commits; run it after many small writes, or from cron.

    \b
        mrag optimize --db idx
    """
    from mrag.index import Index

    report = Index.open(db, create=False).optimize(keep_versions)
    if plain:
        sizes = f": {report['bytes_before']:,} -> {report['bytes_after']:,} bytes" if report["bytes_after"] else ""
        click.echo(f"optimized, committed version {report['version']}{sizes}")
    else:
        emit(report)


@cli.command(context_settings=CONTEXT)
@db_option
@output_options()
@user_errors
def verify(db: str, plain: bool) -> None:
    """Check DB: unique chunk ids, and head-scale sums equal to a recomputation from the rows.

    Exits 1 when either fails.

    \b
        mrag verify --db idx
    """
    from mrag.index import Index

    report = Index.open(db, create=False).verify()
    if plain:
        click.echo(f"{report['chunks']} chunks, {report['duplicate_ids']} duplicate ids, "
                   f"head-scale sums drift {report['sums_drift']:.2g}, {report['partial_documents']} documents "
                   "missing deleted chunks")
    else:
        emit(report)
    if report["duplicate_ids"] or report["sums_drift"] > 1e-6:
        raise click.ClickException(f"{db} fails the check: {report}")


@cli.command(context_settings=CONTEXT)
@click.option("--db", envvar="MRAG_DEMO_DB", default=None, help="Where to build the demo index (default: temporary).")
@click.option("-k", type=click.IntRange(min=1), default=4, show_default=True, help="Results per strategy.")
@click.option("--strategy", "-s", default=settings.DEFAULT_STRATEGY, show_default=True, help="Compared with standard.")
@output_options(plain=True)
@user_errors
def demo(db: str | None, k: int, strategy: str, plain: bool) -> None:
    """Index the bundled sample corpus and compare standard RAG with MRAG on multi-aspect questions.

    \b
        mrag demo
    """
    from mrag.demo import run_demo

    run_demo(db, k=k, strategy=strategy, as_json=not plain, echo=click.echo)


@cli.command("eval", context_settings=CONTEXT)
@click.option("--corpus", required=True, type=click.Path(exists=True),
              help="Articles JSON(.bz2), topic folder/tarball, or BEIR folder.")
@click.option("--queries", type=click.Path(exists=True, dir_okay=False), default=None, help="Queries file.")
@model_option
@click.option("--layer", type=int, default=-1, show_default=True, help="Layer whose heads vote.")
@click.option("--pooling", type=click.Choice(["mean", "cls", "last"]), default=None, help="Token pooling of the heads.")
@click.option("--strategies", default=None, help="Comma-separated (default: all without an LLM, plus fusion).")
@click.option("-c", "depth", type=click.IntRange(min=1), default=settings.DEFAULT_C, show_default=True,
              help="Per-space depth.")
@click.option("--chunk-chars", type=click.IntRange(min=0), default=0,
              help="Chunk documents (default 0: whole documents, as the paper).")
@click.option("--cache", envvar="MRAG_CACHE", default=None, help="Embedding cache folder (default ~/.cache/mrag/eval).")
@click.option("--query-instruction", default="", help="Prefix for queries.")
@click.option("--device", default="auto", show_default=True)
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default="float32", show_default=True)
@click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Write records, table, plots here.")
@click.option("--space", "spaces", multiple=True, metavar="[LABEL=]FUNCTION[:key=value,...]",
              help="Add an embedding space (repeatable); select voters per strategy as STRATEGY@heads+standard+LABEL.")
@output_options(plain=True)
@user_errors
def eval_(corpus: str, queries: str | None, model: str | None, layer: int, pooling: str | None, strategies: str | None,
          depth: int, chunk_chars: int, cache: str | None, query_instruction: str, device: str, dtype: str,
          out_dir: str | None, spaces: tuple[str, ...], plain: bool) -> None:
    """Evaluate retrieval strategies on a multi-aspect benchmark (the MRAG paper's format or BEIR).

    Embeds the corpus once (cached), then scores every strategy at every k from 1 to 32.

    \b
        mrag eval --corpus wikipedia_articles_v1.json.bz2 --queries wikipedia_queries_v1.json.bz2 -o results/
    """
    from mrag.evaluate.run import run_eval

    names = settings.names(strategies) if strategies else None
    result = run_eval(
        corpus, queries, model=model, layer=layer, pooling=pooling, strategies=names, c=depth,
        chunk_chars=chunk_chars, cache=cache, query_instruction=query_instruction, device=device, dtype=dtype,
        out_dir=out_dir, show_progress=sys.stderr.isatty(), spaces=spaces,
    )
    if not plain:
        emit({"summary": result["summary"], "single_aspect": result["single_aspect"], "skipped": result["skipped"],
              "files": result["files"]})
    else:
        click.echo(result["table"])
        for line in result["skipped"]:
            click.echo(f"skipped {line}", err=True)


def main() -> None:
    cli()


from mrag.cli_bench import bench, tune  # noqa: E402
from mrag.cli_generate import ask, serve  # noqa: E402

cli.add_command(ask)
cli.add_command(serve)
cli.add_command(bench)
cli.add_command(tune)
