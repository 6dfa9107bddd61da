"""Exact search in memory: every space's c nearest rows for all query parts at once.

The vectors live head-major, (H, N, d), so each head is one contiguous matrix; one batched GEMM
scores all heads of all parts (and of every query of a batch), one GEMM the standard vectors, and
one `torch.topk` picks each space's top c. `Exact` is a `mrag.retrieve.Ranker`; `mrag.ann` is the
approximate one.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from mrag.retrieve import QueryVectors, Voter, unit
from mrag.scales import split_width

SCORE_BYTES = 512 * 2**20  # the most memory one exact scan's similarities may take


def top_c(similarities: np.ndarray, c: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's c best columns, best first, ties to the smaller column.  (R, N) -> (R, c) ids, sims.

    torch.topk does the selection (multi-threaded); a row whose c-th and (c+1)-th values tie is
    redone with a stable sort, so the result never depends on the selection's order."""
    r, n = similarities.shape
    c_eff = min(c, n)
    ranking = np.full((r, c), -1, dtype=np.int64)
    sims = np.full((r, c), -np.inf)
    if c_eff == 0 or r == 0:
        return ranking, sims
    scores = _tensor(np.ascontiguousarray(similarities))
    top = torch.topk(scores, min(c_eff + 1, n), dim=1)  # sorted, descending
    values, found = top.values.numpy(), top.indices.numpy()
    for j in range(r):
        if c_eff < n and values[j, c_eff - 1] == values[j, c_eff]:
            row = similarities[j]
            order = np.lexsort((np.arange(n), -row))[:c_eff]  # a tie at the cut: stable full sort
        else:
            cand = found[j, :c_eff]
            order = cand[np.lexsort((cand, -values[j, :c_eff]))]
        ranking[j, :c_eff] = order
        sims[j, :c_eff] = similarities[j, order]
    return ranking, sims


class Exact:
    """Exact search on vectors in memory: one pass over each matrix for all query parts at once.

    standard (N, D) and heads (H, N, d) unit vectors, head-major so each head is one contiguous
    matrix; extra: external space -> (N, D_s) unit vectors."""

    def __init__(self, standard: np.ndarray, heads: np.ndarray, extra: dict[str, np.ndarray] | None = None):
        self.standard, self.heads, self.extra = standard, heads, extra or {}

    def __call__(self, chosen: list[Voter], queries: list[QueryVectors], c: int) -> tuple[np.ndarray, np.ndarray]:
        if not queries or self.heads.shape[1] == 0:  # nothing to rank
            shape = (len(queries), len(chosen), c)
            return np.full(shape, -1, dtype=np.int64), np.full(shape, -np.inf)
        # the similarities of a batch are S x P x N floats: score at most ~SCORE_BYTES of them at a time
        step = max(1, SCORE_BYTES // (4 * len(chosen) * max(1, self.heads.shape[1])))
        if len(queries) > step:
            done = [self(chosen, queries[i : i + step], c) for i in range(0, len(queries), step)]
            return np.concatenate([r for r, _ in done]), np.concatenate([s for _, s in done])
        blocks: dict[str, np.ndarray] = {}  # group -> (S_g, P, N) similarities
        by_group: dict[str, list[Voter]] = {}
        for v in chosen:
            by_group.setdefault(v.group, []).append(v)
        for group, members in by_group.items():
            if group == "heads":
                blocks[group] = self.head_similarities([v.index for v in members], queries)
            elif group == "split":
                blocks[group] = self.slice_similarities([v.index for v in members], queries)
            else:
                matrix = self.standard if group == "standard" else self.extra[group]
                q = np.stack([p.standard if group == "standard" else p.extra[group] for p in queries])
                blocks[group] = _matmul(q, matrix)[None]  # (1, P, N)
        # `voters` lists each group's members together, so the groups' blocks line up with `chosen`
        p, n = len(queries), self.heads.shape[1]
        ranked = [top_c(blocks[g].reshape(-1, n), c) for g in by_group]  # (S_g * P, c) each
        ranking = np.concatenate([r.reshape(-1, p, c) for r, _ in ranked]).transpose(1, 0, 2)
        sims = np.concatenate([s.reshape(-1, p, c) for _, s in ranked]).transpose(1, 0, 2)
        return ranking, sims

    def head_similarities(self, heads: list[int], queries: list[QueryVectors]) -> np.ndarray:
        """Cosine per head and part for every row: one batched matmul.  -> (len(heads), P, N)."""
        matrix = self.heads if heads == list(range(len(self.heads))) else self.heads[heads]
        q = np.stack([p.heads[heads] for p in queries], axis=1).astype(matrix.dtype)  # (h, P, d)
        return torch.bmm(_tensor(q), _tensor(matrix).transpose(1, 2)).numpy()

    def slice_similarities(self, slices: list[int], queries: list[QueryVectors]) -> np.ndarray:
        """Cosine per slice of the standard embedding (the paper's Split-RAG).  -> (len(slices), P, N)."""
        width = split_width(self.standard.shape[1], len(self.heads))  # as the store's split statistics
        out = []
        for s in slices:
            rows = unit(self.standard[:, s * width : (s + 1) * width])  # (N, w)
            q = unit(np.stack([p.standard[s * width : (s + 1) * width] for p in queries]))  # (P, w)
            out.append(_matmul(q, rows))
        return np.stack(out)


def _matmul(queries: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """queries @ rows.T through torch.  (P, D), (N, D) -> (P, N)

    Computed as rows @ queries.T, which streams the rows once (3x faster than the other order at
    200k rows, 6 parts). All products of a search go through torch: mixing numpy's BLAS threads
    with torch's made each pool spin while the other worked (8 ms instead of 0.1 ms at 2k rows)."""
    return (_tensor(rows) @ _tensor(queries.astype(rows.dtype)).T).T.contiguous().numpy()


def _tensor(array: np.ndarray) -> torch.Tensor:
    """A tensor sharing the array's memory; read-only arrays (LanceDB's) are fine: nothing writes."""
    return torch.from_numpy(array)


# torch warns once about read-only arrays; a module-level filter is thread-safe, catch_warnings is not
warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning)
