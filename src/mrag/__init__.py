"""mrag: Multi-Head RAG on LanceDB. Retrieval for questions that need several different documents."""

import mrag.lancedb_ext  # noqa: F401  (registers "multi-head" in LanceDB's embedding registry)
from mrag.embed.base import Embeddings, HeadEmbedder
from mrag.index import AddReport, Hit, Index
from mrag.ingest import Document
from mrag.store import StoreError

__all__ = ["AddReport", "Document", "Embeddings", "HeadEmbedder", "Hit", "Index", "StoreError"]
