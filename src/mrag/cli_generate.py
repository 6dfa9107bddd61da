"""`mrag ask` and `mrag serve`: answers with citations, and the HTTP API. Registered by mrag.cli."""

from __future__ import annotations

import sys

import click

from mrag import settings
from mrag.cli_common import (
    CONTEXT,
    db_option,
    emit,
    model_option,
    output_options,
    usage_strategy,
    user_errors,
    where_option,
)
from mrag.generate.backends import BACKENDS
from mrag.generate.base import DEFAULT_MAX_TOKENS
from mrag.generate.prompt import DEFAULT_MAX_CONTEXT_CHARS, header
from mrag.generate.thinking import AnswerStream

generator_option = click.option(
    "--generator", "-g", "backend", type=click.Choice(sorted(BACKENDS)), envvar="MRAG_GENERATOR", default="local",
    show_default=True, help="LLM backend (or MRAG_GENERATOR): local transformers, Ollama, or an OpenAI-compatible API.",
)
gen_model_option = click.option(
    "--gen-model", envvar="MRAG_GEN_MODEL", default=None,
    help="LLM name or path (or MRAG_GEN_MODEL); default: smollm2 (local), llama3.2 (ollama), gpt-4o-mini (openai).",
)


@click.command(context_settings=CONTEXT)
@click.argument("question")
@db_option
@model_option
@click.option("-k", type=click.IntRange(min=1), default=5, show_default=True, help="Chunks retrieved for the answer.")
@click.option("--strategy", "-s", default=None,
              help=f"One of: {', '.join(settings.strategy_names())} (default: the index's, see mrag tune; else "
                   f"{settings.DEFAULT_STRATEGY}). fusion/mrag-fusion let the LLM write sub-queries.")
@generator_option
@gen_model_option
@click.option("--max-context-chars", type=click.IntRange(min=1), default=DEFAULT_MAX_CONTEXT_CHARS, show_default=True,
              help="Budget for the sources in the prompt; the lowest-ranked chunks are dropped first.")
@click.option("--max-tokens", type=click.IntRange(min=1), default=DEFAULT_MAX_TOKENS, show_default=True,
              help="Longest answer.")
@click.option("--no-generate", is_flag=True, help="Print the numbered context that would be sent; load no LLM.")
@where_option
@output_options(plain=True)
@user_errors
def ask(question: str, db: str, model: str | None, k: int, strategy: str | None, backend: str, gen_model: str | None,
        max_context_chars: int, max_tokens: int, no_generate: bool, where: str | None, plain: bool) -> None:
    """Answer QUESTION from DB with numbered citations; the answer streams as it is written.

    \b
        mrag ask "How did Roman aqueducts work, and why do bees fan their hives?" --db idx
        mrag ask "..." --db idx --generator ollama --gen-model llama3.2 --strategy mrag-fusion
        mrag ask "..." --db idx --no-generate      # just the numbered sources

    Fusion strategies need the LLM to write sub-queries, so they refuse --no-generate. With --json,
    one object {answer, cited, context, strategy} once the answer is complete. Ollama's host comes from
    OLLAMA_HOST, an OpenAI-compatible server's from OPENAI_BASE_URL (key: OPENAI_API_KEY); each read
    from either waits at most MRAG_LLM_TIMEOUT seconds (default 300).
    """
    as_json = not plain
    from mrag.documents import check_utf8
    from mrag.generate import make_generator, prepare
    from mrag.generate.fusion import is_fusion
    from mrag.index import Index
    from mrag.retrieve import fulltext

    if not question.strip():
        raise ValueError("the question is empty")
    check_utf8(question, "the question")  # before a model loads
    if max_tokens <= 0:
        raise ValueError(f"--max-tokens must be positive, got {max_tokens}")
    if strategy is not None:
        usage_strategy(strategy)
    index = Index.open(db, model=model, create=False)
    fulltext.searching_once(index.store)
    strategy = strategy or index.default_strategy
    if no_generate and is_fusion(strategy):
        raise click.UsageError(f"strategy {strategy!r} needs the LLM to write sub-queries: drop --no-generate")
    generator = None if no_generate else make_generator(backend, gen_model)
    prepared = prepare(index, question, k=k, strategy=strategy, generator=generator,
                       max_context_chars=max_context_chars, where=where)
    if generator is None:
        if as_json:
            context = [c.to_dict() for c in prepared.context]
            emit({"context": context, "strategy": strategy, "messages": prepared.messages})
        else:
            click.echo(prepared.context_text().rstrip() or "(no sources found)")
        return
    if prepared.subqueries and not as_json:
        click.echo("sub-queries: " + " | ".join(prepared.subqueries), err=True)
    pieces: list[str] = []
    shown = AnswerStream()  # what is printed: the answer as it comes, a reasoning model's thoughts left out
    printed = False
    try:
        for piece in prepared.stream(generator, max_tokens):
            pieces.append(piece)
            if not as_json and (text := shown.feed(piece)):
                click.echo(text, nl=False)
                sys.stdout.flush()
                printed = True
        answer = prepared.answer("".join(pieces))
        if not as_json and (text := shown.finish()):
            click.echo(text, nl=False)
            printed = True
    except Exception:
        if printed:
            click.echo()  # the error on a line of its own, not run on from the answer cut short
        raise
    if as_json:
        emit(answer.to_dict())
        return
    if not answer.context:
        click.echo("\n\n(no sources found)")
        return
    click.echo("\n\nSources:")
    cited = {c.number for c in answer.cited}
    for c in answer.context:
        mark = "*" if c.number in cited else " "
        click.echo(mark + header(c).rstrip())  # as the context labels it
    if answer.context and not answer.cited:
        click.echo("(the answer cites none of the sources)")
    if answer.not_sources:
        numbers = ", ".join(f"[{n}]" for n in answer.not_sources)
        click.echo(f"(the answer cites {numbers}: {'not a source' if len(answer.not_sources) == 1 else 'no sources'})")


