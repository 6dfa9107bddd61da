"""LanceDB connections: one session per process, shared by every connection to every index, so the
process has one index cache (the ANN indexes' partitions, read on first use) and one metadata cache,
bounded by MRAG_INDEX_CACHE_MB and MRAG_METADATA_CACHE_MB (README, Large indexes)."""

from __future__ import annotations

import os
import threading
from typing import Any

from mrag.errors import StoreError

CACHE_VARIABLES = {"index": "MRAG_INDEX_CACHE_MB", "metadata": "MRAG_METADATA_CACHE_MB"}
_session: Any = None
_session_lock = threading.Lock()


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
    global _session
    with _session_lock:
        if _session is None:
            import lancedb

            limits = cache_limits()
            _session = lancedb.Session(index_cache_size_bytes=limits["index"],
                                       metadata_cache_size_bytes=limits["metadata"])
        return _session


def connect(uri: str, storage_options: dict[str, str] | None = None, **options: Any) -> Any:
    """A LanceDB connection through the process's session."""
    import lancedb

    return lancedb.connect(uri, storage_options=storage_options, session=session(), **options)
