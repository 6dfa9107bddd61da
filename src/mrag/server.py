"""The HTTP API: `create_app(Settings(db=...))` gives a FastAPI app (OpenAPI docs at /docs).

Reads (search, ask, heads, info) are open; writes (/documents) need `Authorization: Bearer <token>`
when a token is set, checked before the body is read (401 without it, 403 with a wrong one).
Bodies over `max_request_bytes` get 413. The index opens in the lifespan, not at import, and is searched
once there (`warm`), so the first request does not load what searches keep in memory. Endpoints are
plain functions run in a thread pool: the store shows readers only committed writes, writers take
turns under one lock, and the embedder (a torch model) is called by one thread at a time.
"""

from __future__ import annotations

import collections.abc
import json
import logging
import threading
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib.metadata import version
from typing import Annotated, Any, Literal

import pydantic.dataclasses
from fastapi import Depends, FastAPI, HTTPException, Query, Request, Security
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import HTTPBearer
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictFloat, StrictInt, StrictStr, field_validator

from mrag.embed.base import Embeddings, HeadEmbedder, Kind
from mrag.generate.backends import make_generator
from mrag.generate.base import DEFAULT_MAX_TOKENS, Generator
from mrag.generate.prompt import DEFAULT_MAX_CONTEXT_CHARS
from mrag.retrieve import strategies as retrieve
from mrag.retrieve import types
from mrag.server_guard import Guard
from mrag.settings import names

MAX_K = 1000
log = logging.getLogger(__name__)


@dataclass
class Settings:
    db: str
    token: str | None = None  # None: writes are open
    max_request_bytes: int = 10 * 1024 * 1024
    generator: str = "local"  # backend for /ask and fusion strategies
    gen_model: str | None = None
    model: str | None = None  # embedding model: checked against the index, or used by `create`
    create: bool = False  # create an empty index at db if there is none
    max_context_chars: int = DEFAULT_MAX_CONTEXT_CHARS
    embedder: HeadEmbedder | None = None  # a ready embedder instead of loading `model`
    llm: Generator | None = None  # a ready generator instead of building `generator`
    warm: bool = True  # search once at start-up (`warm`), so the first request does not load the matrix
    warm_timeout_s: float = 120.0  # the most the start-up waits for that search


class LockedEmbedder(HeadEmbedder):
    """Another embedder, called by one thread at a time (torch modules with hooks are not thread-safe)."""

    def __init__(self, inner: HeadEmbedder) -> None:
        self.inner = inner
        self.lock = threading.Lock()
        self.name, self.dim, self.n_heads, self.head_dim = inner.name, inner.dim, inner.n_heads, inner.head_dim
        self.query_instruction, self.document_instruction = inner.query_instruction, inner.document_instruction
        self.device = getattr(inner, "device", None)  # where the exact scan runs too (`device_scan.scan_device`)

    def embed_batch(self, texts: list[str]) -> Embeddings:
        with self.lock:
            return self.inner.embed_batch(texts)

    def embed(self, texts: Sequence[str], kind: Kind = "document", batch_size: int = 32,
              show_progress: bool = False) -> Embeddings:
        with self.lock:
            return self.inner.embed(texts, kind=kind, batch_size=batch_size, show_progress=show_progress)

    def info(self) -> dict[str, Any]:
        return self.inner.info()


