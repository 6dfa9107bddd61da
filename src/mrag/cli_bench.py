"""`mrag bench` and `mrag tune`: which strategy is best for my documents?"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click
from click.core import ParameterSource

from mrag import settings
from mrag.cli_common import (
    CONTEXT,
    FiniteFloat,
    db_option,
    emit,
    model_option,
    plain_option,
    user_errors,
)

if TYPE_CHECKING:
    import numpy as np


def parse_ns(value: str) -> list[int]:
    try:
        ns = [int(x) for x in value.split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter(f"expected sizes like 1,2,3, got {value!r}") from None
    if not ns or min(ns) < 1:
        raise click.BadParameter(f"sizes must be 1 or more, got {value!r}")
    return sorted(set(ns))


def lazy_embedder(model: str | None) -> Callable[[list[str]], np.ndarray]:
    """Standard document embeddings from the model, loaded on first use (only clusters and checks need it)."""
    loaded: list[Any] = []

    def embed(texts: list[str]) -> np.ndarray:
        if not loaded:
            from mrag.embed.transformer import TransformerEmbedder

            loaded.append(TransformerEmbedder(model))
        return loaded[0].embed(texts, kind="document").standard

    return embed


@click.command(context_settings=CONTEXT)
@click.argument("paths", nargs=-1, required=True)
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False),
              help="Benchmark folder to write (an unfinished one with the same settings is resumed).")
@click.option("--generator", "backend", type=click.Choice(["extractive", "local", "ollama", "openai"]),
              default="extractive", show_default=True, help="Who writes the queries (extractive: rules, no LLM).")
@click.option("--gen-model", envvar="MRAG_GEN_MODEL", default=None, help="LLM name or path for the LLM generators.")
@click.option("--n", "ns", default="1,2,3,4,6", show_default=True, help="Query sizes: documents each query needs.")
@click.option("--per-n", type=click.IntRange(min=1), default=25, show_default=True, help="Queries per size.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--group-by", default=None, help="Metadata field naming each document's group (default: sub-folders, "
                                                "else clusters of the embeddings).")
@model_option
@click.option("--max-quote", type=click.IntRange(min=1), default=8, show_default=True,
              help="Drop queries repeating this many consecutive words of a document.")
@click.option("--max-similarity", type=FiniteFloat(0, 1), default=0.95, show_default=True,
              help="Drop queries whose embedding is this close to a relevant document's (1: no check).")
@plain_option
@user_errors
def bench(paths: tuple[str, ...], out: str, backend: str, gen_model: str | None, ns: str, per_n: int, seed: int,
          group_by: str | None, model: str | None, max_quote: int, max_similarity: float, plain: bool) -> None:
    """Make a multi-aspect benchmark from your documents: queries that each need n documents from n groups.

    \b
        mrag bench docs/ -o my-bench                       # offline, by rule
        mrag bench docs/ -o my-bench --generator ollama --gen-model llama3.2
        mrag eval --corpus my-bench                        # every strategy on it

    Groups are the sub-folders of each folder given, a metadata field (--group-by), or clusters of
    the embeddings. The folder is a BEIR folder with each document's group; bench.json says how it was made.
    """
    from mrag.evaluate.bench import build
    from mrag.evaluate.querygen import Extractive, QueryWriter, Written
    from mrag.ingest import read_paths

    sizes = parse_ns(ns)
    writer: QueryWriter
    if backend == "extractive":
        if gen_model and click.get_current_context().get_parameter_source("gen_model") is ParameterSource.COMMANDLINE:
            click.echo(f"warning: --gen-model {gen_model} is for the LLM generators; the extractive one writes "
                       "queries by rule (add --generator local, ollama or openai)", err=True)
        docs, _ = read_paths(paths)
        writer = Extractive([d.text for d in docs])
    else:
        from mrag.generate import make_generator

        writer = Written(make_generator(backend, gen_model))
    info = build(paths, out, writer, embed=lazy_embedder(model), ns=sizes, per_n=per_n, seed=seed,
                 group_by=group_by, max_quote=max_quote, max_similarity=max_similarity,
                 show_progress=sys.stderr.isatty())
    if plain:
        click.echo(f"{info['queries']} queries kept, {info['dropped']} dropped {info['dropped_by_reason'] or ''}; "
                   f"{info['documents']} documents in {info['groups_found']} groups ({info['groups']}); "
                   f"written to {out}")
    else:
        emit(info)


@click.command(context_settings=CONTEXT)
@db_option
@click.option("--bench", "bench_dir", default=None, type=click.Path(exists=True, file_okay=False),
              help="A folder written by mrag bench (or a BEIR folder of indexed documents); not with --reset.")
@click.option("--strategies", default=None,
              help="Comma-separated candidates (default: every one without an LLM); the built-in default always "
                   "competes.")
@click.option("--dry-run", is_flag=True, help="Compare only; record nothing.")
@click.option("--reset", is_flag=True, help="Forget the recorded default (back to the built-in one).")
@plain_option
@user_errors
def tune(db: str, bench_dir: str | None, strategies: str | None, dry_run: bool, reset: bool, plain: bool) -> None:
    """Find the best strategy for this index on a benchmark, and make it the index's default.

    \b
        mrag tune --db idx --bench my-bench
        mrag info --db idx                 # "default_strategy", with the numbers it won by

    search, ask and serve use it when no --strategy is given.
    """
    from mrag.evaluate.tune import candidates, summary_lines
    from mrag.evaluate.tune import tune as run_tune
    from mrag.index import Index

    if bench_dir is None and not reset:
        raise click.UsageError("Missing option '--bench' (or --reset, to forget the recorded default).")
    if reset and (bench_dir is not None or strategies is not None or dry_run):
        raise click.UsageError("--reset forgets the recorded default: it takes no --bench, --strategies or --dry-run")
    names = settings.names(strategies) if strategies else None
    try:
        candidates(names)  # an unknown strategy, or a fusion one: a usage error, before the index opens
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    index = Index.open(db, create=False)
    if reset:
        index.set_default_strategy(None)
        if plain:
            click.echo(f"default strategy: {index.default_strategy} (built-in)")
        else:
            emit({"default_strategy": index.default_strategy, "source": "built-in"})
        return
    assert bench_dir is not None
    record = run_tune(index, bench_dir, names, save=not dry_run, show_progress=sys.stderr.isatty())
    if plain:
        click.echo("\n".join(summary_lines(record)))
        verb = "would become" if dry_run else "is now"
        click.echo(f"\n{record['strategy']} {verb} the default ({why_chosen(record)}).")
        if record.get("note"):  # why strategies are missing from the table (an extractive benchmark)
            click.echo(f"note: {record['note']}")
    else:
        emit(record | {"saved": not dry_run})


def why_chosen(record: dict[str, Any]) -> str:
    """Why `mrag tune` chose its strategy, in words: kept as the built-in default, or its score against the
    runner-up (or the strategies tied with it) and against the built-in default (the first candidate)."""
    if record["default_kept"]:
        return f"kept: {record['default_kept']}"
    table, chosen = record["candidates"], record["strategy"]
    tied = [s for s in table if s != chosen and table[s]["score"] == record["score"]]
    built_in = next(iter(table))
    first = "the built-in default first" if chosen == built_in else "first in the order asked"
    why = [f"score {record['score']:.3f}", f"tied with {', '.join(tied)}, {first}" if tied
           else f"ahead of the next by {record['margin']:.3f}"]
    if built_in != chosen:
        why.append(f"{record['score'] - table[built_in]['score']:.3f} above the built-in {built_in}")
    return "; ".join(why)
