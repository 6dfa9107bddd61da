"""Backends by name (`local`, `ollama`, `openai`), each built with an optional model name; their
modules load on first use."""

from __future__ import annotations

from collections.abc import Callable

from mrag.generate.base import Generator


def _local(model: str | None) -> Generator:
    from mrag.generate.local import LocalGenerator

    return LocalGenerator(model)


def _ollama(model: str | None) -> Generator:
    from mrag.generate.remote import OllamaGenerator

    return OllamaGenerator(model)


def _openai(model: str | None) -> Generator:
    from mrag.generate.remote import OpenAIGenerator

    return OpenAIGenerator(model)


BACKENDS: dict[str, Callable[[str | None], Generator]] = {"local": _local, "ollama": _ollama, "openai": _openai}


def make_generator(backend: str = "local", model: str | None = None) -> Generator:
    """A generator by backend name (`local`, `ollama`, `openai`) and model (None: the backend's default)."""
    try:
        make = BACKENDS[backend]
    except KeyError:
        raise ValueError(f"unknown generator {backend!r}; choose one of {', '.join(BACKENDS)}") from None
    return make(model or None)
