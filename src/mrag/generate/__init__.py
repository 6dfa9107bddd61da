"""Answers with citations: LLM backends (local transformers, Ollama, OpenAI-compatible), the
numbered-context prompt, and query-time RAG-Fusion / MRAG-Fusion."""

from mrag.generate.ask import Prepared, ask, prepare
from mrag.generate.base import BACKENDS, Generator, Message, make_generator
from mrag.generate.fusion import fusion_search, parse_subqueries, write_subqueries
from mrag.generate.prompt import Answer, ContextChunk, build_context, build_messages, parse_citations

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
