"""The HTTP API: `create_app(Settings(db=...))` gives a FastAPI app (OpenAPI docs at /docs).

Reads (search, ask, heads, info) are open; writes (/documents) need `Authorization: Bearer <token>`
when a token is set, checked before the body is read (401 without it, 403 with a wrong one).
Bodies over `max_request_bytes` get 413. The index opens in the lifespan, not at import, and is searched
once there (`warm`), so the first request does not load what searches keep in memory. Reads are plain
functions run in a thread pool, writes run on threads of their own (at most `WRITERS` at once): the store
shows readers only committed writes, writers embed side by side and commit in turn under the index's write
lock, and the embedder (a torch model) runs one batch at a time, in the order asked for (`TurnLock`).
Errors become JSON responses in `mrag.server_errors`.
"""

from __future__ import annotations

import collections.abc
import json
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from importlib.metadata import version
from typing import Annotated, Any, TypeVar

from fastapi import Depends, FastAPI, HTTPException, Query, Request, Security
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import HTTPBearer

from mrag.embed.base import Embeddings, HeadEmbedder, Kind
from mrag.errors import Unwritable
from mrag.generate.backends import make_generator
from mrag.generate.base import Generator
from mrag.generate.prompt import DEFAULT_MAX_CONTEXT_CHARS
from mrag.generate.thinking import AnswerStream
from mrag.locking import is_local
from mrag.retrieve import filter_sql
from mrag.retrieve import strategies as retrieve
from mrag.server_bodies import AskRequest, DeleteRequest, DocumentsRequest, Hit, SearchRequest, SearchResponse
from mrag.server_errors import add_error_handlers, for_client, one_line
from mrag.server_guard import Guard

log = logging.getLogger(__name__)


@dataclass
class Settings:
    db: str
    token: str | None = None  # None: writes are open
    max_request_bytes: int = 10 * 1024 * 1024
    max_query_chars: int = 10_000  # a query or question, each sub-query: its sentences are searched one by one
    generator: str = "local"  # backend for /ask and fusion strategies
    gen_model: str | None = None
    model: str | None = None  # embedding model: checked against the index, or used by `create`
    create: bool = False  # create an empty index at db if there is none
    max_context_chars: int = DEFAULT_MAX_CONTEXT_CHARS
    embedder: HeadEmbedder | None = None  # a ready embedder instead of loading `model`
    llm: Generator | None = None  # a ready generator instead of building `generator`
    warm: bool = True  # search once at start-up (`warm`), so the first request does not load the matrix
    warm_timeout_s: float = 120.0  # the most the start-up waits for that search


T = TypeVar("T")
WRITERS = 4  # writes run at once; the others wait without a thread (`create_app.writing`)


