"""mrag: Multi-Head RAG on LanceDB. Retrieval for questions that need several different documents.

`import mrag` is light: the names below load their modules (torch, LanceDB) on first use. The
"multi-head" function joins LanceDB's embedding registry when LanceDB itself is imported (at once
when it already is), so `import mrag` then `get_registry().get("multi-head")` works without making
every `import mrag` pay for LanceDB.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mrag.documents import Document
    from mrag.embed.base import Embeddings, HeadEmbedder
    from mrag.errors import StoreError
    from mrag.index import AddReport, Index
    from mrag.retrieve.types import Hit

_WHERE = {
    "AddReport": "mrag.index", "Hit": "mrag.retrieve.types", "Index": "mrag.index", "Document": "mrag.ingest",
    "Embeddings": "mrag.embed.base", "HeadEmbedder": "mrag.embed.base", "StoreError": "mrag.errors",
}
__all__ = ["AddReport", "Document", "Embeddings", "HeadEmbedder", "Hit", "Index", "StoreError"]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'mrag' has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)


class _RegisterWhenLanceDBLoads(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds `lancedb` once, as the normal machinery does, and imports `mrag.lancedb_ext` (which
    registers "multi-head") right after LanceDB's own module has run."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "lancedb":
            return None
        sys.meta_path.remove(self)  # one shot, and no recursion into this finder
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        self._loader = spec.loader
        spec.loader = self
        return spec

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        module.__loader__ = module.__spec__.loader = self._loader  # LanceDB sees its own loader
        self._loader.exec_module(module)
        importlib.import_module("mrag.lancedb_ext")


if "lancedb" in sys.modules:
    importlib.import_module("mrag.lancedb_ext")
elif not any(isinstance(f, _RegisterWhenLanceDBLoads) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterWhenLanceDBLoads())
