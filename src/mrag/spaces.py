"""External embedding spaces: whole embedding spaces of other models, from LanceDB's embedding registry.

An index can hold, besides its multi-head model's head spaces and standard space, any number of
spaces computed by a LanceDB registry function (sentence-transformers, openai, ollama, ... or
mrag's own `multi-head`). A space is written on the command line as

    [LABEL=]FUNCTION[:key=value,key=value,...]

for example `mpnet=sentence-transformers:name=/models/all-mpnet-base-v2` or
`ollama:name=nomic-embed-text,host=http://localhost:11434`. Values are JSON when they parse as JSON
(numbers, true/false, lists), otherwise strings. The key `weight` is mrag's own: the space's vote
weight, a number or `auto` (the default: a scale computed from the corpus like a head's). The label
defaults to the function name plus the model name, made safe for a column name.

Every failure (unknown function, bad options, a server that does not answer, a vector of the wrong
size) is a `SpaceError` that names the space.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mrag.errors import StoreError
from mrag.rows import space_column
from mrag.settings import FULLTEXT

RESERVED = {"standard", "heads", "split", "vector", FULLTEXT}  # the built-in voters' names, the vector column
PROBE_TEXT = "dimension probe"


BAD_WEIGHT = "weight must be a finite number >= 0 or 'auto'"


class SpaceError(StoreError):
    """A space cannot be created or cannot compute its vectors; the message names the space."""


@dataclass(frozen=True)
class SpaceSpec:
    """One external space: its label, the LanceDB registry function and that function's options."""

    name: str
    function: str
    options: dict[str, Any] = field(default_factory=dict)
    weight: float | None = None  # None: computed from the corpus like a head scale

    def __post_init__(self) -> None:
        w = self.weight
        if w is not None and (not isinstance(w, (int, float)) or isinstance(w, bool) or not 0 <= w < math.inf):
            raise SpaceError(f"space {self.name!r}: {BAD_WEIGHT}, got {w!r}")
        if w is not None:
            object.__setattr__(self, "weight", float(w))  # frozen: set once, as a float

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "function": self.function, "options": self.options,
                "weight": "auto" if self.weight is None else self.weight}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SpaceSpec:
        weight = data.get("weight", "auto")
        return cls(data["name"], data["function"], dict(data.get("options") or {}),
                   None if weight == "auto" else float(weight))

    def same_space(self, other: SpaceSpec) -> bool:
        """Same function and options (the weight may differ; a relative path as the absolute one it names here,
        as an index made before paths were recorded absolute holds it)."""
        return self.function == other.function and absolute(self.options) == absolute(other.options)


MODEL_OPTIONS = ("name", "model", "model_name", "path", "model_path")  # options that may name a model folder


def absolute(options: dict[str, Any]) -> dict[str, Any]:
    """The options with a model option naming a folder here by a relative path made absolute: the index
    records the folder the path names now, not what it names from another working directory."""
    def resolved(key: str, value: Any) -> Any:
        if key not in MODEL_OPTIONS or not isinstance(value, str) or not value or "://" in value:
            return value
        path = Path(value).expanduser()
        return str(path.resolve()) if not path.is_absolute() and path.is_dir() else value

    return {key: resolved(key, value) for key, value in options.items()}


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_space(text: str) -> SpaceSpec:
    """'mpnet=sentence-transformers:name=/m,device=cpu' -> SpaceSpec('mpnet', 'sentence-transformers', {...})."""
    text = text.strip()
    head, _, rest = text.partition(":")
    label = None
    if "=" in head:
        label, _, head = head.partition("=")
        label = label.strip()
    function = head.strip()
    if not function:
        raise SpaceError(f"space {text!r}: no embedding function named (write FUNCTION[:key=value,...])")
    options: dict[str, Any] = {}
    for item in filter(None, (p.strip() for p in split_options(rest))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise SpaceError(f"space {text!r}: option {item!r} is not key=value")
        options[key.strip()] = _value(value.strip())
    weight = options.pop("weight", "auto")
    name = label or default_label(function, options)
    check_label(name, text)
    try:
        return SpaceSpec(name, function, absolute(options), None if weight == "auto" else weight)
    except SpaceError:  # named by the spec as written
        raise SpaceError(f"space {text!r}: {BAD_WEIGHT}, got {weight!r}") from None


def split_options(rest: str) -> list[str]:
    """'a=1,dims=[256,512],b="x,y"' -> ['a=1', 'dims=[256,512]', 'b="x,y"']: commas inside a JSON list,
    object or string belong to the value."""
    items, depth, quoted, start = [], 0, False, 0
    for i, char in enumerate(rest):
        if quoted:
            quoted = not (char == '"' and rest[i - 1] != "\\")
        elif char == '"':
            quoted = True
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth = max(depth - 1, 0)
        elif char == "," and depth == 0:
            items.append(rest[start:i])
            start = i + 1
    return [*items, rest[start:]]


def default_label(function: str, options: dict[str, Any]) -> str:
    model = str(options.get("name", ""))
    model = Path(model).name if ("/" in model or "\\" in model) else model
    return slug(f"{function}-{model}" if model else function)


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9_]+", "_", text.lower()).strip("_") or "space"


def check_label(name: str, spec: str | None = None) -> None:
    where = f"space {spec!r}" if spec else f"space {name!r}"
    if not re.fullmatch(r"[a-z0-9_]+", name):
        raise SpaceError(f"{where}: the label {name!r} may hold only a-z, 0-9 and _")
    if name in RESERVED:
        raise SpaceError(f"{where}: the label {name!r} is reserved; choose another (LABEL=FUNCTION:...)")


