"""mrag: Multi-Head RAG on LanceDB. Retrieval for questions that need several different documents.

`import mrag` is light: the names below load their modules (torch, LanceDB) on first use. LanceDB's
embedding registry gets the "multi-head" function with `import mrag.lancedb_ext`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mrag.embed.base import Embeddings, HeadEmbedder
    from mrag.index import AddReport, Hit, Index
    from mrag.ingest import Document
    from mrag.store import StoreError

_WHERE = {
    "AddReport": "mrag.index", "Hit": "mrag.index", "Index": "mrag.index", "Document": "mrag.ingest",
    "Embeddings": "mrag.embed.base", "HeadEmbedder": "mrag.embed.base", "StoreError": "mrag.store",
}
__all__ = ["AddReport", "Document", "Embeddings", "HeadEmbedder", "Hit", "Index", "StoreError"]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'mrag' has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)
