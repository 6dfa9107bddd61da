"""Head scales: how much each head space's vote counts.

For head i over the N corpus vectors e_{d,i}:  s_i = a_i * b_i with
    a_i = mean_d |e_{d,i}|                          (mean L2 norm)
    b_i = mean_{d,d'} (1 - cos(e_{d,i}, e_{d',i}))  (mean pairwise cosine distance, self-pairs included)
Since mean_{d,d'} u_d . u_d' = |sum_d u_d|^2 / N^2 for unit vectors u, b_i = 1 - |sum_d u_{d,i}|^2 / N^2,
so keeping N, sum|e| and sum u per head gives the scales in O(H*d) per insert or delete instead
of the O(N^2) recomputation of the reference code. Zero vectors count with u = 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


def split_width(dim: int, n_heads: int) -> int:
    """Width of the Split-RAG slices of a D-dim standard vector: D / H when H divides D, else D."""
    return dim // n_heads if dim % n_heads == 0 else dim


def split_unit(vectors: np.ndarray, eps: float = 1e-12) -> tuple[np.ndarray, np.ndarray]:
    """Norms and unit vectors along the last axis.  (..., d) -> (...,), (..., d)."""
    v = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(v, axis=-1)
    units = v / np.maximum(norms, eps)[..., None]
    return norms, units


@dataclass
class HeadStats:
    """Running sums over a corpus of (N, H, d) head vectors, enough to give every head's scale."""

    n_heads: int
    head_dim: int
    count: int = 0
    norm_sum: np.ndarray = field(default=None)  # type: ignore[arg-type]  # (H,) float64
    unit_sum: np.ndarray = field(default=None)  # type: ignore[arg-type]  # (H, d) float64

    def __post_init__(self) -> None:
        if self.norm_sum is None:
            self.norm_sum = np.zeros(self.n_heads)
        if self.unit_sum is None:
            self.unit_sum = np.zeros((self.n_heads, self.head_dim))

    def add(self, norms: np.ndarray, units: np.ndarray, sign: int = 1) -> None:
        """Fold in (sign=1) or take out (sign=-1) rows given as norms (N, H) and unit vectors (N, H, d)."""
        norms = np.asarray(norms, dtype=np.float64).reshape(-1, self.n_heads)
        units = np.asarray(units, dtype=np.float64).reshape(-1, self.n_heads, self.head_dim)
        self.count += sign * len(norms)
        self.norm_sum = self.norm_sum + sign * norms.sum(axis=0)
        self.unit_sum = self.unit_sum + sign * units.sum(axis=0)
        if self.count < 0:
            raise ValueError("removed more rows than the statistics hold")

    def remove(self, norms: np.ndarray, units: np.ndarray) -> None:
        self.add(norms, units, sign=-1)

    def scales(self) -> np.ndarray:
        """s_i = mean norm x mean pairwise cosine distance, per head.  -> (H,); zeros when empty."""
        if self.count == 0:
            return np.zeros(self.n_heads)
        mean_norm = self.norm_sum / self.count
        spread = 1.0 - (self.unit_sum**2).sum(axis=1) / self.count**2
        return mean_norm * np.clip(spread, 0.0, 2.0)

    def to_json(self) -> dict[str, Any]:
        return {
            "n_heads": self.n_heads,
            "head_dim": self.head_dim,
            "count": self.count,
            "norm_sum": self.norm_sum.tolist(),
            "unit_sum": self.unit_sum.tolist(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> HeadStats:
        return cls(
            n_heads=data["n_heads"],
            head_dim=data["head_dim"],
            count=data["count"],
            norm_sum=np.asarray(data["norm_sum"], dtype=np.float64),
            unit_sum=np.asarray(data["unit_sum"], dtype=np.float64).reshape(
                data["n_heads"], data["head_dim"]
            ),
        )


@dataclass
class ScaleSums:
    """The running sums of every group of spaces that votes with a scale, by name: "heads" (H heads),
    "split" (S slices of the standard vector), "standard" (1) and "space:NAME" (1 per external space).
    The manifest stores them as JSON; the scales follow from them in O(H*d) (`HeadStats`)."""

    groups: dict[str, HeadStats]

    @classmethod
    def empty(cls, dim: int, n_heads: int, head_dim: int, spaces: dict[str, int] | None = None) -> ScaleSums:
        """Zero sums for an index of D-dim standard vectors, H heads of d, and external spaces (name -> dim)."""
        split_dim = split_width(dim, n_heads)
        return cls({"heads": HeadStats(n_heads, head_dim), "split": HeadStats(dim // split_dim, split_dim),
                    "standard": HeadStats(1, dim),
                    **{f"space:{name}": HeadStats(1, sd) for name, sd in (spaces or {}).items()}})

    @property
    def heads(self) -> HeadStats:
        return self.groups["heads"]

    @property
    def split(self) -> HeadStats:
        return self.groups["split"]

    @property
    def standard(self) -> HeadStats:
        return self.groups["standard"]

    def space(self, name: str) -> HeadStats:
        return self.groups[f"space:{name}"]

    def spaces(self) -> list[str]:
        """The external spaces' names."""
        return [group[6:] for group in self.groups if group.startswith("space:")]

    def add_space(self, name: str, dim: int) -> HeadStats:
        stats = self.groups[f"space:{name}"] = HeadStats(1, dim)
        return stats

    def fold(self, head_norms: np.ndarray, head_units: np.ndarray, standard: np.ndarray,
             spaces: dict[str, np.ndarray], sign: int = 1) -> None:
        """Fold N rows into (sign=1) or out of (sign=-1) every group: the heads' norms (N, H) and unit
        vectors (N, H, d), the raw standard vectors (N, D) and the external spaces' (name -> (N, D_s))."""
        n = len(standard)
        self.heads.add(head_norms, head_units, sign)
        slice_norms, slice_units = split_unit(standard.reshape(n, self.split.n_heads, -1))
        self.split.add(slice_norms, slice_units, sign)
        norms, units = split_unit(standard)
        self.standard.add(norms[:, None], units[:, None, :], sign)
        for name, vectors in spaces.items():
            norms, units = split_unit(vectors)
            self.space(name).add(norms[:, None], units[:, None, :], sign)

    def scales(self) -> dict[str, np.ndarray]:
        """Every group's scales: "heads" (H,), "split" (S,), "standard" (1,), "space:NAME" (1,)."""
        return {name: stats.scales() for name, stats in self.groups.items()}

    def zeros(self) -> ScaleSums:
        """Sums of the same shapes, empty (to recompute from the rows)."""
        return ScaleSums({name: HeadStats(g.n_heads, g.head_dim) for name, g in self.groups.items()})

    def copy(self) -> ScaleSums:
        return ScaleSums({name: HeadStats(g.n_heads, g.head_dim, g.count, g.norm_sum.copy(), g.unit_sum.copy())
                          for name, g in self.groups.items()})

    def drift(self, fresh: ScaleSums) -> float:
        """The largest relative error of any group against sums recomputed from the rows (`drift`)."""
        return max(drift(self.groups[name], fresh.groups[name]) for name in self.groups)

    def to_json(self) -> dict[str, Any]:
        return {name: stats.to_json() for name, stats in self.groups.items()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ScaleSums:
        return cls({name: HeadStats.from_json(group) for name, group in data.items()})


def drift(kept: HeadStats, fresh: HeadStats) -> float:
    """How far running sums are from sums recomputed from the rows: the largest relative error of the
    count, the norm sums and the unit sums (0.0 when they agree)."""

    def rel(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.linalg.norm(a - b) / max(float(np.linalg.norm(b)), 1e-12)) if np.any(a != b) else 0.0

    return max(rel(np.array([kept.count]), np.array([fresh.count])),
               rel(kept.norm_sum, fresh.norm_sum), rel(kept.unit_sum, fresh.unit_sum))


def brute_force_scales(heads: np.ndarray) -> np.ndarray:
    """The O(N^2) definition, for tests and as documentation.  (N, H, d) -> (H,)."""
    norms, units = split_unit(np.asarray(heads, dtype=np.float64))
    out = []
    for i in range(heads.shape[1]):
        u = units[:, i, :].astype(np.float64)  # (N, d)
        cos = u @ u.T  # (N, N)
        out.append(norms[:, i].mean() * (1.0 - cos).mean())
    return np.array(out)