class State:
    """What the endpoints share: the index, the write lock, the generator (built on first use)."""

    def __init__(self, settings: Settings) -> None:
        from mrag.index import Index

        self.settings = settings
        if settings.embedder is not None:
            self.index = Index.open(settings.db, embedder=LockedEmbedder(settings.embedder), create=settings.create)
        else:
            opened = Index.open(settings.db, model=settings.model, create=settings.create)
            embedder = LockedEmbedder(opened.embedder)  # loads the model now, not in the first request
            self.index = Index(opened.store, lambda: embedder)
        self.write_lock = threading.Lock()
        self._llm = settings.llm
        self._llm_lock = threading.Lock()
        self.warming = warm(self.index, settings.warm_timeout_s) if settings.warm else None

    def llm(self) -> Generator:
        with self._llm_lock:
            if self._llm is None:
                self._llm = make_generator(self.settings.generator, self.settings.gen_model)
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
            log.warning("mrag: the warm-up search failed: %s", _one_line(e), exc_info=True)

    thread = threading.Thread(target=search, name="mrag-warm-up", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        log.warning("mrag: the warm-up search is still running after %s s; the server starts", timeout_s)
    return thread


# --- request and response bodies ----------------------------------------------------------------

Strategy = Field(None, description=f"One of: {', '.join(retrieve.strategy_names())}; default: the index's "
                                   f"(recorded by mrag tune), else {retrieve.DEFAULT_STRATEGY}.")


def _no_bool(value: Any) -> Any:
    if isinstance(value, bool):  # JSON true is no count (pydantic would take it as 1)
        raise ValueError("must be a whole number, not true or false")
    return value


Count = Annotated[int, BeforeValidator(_no_bool)]  # a number of hits, tokens, ...: 3 or "3" (a GET), not true


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt option (strategey=...) is refused, not ignored

    query: str = Field(min_length=1)
    k: Count = Field(5, ge=1, le=MAX_K)
    strategy: str | None = Strategy
    explain: bool = Field(False, description="Include the votes (space, rank, weight) behind each hit.")
    c: Count | None = Field(None, ge=1, le=10_000, description="Per-space depth (default max(k, 32)).")
    subqueries: list[str] | None = Field(None, description="For fusion strategies; default: the LLM writes them.")
    exact: bool | None = Field(None, description="true: exact search; false: the ANN indexes; default: ANN if built.")
    nprobes: Count | None = Field(None, ge=1, le=100_000, description="IVF partitions per ANN search.")
    spaces: list[str] | str | None = Field(None, description="Only these voters: standard, heads, head:3, split, "
                                                             "bm25, a space's label (comma-separated, a list, or "
                                                             "spaces= repeated in a GET).")

    @field_validator("spaces")
    @classmethod
    def _split_spaces(cls, spaces: list[str] | str | None) -> list[str] | None:
        """"standard,bm25" as two spaces, as `--spaces` takes them."""
        return None if spaces is None else names(spaces)


@pydantic.dataclasses.dataclass
class Hit(types.Hit):
    """The library's `Hit`; its votes only with `explain` (left out of the response otherwise)."""

    votes: list[dict[str, Any]] | None = None  # type: ignore[assignment]


class SearchResponse(BaseModel):
    query: str
    strategy: str
    subqueries: list[str]
    hits: list[Hit]


class AskRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    question: str = Field(min_length=1)
    k: Count = Field(5, ge=1, le=MAX_K)
    strategy: str | None = Strategy
    max_context_chars: Count | None = Field(None, ge=1)
    max_tokens: Count = Field(DEFAULT_MAX_TOKENS, ge=1, le=8192)
    stream: bool = Field(False, description="Server-sent events: context, token..., answer.")
    subqueries: list[str] | None = None


class DocumentIn(BaseModel):
    model_config = ConfigDict(extra="allow")  # other fields are metadata, as `Index.add` keeps them

    # as `Index.add` takes them: a number as its text, null as none
    id: StrictStr | StrictInt | StrictFloat | None = Field(None, description="Default: a hash of the text.")
    text: str = Field(min_length=1)
    title: StrictStr | StrictInt | StrictFloat | None = ""
    source: StrictStr | StrictInt | StrictFloat | None = ""
    metadata: dict[str, Any] | None = None


class DocumentsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt "mdoe" is refused, not the default mode taken

    documents: list[DocumentIn] = Field(min_length=1)
    mode: Literal["upsert", "add"] = Field("upsert", description="add refuses an existing id with other content.")


class DeleteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ids: list[StrictStr | StrictInt | StrictFloat] = Field(min_length=1,
                                                           description="Document or chunk ids; all must exist.")


def no_query(request: Request) -> None:
    """Routes whose options are in the body (or the path) refuse query parameters, as `extra="forbid"`
    refuses unknown body fields: `DELETE /documents/x?dryrun=1` must not delete."""
    if request.query_params:
        raise HTTPException(422, detail=f"unknown query parameter(s): {', '.join(sorted(request.query_params))}")


# --- the app ------------------------------------------------------------------------------------

def create_app(settings: Settings) -> FastAPI:
    if settings.max_request_bytes <= 0:
        raise ValueError(f"max_request_bytes must be positive, got {settings.max_request_bytes}")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from starlette.concurrency import run_in_threadpool

        app.state.mrag = await run_in_threadpool(State, settings)
        yield
        if app.state.mrag.warming is not None:  # still warming up: exit after it, not in the middle of a read
            await run_in_threadpool(app.state.mrag.warming.join, settings.warm_timeout_s)

    app = FastAPI(title="mrag", version=version("mrag"), lifespan=lifespan,
                  description="Multi-Head RAG over a LanceDB index: search, answers with citations, documents.")
    app.add_middleware(Guard, token=settings.token, max_bytes=settings.max_request_bytes)
    writes = [Security(HTTPBearer(auto_error=False, description="Needed for writes when the server has a token.")),
              Depends(no_query)]

    @app.exception_handler(ValueError)
    async def bad_input(request: Request, exc: ValueError) -> JSONResponse:
        return JSONResponse({"detail": _one_line(exc)}, status_code=400)

    @app.exception_handler(ConnectionError)  # the LLM server: unreachable, or failing (`UpstreamError`)
    async def unreachable(request: Request, exc: ConnectionError) -> JSONResponse:
        return JSONResponse({"detail": _for_client(exc)}, status_code=502)

    @app.exception_handler(Exception)
    async def failed(request: Request, exc: Exception) -> JSONResponse:  # JSON, as every other error
        log.exception("%s %s failed", request.method, request.url.path)
        return JSONResponse({"detail": f"the server failed ({type(exc).__name__}); see its log"}, status_code=500)

    def state(request: Request) -> State:
        return request.app.state.mrag

    def run_search(st: State, body: SearchRequest) -> SearchResponse:
        from mrag.generate.fusion import is_fusion, retrieve_for

        strategy = retrieve.check_strategy(body.strategy or st.index.default_strategy)
        llm = st.llm() if is_fusion(strategy) and not body.subqueries else None
        hits, used = retrieve_for(st.index, body.query, body.k, strategy, llm, c=body.c,
                                  subqueries=body.subqueries, exact=body.exact, nprobes=body.nprobes,
                                  spaces=body.spaces)
        return SearchResponse(query=body.query, strategy=strategy, subqueries=used,
                              hits=[Hit(**h.to_dict(explain=body.explain)) for h in hits])

    @app.get("/search", response_model=SearchResponse, response_model_exclude_none=True, tags=["read"])
    def search_get(request: Request, params: Annotated[SearchRequest, Query()]) -> SearchResponse:
        """The top k chunks for a query (`subqueries` may repeat)."""
        return run_search(state(request), params)

    @app.post("/search", response_model=SearchResponse, response_model_exclude_none=True, tags=["read"],
              dependencies=[Depends(no_query)])
    def search_post(request: Request, body: SearchRequest) -> SearchResponse:
        """The top k chunks for a query; each hit can carry the votes that put it there."""
        return run_search(state(request), body)

    @app.post("/ask", tags=["read"], responses={200: {"content": {"text/event-stream": {}}}},
              dependencies=[Depends(no_query)])
    def ask(request: Request, body: AskRequest) -> Any:
        """An answer citing the retrieved chunks as [1], [2]; `stream` sends server-sent events."""
        from mrag.generate.answer import prepare

        st = state(request)
        llm = st.llm()
        prepared = prepare(st.index, body.question, k=body.k, strategy=body.strategy, generator=llm,
                           max_context_chars=body.max_context_chars or st.settings.max_context_chars,
                           subqueries=body.subqueries)
        if not body.stream:
            return prepared.generate(llm, body.max_tokens).to_dict()

        def events() -> collections.abc.Generator[str, None, None]:
            yield _sse("context", {"strategy": prepared.strategy, "subqueries": prepared.subqueries,
                                   "context": [c.to_dict() for c in prepared.context]})
            pieces: list[str] = []
            stream = prepared.stream(llm, body.max_tokens)
            try:
                for piece in stream:
                    pieces.append(piece)
                    yield _sse("token", {"text": piece})
            except (ValueError, OSError) as e:
                yield _sse("error", {"detail": _for_client(e)})
                return
            except Exception as e:  # the stream ends with an error event, never cut off mid-way
                log.exception("POST /ask stream failed")
                yield _sse("error", {"detail": f"generation failed ({type(e).__name__}); see the server's log"})
                return
            finally:  # a client gone: the generation stops now, not when the collector finds it
                getattr(stream, "close", lambda: None)()
            yield _sse("answer", prepared.answer("".join(pieces)).to_dict())

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

    @app.post("/documents", tags=["write"], dependencies=writes)
    def add_documents(request: Request, body: DocumentsRequest) -> dict[str, Any]:
        """Add or update documents (chunked and embedded); all of a request becomes visible at once."""
        st = state(request)
        docs = [d.model_dump() for d in body.documents]
        with st.write_lock:
            report = st.index.upsert(docs) if body.mode == "upsert" else st.index.add(docs)
        return report.to_dict() | {"ids": {"added": report.added, "updated": report.updated,
                                           "unchanged": report.unchanged}}

    def delete_ids(st: State, ids: list[str]) -> JSONResponse:
        with st.write_lock:
            try:
                n = st.index.delete(ids)
            except ValueError as e:  # unknown ids: nothing was deleted
                return JSONResponse({"detail": _one_line(e)}, status_code=404)
        return JSONResponse({"deleted_chunks": n})

    @app.delete("/documents/{doc_id:path}", tags=["write"], dependencies=writes)
    def delete_document(request: Request, doc_id: str) -> JSONResponse:
        """Delete a document (all its chunks) or one chunk by id."""
        return delete_ids(state(request), [doc_id])

    @app.post("/documents/delete", tags=["write"], dependencies=writes)
    def delete_documents(request: Request, body: DeleteRequest) -> JSONResponse:
        """Delete documents or chunks by id; if any id is unknown nothing is deleted (404)."""
        return delete_ids(state(request), [str(i) for i in body.ids])  # a number as its text, as ids are written

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
    def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    return text.splitlines()[0] if text else type(exc).__name__


def _sse(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


def _for_client(error: Exception) -> str:
    """An error's one line for an HTTP client; an LLM server's failure told briefly, its answer logged."""
    brief = getattr(error, "brief", None)
    if brief is None:
        return _one_line(error)
    log.warning("%s", error)
    return str(brief)
