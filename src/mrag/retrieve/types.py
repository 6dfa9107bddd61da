"""The data a search passes along, from the query's vectors to the hits: `QueryVectors` (what a
query is in every space), `Voter` (a space that votes, and its weight), `Scales` (the weights per
group), `Ranker` (finds each space's nearest rows), `Result` (rows, scores and votes of one query)
and `Hit` (a result row as the library, the CLI and the server return it)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

Scales = dict[str, np.ndarray]  # "heads" (H,), "split" (S,), "standard" (1,), "space:NAME" (1,) weights


@dataclass
class QueryVectors:
    """One query's unit vectors.  standard (D,), heads (H, d), extra: external space -> (D_s,)."""

    standard: np.ndarray
    heads: np.ndarray
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    text: str = ""  # the query (or part) itself, for the full-text space (`mrag.retrieve.fulltext`)


@dataclass(frozen=True)
class Voter:
    """One space that votes: its name ("standard", "head:3", "split:1", a label), group and weight."""

    name: str
    group: str  # "standard", "heads", "split" or an external space's label
    weight: float

    @property
    def index(self) -> int:
        """The head or slice number of a "head:i" / "split:i" voter."""
        return int(self.name.split(":")[1])


@dataclass
class Result:
    """Row indices best first, scores, and per row the votes (space, rank, weight, and part)."""

    rows: np.ndarray
    scores: np.ndarray
    votes: list[list[dict[str, object]]] = field(default_factory=list)


# ranker(voters, queries, c) -> rankings (P, S, c) row ids best first (-1 = none), similarities (P, S, c)
Ranker = Callable[[list[Voter], list[QueryVectors], int], tuple[np.ndarray, np.ndarray]]


@dataclass
class Hit:
    id: str
    score: float
    text: str
    source: str
    title: str
    doc_id: str
    position: int
    metadata: dict[str, Any]
    votes: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self, explain: bool = False) -> dict[str, Any]:
        out = asdict(self)
        if not explain:
            out.pop("votes")
        return out
