"""The `mrag` command: a thin click layer over the library. JSON by default, `--plain` for people
(`mrag.cli_common.output_options`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from mrag import settings
from mrag.cli_common import (
    CONTEXT,
    FiniteFloat,
    db_option,
    emit,
    json_line,
    model_option,
    one_line,
    output_options,
    refuse_fusion,
    usage_strategy,
    user_errors,
    where_option,
)


@click.group(context_settings=CONTEXT)
@click.version_option(package_name="mrag")
def cli() -> None:
    """Multi-Head RAG: retrieval for questions that need several different documents.

    \b
    mrag demo                                   # see it work on the bundled corpus
    mrag index docs/ --db idx                   # index your files
    mrag search "roman roads and bees" --db idx --explain
    """


@cli.command(context_settings=CONTEXT)
@click.argument("query")
@db_option
@model_option
@click.option("-k", type=click.IntRange(min=1), default=5, show_default=True, help="Number of results.")
@click.option("--strategy", "-s", default=None,
              help=f"One of: {', '.join(n for n in settings.strategy_names() if n not in settings.FUSION)} "
                   f"(default: the index's, see mrag tune; else {settings.DEFAULT_STRATEGY}; the fusion strategies "
                   "need an LLM: mrag ask).")
@click.option("-c", "depth", type=click.IntRange(min=1), default=None, help="Per-space depth (default max(k, 32)).")
@click.option("--explain", is_flag=True, help="Show which spaces voted for each hit.")
@click.option("--spaces", "selection", default=None,
              help="Comma-separated voters to keep: standard, heads, head:I, split, bm25 (full text), "
                   "or a space label.")
@click.option("--exact/--ann", "exact", default=None,
              help="Exact search in memory, or the ANN indexes (default: ANN when the index has them).")
@click.option("--nprobes", type=click.IntRange(min=1), default=None,
              help="IVF partitions (HNSW: ef) per ANN search (default: the index's).")
@where_option
@output_options()
@user_errors
def search(query: str, db: str, model: str | None, k: int, strategy: str | None, depth: int | None, explain: bool,
           selection: str | None, exact: bool | None, nprobes: int | None, where: str | None, plain: bool) -> None:
    """Search DB; prints one JSON object per hit.

    \b
        mrag search "How did Roman aqueducts work, and why do bees fan their hives?" --db idx -k 4
        mrag search "bees" --db idx --where "source LIKE '%/notes/%' AND position < 3"
    """
    from mrag.index import Index
    from mrag.retrieve import fulltext

    refuse_fusion(strategy)
    chosen = settings.names(selection) if selection is not None else None
    index = Index.open(db, model=model, create=False)
    fulltext.searching_once(index.store)
    hits = index.search(query, k=k, strategy=strategy, c=depth, spaces=chosen, exact=exact, nprobes=nprobes,
                        where=where)
    for rank, hit in enumerate(hits, 1):
        if plain:
            click.echo(f"{rank}. [{hit.score:.4f}] {one_line(hit.title or hit.doc_id)}  ({one_line(hit.id)})")
            click.echo("   " + one_line(hit.text[:200]))
            if explain:
                click.echo("   votes: " + ", ".join(f"{v['space']}@{v['rank']}={v['weight']:.3g}" for v in hit.votes))
        else:
            emit(hit.to_dict(explain=explain))
    if plain and not hits:
        click.echo("no hits" + (" (does the filter keep any chunk? a file's source is its absolute path)"
                                if where is not None else ""))


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
        click.echo(json_line(facts))


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
        click.echo(f"deleted {deleted} chunk{'' if deleted == 1 else 's'}")
    else:
        emit({"deleted_chunks": deleted})


@cli.command(context_settings=CONTEXT)
@db_option
@click.option("--keep-versions", type=FiniteFloat(min=0), default=None,
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

    refuse_fusion(strategy)  # and an unknown one: before the sample corpus is indexed
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

    Embeds the corpus once (cached), then scores every strategy at every k from 1 to 32 (to n + 10 past n = 22).

    \b
        mrag eval --corpus wikipedia_articles_v1.json.bz2 --queries wikipedia_queries_v1.json.bz2 -o results/
    """
    from mrag.evaluate.run import run_eval

    names = settings.names(strategies) if strategies else None
    for name in names or []:
        usage_strategy(name)  # an unknown one: a usage error, before anything is embedded
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
from mrag.cli_index import index  # noqa: E402

cli.add_command(index)
cli.add_command(ask)
cli.add_command(serve)
cli.add_command(bench)
cli.add_command(tune)