column = space_column  # the chunks table column holding a space's vectors


def new_specs(recorded: list[dict[str, Any]], specs: list[SpaceSpec], uri: str) -> list[SpaceSpec]:
    """The requested spaces the index lacks; a label already used for another function or options is refused."""
    have = {e["name"]: SpaceSpec.from_json(e) for e in recorded}
    new = []
    for spec in specs:
        old = have.get(spec.name)
        if old is None:
            new.append(spec)
        elif not old.same_space(spec) or old.weight != spec.weight:
            raise SpaceError(
                f"space {spec.name!r} of the index at {uri} is {old.to_json()}, not {spec.to_json()}: "
                "use another label for another space"
            )
    return new


def check_unique(specs: Sequence[SpaceSpec]) -> None:
    names = [s.name for s in specs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise SpaceError(f"space {dupes[0]!r} is given twice: give each space its own label (LABEL=FUNCTION:...)")


class Space:
    """A live space: its spec and the LanceDB embedding function that computes its vectors."""

    def __init__(self, spec: SpaceSpec, dim: int | None = None) -> None:
        self.spec = spec
        self.dim = dim
        self.function = create_function(spec)

    @property
    def name(self) -> str:
        return self.spec.name

    def probe(self) -> int:
        """Compute one vector to learn (or check) the dimension; fails early when the model is unreachable."""
        vector = self.embed([PROBE_TEXT], kind="query")
        return vector.shape[1]

    def embed(self, texts: Sequence[str], kind: str = "document") -> np.ndarray:
        """Raw vectors (N, D) of this space; a SpaceError names the space when anything goes wrong."""
        if not texts:
            return np.zeros((0, self.dim or 0), dtype=np.float32)
        try:
            if kind == "query":
                out = self._query_embeddings(list(texts))
            else:
                out = list(self.function.compute_source_embeddings(list(texts)))
        except SpaceError:
            raise
        except Exception as e:  # the function's own errors: connection refused, HTTP errors, bad model ...
            detail = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise SpaceError(f"space {self.name!r} ({self.spec.function}): cannot compute embeddings: {detail}") from e
        return self._check(out, len(texts))

    def _query_embeddings(self, texts: list[str]) -> list[Any]:
        """Text functions take a list of queries in one call; any other function gets one query per call."""
        from lancedb.embeddings import TextEmbeddingFunction

        if isinstance(self.function, TextEmbeddingFunction):
            out = list(self.function.compute_query_embeddings(texts))  # type: ignore[arg-type]  # takes a list too
            if len(out) == len(texts):
                return out
        return [v for t in texts for v in self.function.compute_query_embeddings(t)]

    def _check(self, vectors: list[Any], n: int) -> np.ndarray:
        if len(vectors) != n or any(v is None for v in vectors):
            raise SpaceError(f"space {self.name!r} ({self.spec.function}): returned no vector for some texts")
        sizes = {len(v) for v in vectors}
        if len(sizes) != 1:
            raise SpaceError(f"space {self.name!r} ({self.spec.function}): vectors of different sizes {sorted(sizes)}")
        dim = sizes.pop()
        if self.dim is not None and dim != self.dim:
            raise SpaceError(
                f"space {self.name!r} ({self.spec.function}): dimension changed from {self.dim} to {dim}; "
                "nothing written (use another label for another model)"
            )
        array = np.asarray(vectors, dtype=np.float32)
        if not np.isfinite(array).all():
            raise SpaceError(f"space {self.name!r} ({self.spec.function}): returned non-finite values")
        return array


def function_class(spec: SpaceSpec) -> Any:
    """The LanceDB registry class of a space's function."""
    from lancedb.embeddings import get_registry

    import mrag.lancedb_ext  # noqa: F401  (registers "multi-head")

    registry = get_registry()
    try:
        return registry.get(spec.function)
    except KeyError:
        known = ", ".join(sorted(registry._functions)) if hasattr(registry, "_functions") else ""
        hint = f"; LanceDB knows: {known}" if known else ""
        raise SpaceError(f"space {spec.name!r}: unknown embedding function {spec.function!r}{hint}") from None


def check_options(spec: SpaceSpec) -> None:
    """Refuse options a new space's function does not take (its pydantic fields): such a function ignores
    them, so a misspelt `output` or `name` gave another space, recorded for good."""
    cls = function_class(spec)
    fields = getattr(cls, "model_fields", None)
    if not fields or getattr(cls, "model_config", {}).get("extra") == "allow":
        return
    unknown = sorted(set(spec.options) - set(fields))
    if unknown:
        raise SpaceError(f"space {spec.name!r} ({spec.function}): unknown option(s) {', '.join(map(repr, unknown))}; "
                         f"it takes {', '.join(sorted(fields))} (and weight); nothing written")


def create_function(spec: SpaceSpec) -> Any:
    """The LanceDB registry function of a space, created with its options."""
    cls = function_class(spec)
    try:
        return cls.create(**spec.options)
    except Exception as e:
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise SpaceError(f"space {spec.name!r} ({spec.function}): bad options {spec.options}: {detail}") from e


def open_spaces(specs: Sequence[SpaceSpec], dims: dict[str, int] | None = None) -> list[Space]:
    """Create every space's function (and probe for its dimension when unknown) before anything is written."""
    check_unique(specs)
    for spec in specs:
        check_options(spec)
    spaces = [Space(s, (dims or {}).get(s.name)) for s in specs]
    for space in spaces:
        if space.dim is None:
            space.dim = space.probe()
    return spaces
