"""LanceDB connections: one session per process, shared by every connection to every index, so the
process has one index cache (the ANN indexes' partitions, read on first use) and one metadata cache,
bounded by MRAG_INDEX_CACHE_MB and MRAG_METADATA_CACHE_MB (README, Large indexes). And a search's
queries sent to LanceDB together (`async_table`, `together`)."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Coroutine
from typing import Any

from mrag.errors import StoreError

CACHE_VARIABLES = {"index": "MRAG_INDEX_CACHE_MB", "metadata": "MRAG_METADATA_CACHE_MB"}
IN_FLIGHT = 16  # queries of one batch LanceDB runs at once: each holds ~100 KB until its result is read
_session: Any = None
_session_lock = threading.Lock()
_used_in: int | None = None  # the process that made the session: a child forked after it may not use it
FORKED = ("this process was forked from one that had opened an mrag index: LanceDB's runtime and torch's threads "
          "do not survive fork (such children crashed, or hung holding the index's write lock); open indexes in "
          "processes that multiprocessing starts with 'spawn' or 'forkserver', or fork before the first one is opened")


def check_process() -> None:
    """Refuse to go on in a child forked from a process that had used LanceDB (`FORKED`): asked before every
    search and write (`Store.refresh`, `Store.writing`) and connection."""
    if _used_in is not None and _used_in != os.getpid():
        raise StoreError(FORKED)


def cache_limits() -> dict[str, int | None]:
    """The LanceDB cache sizes in bytes the environment asks for ("index", "metadata"; None: LanceDB's
    default, 6 GiB and 1 GiB). MRAG_INDEX_CACHE_MB bounds what ANN searches keep resident."""
    limits: dict[str, int | None] = {}
    for cache, variable in CACHE_VARIABLES.items():
        value = os.environ.get(variable, "").strip()
        if value and not (value.isdigit() and int(value) > 0):
            raise StoreError(f"{variable} must be a positive number of MiB, got {value!r}")
        limits[cache] = int(value) * 2**20 if value else None
    return limits


def session() -> Any:
    """The process's LanceDB session, shared by every connection: one index cache (the ANN indexes'
    partitions, read on first use) and one metadata cache, sized by `cache_limits` when first made."""
    global _session, _used_in
    check_process()
    with _session_lock:
        if _session is None:
            _used_in = os.getpid()
            import lancedb

            limits = cache_limits()
            _session = lancedb.Session(index_cache_size_bytes=limits["index"],
                                       metadata_cache_size_bytes=limits["metadata"])
        return _session


def connect(uri: str, storage_options: dict[str, str] | None = None, **options: Any) -> Any:
    """A LanceDB connection through the process's session."""
    import lancedb

    return lancedb.connect(uri, storage_options=storage_options, session=session(), **options)


def async_table(table: Any) -> Any | None:
    """The AsyncTable a LanceDB table runs on (LanceTable keeps it as `_table`) when LanceDB's event
    loop runs, else None: that table's queries then go through its synchronous API."""
    from lancedb.table import AsyncTable

    inner = getattr(table, "_table", None)
    return inner if isinstance(inner, AsyncTable) and _event_loop() is not None else None


def together(queries: list[Coroutine[Any, Any, Any]]) -> Callable[[], list[Any]]:
    """Start queries on an AsyncTable (`async_table`) together on LanceDB's event loop, at most
    IN_FLIGHT at a time; -> a call that waits for their results, in order, or raises the first query's
    failure (an interrupted wait cancels the queries not done). LanceDB's synchronous API hands each
    query between threads five times: six full-text queries on four threads took 16 ms, as one batch
    7.3 (1,250 rows, 2 cores)."""
    loop = _event_loop()
    if loop is None:
        raise RuntimeError("LanceDB's event loop is not running: query through the synchronous API")

    async def gathered() -> list[Any]:
        gate = asyncio.Semaphore(IN_FLIGHT)

        async def one(query: Coroutine[Any, Any, Any]) -> Any:
            try:
                async with gate:
                    return await query
            finally:
                query.close()  # one cancelled at the gate never ran: no "never awaited" warning

        results = await asyncio.gather(*(one(q) for q in queries), return_exceptions=True)
        for result in results:  # every query ran (or failed): raise the first failure, in order
            if isinstance(result, BaseException):
                raise result
        return list(results)

    future = asyncio.run_coroutine_threadsafe(gathered(), loop)

    def wait() -> list[Any]:
        try:
            return future.result()
        except BaseException:
            future.cancel()  # an interrupt (Ctrl-C): the queries not done stop
            raise

    return wait


def _event_loop() -> asyncio.AbstractEventLoop | None:
    """LanceDB's background event loop, which its synchronous API runs every call on, else None."""
    try:
        from lancedb.background_loop import LOOP
    except ImportError:  # pragma: no cover - a LanceDB without it: queries go through the synchronous API
        return None
    loop = getattr(LOOP, "loop", None)
    return loop if isinstance(loop, asyncio.AbstractEventLoop) and loop.is_running() else None
