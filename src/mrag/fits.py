"""Whether an embedder fits an index: the model, layer, sizes, pooling and instructions the index records,
and how its standard vector is made. A different one is refused with the setting that differs, so that no
index ever holds, or is searched with, vectors of two embedders."""

from __future__ import annotations

from typing import Any

import numpy as np

from mrag.embed.base import HeadEmbedder
from mrag.embed.models import same_model
from mrag.errors import StoreError
from mrag.store import Store
from mrag.writing import chunk_settings

RECORDED_OPTIONS = ("pooling", "max_length", "query_instruction", "document_instruction")  # shape the vectors
SHAPE = ("dim", "n_heads", "head_dim", "layer")  # the sizes and the layer hooked
# cosine of a recorded probe and the embedder's own, of the standard values and of the heads', at least: bf16
# weights against fp32 gave 0.99995 (MiniLM), its layer 4 against 5 0.19 (heads), max_length 8 against its default 0.34
PROBE_MATCH = 0.99


def created(store: Store, made: HeadEmbedder, spaces: list[dict[str, Any]], chunk_chars: int | None,
            overlap: int | None, uri: str) -> None:
    """Refuse an index that another process created at the same moment (`Store.create` then returns
    theirs) with another embedder or other spaces: this one's vectors would not be theirs. Chunk settings
    given and different are refused as on any existing index; not given, theirs are used."""
    differ = differs(store.manifest.embedder, made.recorded())
    if differ is None and store.manifest.spaces != spaces:
        differ = ("spaces", [space["name"] for space in store.manifest.spaces])
    if differ:
        raise StoreError(f"another process created the index at {uri} at the same moment, with another "
                         f"{differ[0]} ({differ[1]!r}); nothing was written: run again without the option "
                         "that differs to use that index's settings, or choose another --db")
    chunk_settings(uri, store, chunk_chars, overlap)


def differs(recorded: dict[str, Any], info: dict[str, Any]) -> tuple[str, Any] | None:
    """The first thing that shapes the vectors in which an embedder's record (`HeadEmbedder.recorded`) differs
    from an index's, as (key, the index's value); None: the same vectors. Not `revision` or `n_layers`: the same
    model by its id or its folder."""
    if not same_model(str(info.get("model")), str(recorded.get("model"))):
        return "model", recorded.get("model")
    for key in (*SHAPE, *RECORDED_OPTIONS, "standard"):  # a key one record lacks (an older index's) is no difference
        if key in recorded and key in info and recorded[key] != info[key]:
            return key, recorded[key]
    if "probe" in recorded and "probe" in info and _probe_differs(recorded["probe"], info["probe"]):
        return "probe", "other vectors"
    return None


def same(
    recorded: dict[str, Any], model: str | None, layer: int | None, embedder: HeadEmbedder | None, uri: str
) -> None:
    if model is not None and not same_model(model, recorded["model"]):
        raise StoreError(
            f"the index at {uri} was built with {recorded['model']}, not {model}: use that model or another --db"
        )
    if layer is not None and recorded.get("layer") is not None:
        n_layers = recorded.get("n_layers") or recorded["layer"] + 1
        if not -n_layers <= layer < n_layers or layer % n_layers != recorded["layer"]:
            raise StoreError(f"the index at {uri} holds layer {recorded['layer']}, not {layer}")
    if embedder is not None:
        info = embedder.info()
        if not same_model(str(info.get("model")), str(recorded.get("model"))):
            raise StoreError(f"the index at {uri} was built with {recorded.get('model')}, not {info.get('model')}")
        loaded(recorded, embedder, uri)


def loaded(recorded: dict[str, Any], embedder: HeadEmbedder, uri: str) -> HeadEmbedder:
    """Refuse an embedder that does not make the index's vectors: other sizes, layers, pooling, length or
    instructions than the index records (those it reports), another probe (`HeadEmbedder.probe`: other
    weights under the same name, a model folder whose files were replaced), or another standard vector."""
    info = embedder.info()
    for key in (*SHAPE, "n_layers", *RECORDED_OPTIONS):
        if key in info and key in recorded and info[key] != recorded[key]:
            raise StoreError(f"the index at {uri} was built with {key}={recorded[key]!r}, not {info[key]!r} (the "
                             f"model {recorded.get('model')} as it is now): use that model as it was, or another --db")
    part = _probe_differs(recorded["probe"], embedder.probe()) if "probe" in recorded else None
    if part is not None:
        raise StoreError(f"the model {recorded.get('model')} makes other vectors ({part}) than the ones the index at "
                         f"{uri} was built with: its weights changed since (or another model took its name); use the "
                         "model as it was, or index into another --db")
    return standard(recorded, embedder, uri)


def _probe_differs(recorded: dict[str, list[float]], now: dict[str, list[float]]) -> str | None:
    """The part ("standard" or "heads") of two probes further apart than `PROBE_MATCH`, else None."""
    return next((part for part in ("standard", "heads") if _cosine(recorded[part], now[part]) < PROBE_MATCH), None)


def _cosine(a: list[float], b: list[float]) -> float:
    if len(a) != len(b):
        return -1.0
    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    norms = float(np.linalg.norm(x) * np.linalg.norm(y))
    return float(x @ y / norms) if norms > 0 else float(np.array_equal(x, y))


def standard(recorded: dict[str, Any], embedder: HeadEmbedder, uri: str) -> HeadEmbedder:
    """Refuse a model folder whose standard vectors differ from the index's: an index recorded before the
    standard's making was (2026-12-07) has what mrag then made of a sentence-transformers folder (the pooling
    of the old config flags, else mean; no Dense layer), which was not the model's embedding for some."""
    now = embedder.info().get("standard")
    was = recorded.get("standard", getattr(embedder, "standard_before", now))
    if now != was:
        why = "" if "standard" in recorded else f" (its sentence-transformers embedding; older mrag read it as {was!r})"
        raise StoreError(f"the index at {uri} holds standard vectors made as {was!r}, and this model folder makes "
                         f"them as {now!r}{why}: index the files again into a new --db")
    return embedder


def loading_options(recorded: dict[str, Any], asked: dict[str, Any], uri: str) -> dict[str, Any]:
    """The options to load an index's embedder with: those the index records (another value asked for is
    refused), and the device and dtype asked for (they do not change the vectors)."""
    for key in RECORDED_OPTIONS:
        if key in asked and asked[key] != recorded.get(key):
            raise StoreError(f"the index at {uri} was built with {key}={recorded.get(key)!r}, not {asked[key]!r}")
    options = {key: recorded[key] for key in RECORDED_OPTIONS if recorded.get(key) is not None}
    return options | {key: value for key, value in asked.items() if key in ("device", "dtype")}