@click.command(context_settings=CONTEXT)
@db_option
@model_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--token", envvar="MRAG_TOKEN", default=None, help="Bearer token required for writes (or MRAG_TOKEN).")
@generator_option
@gen_model_option
@click.option("--max-request-bytes", type=click.IntRange(min=1), default=10 * 1024 * 1024, show_default=True,
              help="Larger request bodies are refused with 413.")
@click.option("--max-query-chars", type=click.IntRange(min=1), default=10_000, show_default=True,
              help="Longer queries and questions are refused with 400 (each sentence of one is searched).")
@click.option("--create", is_flag=True, help="Create an empty index at DB if there is none (with --model).")
@click.option("--warm/--no-warm", default=True, show_default=True,
              help="Search once before listening, so the first request does not load the index into memory.")
@user_errors
def serve(db: str, model: str | None, host: str, port: int, token: str | None, backend: str, gen_model: str | None,
          max_request_bytes: int, max_query_chars: int, create: bool, warm: bool) -> None:
    """Serve DB over HTTP: search, ask, add and delete documents (OpenAPI docs at /docs).

    \b
        MRAG_TOKEN=s3cret mrag serve --db idx --port 8000
        curl 'localhost:8000/search?query=roman+roads&k=3'

    Reads are open; writes need `Authorization: Bearer <token>` when a token is set.
    """
    import uvicorn

    from mrag.generate import make_generator
    from mrag.index import Index
    from mrag.server import Settings, create_app
    from mrag.store import Store, StoreError

    if max_request_bytes <= 0:
        raise ValueError(f"--max-request-bytes must be positive, got {max_request_bytes}")
    if not create and not Store.exists(db):
        raise StoreError(f"no mrag index at {db}: create one with `mrag index PATH --db {db}`, or pass --create")
    check_listen(host, port)  # before the model loads: a port in use was told only after it
    if not token and host not in ("127.0.0.1", "localhost", "::1"):
        click.echo(f"warning: serving {host} without a token: anyone who can reach it can change the index", err=True)
    # the index and its model checked here, so that a wrong one is told in a line, not in the server's start-up
    embedder = Index.open(db, model=model, create=create).embedder
    # the generator too (its weights load at the first answer): a bad setting (MRAG_LLM_TIMEOUT=5m) was told to
    # every client of /ask as their 400
    llm = make_generator(backend, gen_model)
    settings = Settings(db=db, token=token or None, max_request_bytes=max_request_bytes,
                        max_query_chars=max_query_chars, generator=backend, gen_model=gen_model, model=model,
                        create=create, warm=warm, embedder=embedder, llm=llm)
    app = create_app(settings)
    # uvicorn's start-up lines say where it listens ("Uvicorn running on ..."); no line per request
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=False)


def check_listen(host: str, port: int) -> None:
    """Refuse an address the server could not listen on (a port in use, a host no interface has): a socket
    bound there and closed again. Port 0 (any free one) is left to uvicorn."""
    import socket

    if port == 0:
        return
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET  # as uvicorn binds it
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: a port in TIME_WAIT is free
            probe.bind((host, port))
    except OSError as e:
        raise click.ClickException(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