class TurnLock:
    """A lock taken in the order it was asked for: a write's batches and the queries asked meanwhile take turns
    (a plain lock let the thread that released it take it straight back)."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._next = self._serving = 0  # tickets given, and the one whose turn it is
        self._gone: set[int] = set()  # tickets whose thread stopped waiting (an exception): their turn is skipped

    @contextmanager
    def turn(self) -> Iterator[None]:
        with self._changed:
            ticket, self._next = self._next, self._next + 1
            try:
                self._changed.wait_for(lambda: self._serving == ticket)
            except BaseException:
                self._gone.add(ticket)
                self._advance()  # in case its turn came meanwhile
                raise
        try:
            yield
        finally:
            with self._changed:
                self._gone.add(ticket)
                self._advance()

    def _advance(self) -> None:
        """Move the turn past the tickets that are done or gone (under `_changed`)."""
        while self._serving in self._gone:
            self._gone.discard(self._serving)
            self._serving += 1
        self._changed.notify_all()


class LockedEmbedder(HeadEmbedder):
    """Another embedder, called by one thread at a time (torch modules with hooks are not thread-safe), a
    batch at a time: a search asked for during a large write waits for one of its batches, not all of them."""

    def __init__(self, inner: HeadEmbedder) -> None:
        self.inner = inner
        self.lock = TurnLock()
        self.name, self.dim, self.n_heads, self.head_dim = inner.name, inner.dim, inner.n_heads, inner.head_dim
        self.query_instruction, self.document_instruction = inner.query_instruction, inner.document_instruction
        self.device = getattr(inner, "device", None)  # where the exact scan runs too (`device_scan.scan_device`)
        self.max_length = getattr(inner, "max_length", None)  # what a write's warnings name

    def embed_batch(self, texts: list[str]) -> Embeddings:
        with self.lock.turn():
            return self.inner.embed_batch(texts)

    def embed(self, texts: Sequence[str], kind: Kind = "document", batch_size: int = 32,
              show_progress: bool = False) -> Embeddings:
        if type(self.inner).embed is HeadEmbedder.embed:  # batches through `embed_batch`: one turn each
            return super().embed(texts, kind=kind, batch_size=batch_size, show_progress=show_progress)
        with self.lock.turn():  # an embedder of its own way of batching: one turn for all
            return self.inner.embed(texts, kind=kind, batch_size=batch_size, show_progress=show_progress)

    def info(self) -> dict[str, Any]:
        return self.inner.info()

    def unread(self, texts: Sequence[str]) -> tuple[int, int]:  # the tokenizer: one thread at a time too
        with self.lock.turn():
            return self.inner.unread(texts)


class State:
    """What the endpoints share: the index and the generator (its weights loaded on first use)."""

    def __init__(self, settings: Settings) -> None:
        from mrag.index import Index

        self.settings = settings
        if settings.embedder is not None:
            self.index = Index.open(settings.db, embedder=LockedEmbedder(settings.embedder), create=settings.create)
        else:
            opened = Index.open(settings.db, model=settings.model, create=settings.create)
            embedder = LockedEmbedder(opened.embedder)  # loads the model now, not in the first request
            self.index = Index(opened.store, lambda: embedder)
        # made now (its weights load at the first answer): a bad setting stops the start-up, not each /ask
        self._llm = settings.llm or make_generator(settings.generator, settings.gen_model)
        self.warming = warm(self.index, settings.warm_timeout_s) if settings.warm else None

    def llm(self) -> Generator:
        return self._llm


def warm(index: Any, timeout_s: float) -> threading.Thread:
    """One search of two sentences with the index's default strategy, so that no request pays for what
    searches keep in memory: on the exact path the matrix, its bf16 copies where the CPU has bf16 kernels
    (a first request took 6.9 s at 1M chunks without it, `benchmarks/results/warm.md`) and the in-memory
    full-text index (23 s to build at 1M), else LanceDB's full-text index; the model's first pass. It runs
    on a thread of its own, waited for at most `timeout_s` (an external space's service that does not
    answer would hold the start-up forever); past that, or on a failure, a warning is logged and the
    server starts: requests then report their own errors. -> the thread (the app's
    shutdown waits for it: a process that exits while it reads LanceDB may abort)."""
    def search() -> None:
        from mrag.generate.fusion import is_fusion

        try:
            strategy = index.default_strategy
            parts = [["warm up"]] if is_fusion(strategy) else None  # given sub-queries: no LLM call
            index.search_many(["Warm up. Warm up the index."], k=1, strategy=strategy, subqueries=parts)
        except Exception as e:  # noqa: BLE001 - the server still starts; each request reports its own error
            log.warning("mrag: the warm-up search failed: %s", one_line(e), exc_info=True)

    thread = threading.Thread(target=search, name="mrag-warm-up", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        log.warning("mrag: the warm-up search is still running after %s s; the server starts", timeout_s)
    return thread


def no_query(request: Request) -> None:
    """Routes whose options are in the body (or the path) refuse query parameters, as `extra="forbid"`
    refuses unknown body fields: `DELETE /documents/x?dryrun=1` must not delete."""
    if request.query_params:
        raise HTTPException(422, detail=f"unknown query parameter(s): {', '.join(sorted(request.query_params))}")


def once(request: Request) -> None:
    """A GET's options given once each (`subqueries` and `spaces` may repeat): `where` twice kept the last,
    dropping a filter without a word."""
    keys = [key for key, _ in request.query_params.multi_items()]
    twice = sorted({key for key in keys if keys.count(key) > 1} - {"subqueries", "spaces"})
    if twice:
        raise HTTPException(422, detail=f"query parameter(s) given more than once: {', '.join(twice)}")


# --- the app ------------------------------------------------------------------------------------

def create_app(settings: Settings) -> FastAPI:
    if settings.max_request_bytes <= 0:
        raise ValueError(f"max_request_bytes must be positive, got {settings.max_request_bytes}")
    if settings.max_query_chars <= 0:
        raise ValueError(f"max_query_chars must be positive, got {settings.max_query_chars}")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        import anyio
        from starlette.concurrency import run_in_threadpool

        app.state.mrag = await run_in_threadpool(State, settings)
        app.state.writers = anyio.CapacityLimiter(WRITERS)
        yield
        if app.state.mrag.warming is not None:  # still warming up: exit after it, not in the middle of a read
            await run_in_threadpool(app.state.mrag.warming.join, settings.warm_timeout_s)

    app = FastAPI(title="mrag", version=version("mrag"), lifespan=lifespan,
                  description="Multi-Head RAG over a LanceDB index: search, answers with citations, documents.")
    app.add_middleware(Guard, token=settings.token, max_bytes=settings.max_request_bytes)
    writes = [Security(HTTPBearer(auto_error=False, description="Needed for writes when the server has a token.")),
              Depends(no_query)]

    add_error_handlers(app)

    def state(request: Request) -> State:
        return request.app.state.mrag

    def check_length(st: State, texts: list[str]) -> None:
        """Refuse a query longer than the server takes (each of its sentences is embedded and searched)."""
        longest = max(texts, key=len)
        if len(longest) > st.settings.max_query_chars:
            raise ValueError(f"the query has {len(longest)} characters; this server takes at most "
                             f"{st.settings.max_query_chars} (mrag serve --max-query-chars)")

    def run_search(st: State, body: SearchRequest) -> SearchResponse:
        from mrag.generate.fusion import is_fusion, retrieve_for

        strategy = retrieve.check_strategy(body.strategy or st.index.default_strategy)
        check_length(st, [body.query, *(body.subqueries or [])])
        filter_sql.check_served(body.where)
        written = [q for q in body.subqueries or [] if q.strip()]  # blank ones are none: the LLM writes them
        llm = st.llm() if is_fusion(strategy) and not written else None
        hits, used = retrieve_for(st.index, body.query, body.k, strategy, llm, c=body.c,
                                  subqueries=body.subqueries, exact=body.exact, nprobes=body.nprobes,
                                  spaces=body.spaces, where=body.where)
        return SearchResponse(query=body.query, strategy=strategy, subqueries=used,
                              hits=[Hit(**h.to_dict(explain=body.explain)) for h in hits])

    @app.get("/search", response_model=SearchResponse, response_model_exclude_none=True, tags=["read"],
             dependencies=[Depends(once)])
    def search_get(request: Request, params: Annotated[SearchRequest, Query()]) -> SearchResponse:
        """The top k chunks for a query (`subqueries` may repeat)."""
        return run_search(state(request), params)

    @app.post("/search", response_model=SearchResponse, response_model_exclude_none=True, tags=["read"],
              dependencies=[Depends(no_query)])
    def search_post(request: Request, body: SearchRequest) -> SearchResponse:
        """The top k chunks for a query; each hit can carry the votes that put it there."""
        return run_search(state(request), body)

    def whole_answer(request: Request, prepared: Any, llm: Generator, max_tokens: int) -> Any:
        """An answer not streamed, generated piece by piece as a stream is: a client that leaves stops it (it ran
        on to max_tokens, and the local model's other answers waited behind it)."""
        import anyio.from_thread

        pieces: list[str] = []
        stream = prepared.stream(llm, max_tokens)
        try:
            for piece in stream:
                pieces.append(piece)
                if anyio.from_thread.run(request.is_disconnected):
                    return JSONResponse({"detail": "the client left: the answer was stopped"}, status_code=499)
        finally:
            getattr(stream, "close", lambda: None)()
        return prepared.answer("".join(pieces)).to_dict()

    @app.post("/ask", tags=["read"], responses={200: {"content": {"text/event-stream": {}}}},
              dependencies=[Depends(no_query)])
    def ask(request: Request, body: AskRequest) -> Any:
        """An answer citing the retrieved chunks as [1], [2]; `stream` sends server-sent events."""
        from mrag.generate.answer import prepare

        st = state(request)
        check_length(st, [body.question, *(body.subqueries or [])])
        filter_sql.check_served(body.where)
        llm = st.llm()
        prepared = prepare(st.index, body.question, k=body.k, strategy=body.strategy, generator=llm,
                           max_context_chars=body.max_context_chars or st.settings.max_context_chars,
                           subqueries=body.subqueries, where=body.where)
        if not body.stream:
            return whole_answer(request, prepared, llm, body.max_tokens)

        def events() -> collections.abc.Generator[str, None, None]:
            yield _sse("context", {"strategy": prepared.strategy, "subqueries": prepared.subqueries,
                                   "context": [c.to_dict() for c in prepared.context]})
            pieces: list[str] = []
            shown = AnswerStream()  # the tokens as `mrag ask` prints them: a reasoning model's thoughts left out
            stream = prepared.stream(llm, body.max_tokens)
            try:
                for piece in stream:
                    pieces.append(piece)
                    if text := shown.feed(piece):
                        yield _sse("token", {"text": text})
                answer = prepared.answer("".join(pieces))  # a model that only thought: an error event
                if text := shown.finish():
                    yield _sse("token", {"text": text})
            except (ValueError, OSError) as e:
                yield _sse("error", {"detail": for_client(e)})
                return
            except Exception as e:  # the stream ends with an error event, never cut off mid-way
                log.exception("POST /ask stream failed")
                yield _sse("error", {"detail": f"generation failed ({type(e).__name__}); see the server's log"})
                return
            finally:  # a client gone: the generation stops now, not when the collector finds it
                getattr(stream, "close", lambda: None)()
            yield _sse("answer", answer.to_dict())

        async def closing() -> AsyncIterator[str]:
            """`events` from a worker thread, closed when the client goes (Starlette leaves a sync iterator open)."""
            import anyio
            from starlette.concurrency import iterate_in_threadpool, run_in_threadpool

            made = events()
            try:
                async for event in iterate_in_threadpool(made):
                    yield event
            finally:
                with anyio.CancelScope(shield=True):  # cancelled by the client's leaving: close all the same
                    await run_in_threadpool(made.close)

        return StreamingResponse(closing(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    async def writing(request: Request, write: Callable[[], T]) -> T:
        """`write()` on a thread, at most `WRITERS` at once: a write may wait minutes for another process's lock
        (a long `mrag index`), and in the thread pool all reads share, 40 waiting writes held every search."""
        import anyio.to_thread

        return await anyio.to_thread.run_sync(write, limiter=request.app.state.writers)

    @app.post("/documents", tags=["write"], dependencies=writes)
    async def add_documents(request: Request, body: DocumentsRequest) -> dict[str, Any]:
        """Add or update documents (chunked and embedded); all of a request becomes visible at once."""
        st = state(request)
        docs = [d.model_dump() for d in body.documents]
        # writes embed side by side and commit in turn under the index's write lock, as separate processes do
        report = await writing(request, lambda: st.index.upsert(docs) if body.mode == "upsert" else st.index.add(docs))
        return report.to_dict() | {"ids": {"added": report.added, "updated": report.updated,
                                           "unchanged": report.unchanged}}

    def delete_ids(st: State, ids: list[str]) -> JSONResponse:
        try:
            n = st.index.delete(ids)
        except Unwritable:  # not that the ids are unknown: the index cannot be written (`unwritable`, 503)
            raise
        except ValueError as e:  # unknown ids: nothing was deleted
            return JSONResponse({"detail": one_line(e)}, status_code=404)
        return JSONResponse({"deleted_chunks": n})

    @app.delete("/documents/{doc_id:anyid}", tags=["write"], dependencies=writes)
    async def delete_document(request: Request, doc_id: str) -> JSONResponse:
        """Delete a document (all its chunks) or one chunk by id."""
        st = state(request)
        return await writing(request, lambda: delete_ids(st, [doc_id]))

    @app.post("/documents/delete", tags=["write"], dependencies=writes)
    async def delete_documents(request: Request, body: DeleteRequest) -> JSONResponse:
        """Delete documents or chunks by id; if any id is unknown nothing is deleted (404)."""
        st, ids = state(request), [str(i) for i in body.ids]  # a number as its text, as ids are written
        return await writing(request, lambda: delete_ids(st, ids))

    @app.get("/heads", tags=["read"])
    def heads(request: Request) -> list[dict[str, Any]]:
        """Head scales: mean norm x mean pairwise cosine distance per head, over the committed chunks."""
        return state(request).index.head_scales()

    @app.get("/info", tags=["read"])
    def info(request: Request) -> dict[str, Any]:
        """What the index holds: counts, model, layer, pooling, heads, settings."""
        st = state(request)
        return st.index.info() | {"generator": st.settings.generator, "auth": st.settings.token is not None}

    @app.get("/health", tags=["read"])
    def health(request: Request) -> dict[str, str]:
        """ok while the index can be read (on a local disk its latest commit is checked): else the error's status,
        as a search's."""
        store = state(request).index.store
        if is_local(store.uri):  # an object store's check is a listing, and one that fails takes its retries
            store.refresh(quick=True)
        return {"status": "ok"}

    return app


def _sse(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"
