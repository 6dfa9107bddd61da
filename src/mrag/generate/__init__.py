"""Answers with citations: LLM backends (local transformers, Ollama, OpenAI-compatible), the
numbered-context prompt, and query-time RAG-Fusion / MRAG-Fusion. The names below load their
modules on first use, so `mrag.generate.base` and friends import without the retrieval stack."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mrag.generate.answer import Prepared, ask, prepare
    from mrag.generate.backends import BACKENDS, make_generator
    from mrag.generate.base import Generator, Message
    from mrag.generate.fusion import fusion_search, parse_subqueries, write_subqueries
    from mrag.generate.prompt import Answer, ContextChunk, build_context, build_messages, parse_citations

_WHERE = {
    "Prepared": "answer", "ask": "answer", "prepare": "answer", "BACKENDS": "backends", "make_generator": "backends",
    "Generator": "base", "Message": "base", "fusion_search": "fusion", "parse_subqueries": "fusion",
    "write_subqueries": "fusion", "Answer": "prompt", "ContextChunk": "prompt", "build_context": "prompt",
    "build_messages": "prompt", "parse_citations": "prompt",
}
__all__ = [
    "BACKENDS",
    "Answer",
    "ContextChunk",
    "Generator",
    "Message",
    "Prepared",
    "ask",
    "build_context",
    "build_messages",
    "fusion_search",
    "make_generator",
    "parse_citations",
    "parse_subqueries",
    "prepare",
    "write_subqueries",
]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'mrag.generate' has no attribute {name!r}")
    return getattr(importlib.import_module(f"mrag.generate.{_WHERE[name]}"), name)
