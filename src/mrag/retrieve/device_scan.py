"""Exact search on a torch device (a GPU): the matrix copied to the device once, every space's products
and each block's best rows computed there in fp32, the few candidates ranked on the CPU by `exact.best_of`
(ties to the smaller row, as the CPU scan breaks them).

The device is the embedder's when that is a GPU (`mrag index/search --device cuda`, or "auto" finding
one), or what MRAG_SCAN_DEVICE names ("cpu" keeps the scan on the CPU). The rows and scores are those of
the CPU's fp32 scan up to the products' last bits (another BLAS sums in another order), so two rows that
score within them may swap. A matrix that does not fit the device's memory is scanned on the CPU, with
one warning. `DeviceExact` is a `types.Ranker`; tests run it on the CPU (`device="cpu"`).
"""

from __future__ import annotations

import os
import threading
import warnings
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from mrag.retrieve.exact import Exact, best_of
from mrag.retrieve.types import QueryVectors, Voter
from mrag.scales import split_width

SCAN_VARIABLE = "MRAG_SCAN_DEVICE"
BLOCK_BYTES = 256 * 2**20  # a block's similarities, all lines, on the device

_copies: dict[int, tuple[weakref.ref[np.ndarray], str, torch.Tensor]] = {}  # id(array) -> (array, device, copy)
_too_large: dict[int, weakref.ref[np.ndarray]] = {}  # id(heads) -> heads: matrices that did not fit the device
_copies_lock = threading.Lock()


def scan_device(embedder_device: str | None = None) -> str:
    """Where the exact scan runs: MRAG_SCAN_DEVICE when set, else the embedder's device when it is a GPU
    ("cuda", "cuda:1"), else "cpu"."""
    named = os.environ.get(SCAN_VARIABLE, "").strip()
    if named:
        try:
            asked = torch.device(named)
        except RuntimeError:
            raise ValueError(f"{SCAN_VARIABLE} must name a torch device (cpu, cuda, cuda:1), got {named!r}") from None
        usable = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if asked.type == "cuda" and (asked.index or 0) >= usable:
            raise ValueError(f"{SCAN_VARIABLE}={named}, but torch can use {usable} CUDA devices here")
        return named
    device = str(embedder_device or "cpu")
    return device if device.startswith("cuda") else "cpu"


def _forget(table: dict[int, Any], key: int) -> Callable[[Any], None]:
    """A weakref callback dropping `key` from `table` (which it holds: it may run at interpreter exit)."""
    return lambda _: table.pop(key, None) and None


def exact_ranker(standard: np.ndarray, heads: np.ndarray, extra: dict[str, np.ndarray] | None,
                 device: str) -> Exact | DeviceExact:
    """The exact ranker for a scan on `device` (`scan_device`): the CPU's `Exact`, or `DeviceExact`."""
    return Exact(standard, heads, extra) if device == "cpu" else DeviceExact(standard, heads, extra, device)


def on_device(array: np.ndarray, device: str) -> torch.Tensor:
    """The array as a tensor on `device`, copied once per array object and dropped with it (an index's
    matrix is loaded once and searched many times); on the CPU the array itself, shared."""
    if torch.device(device).type == "cpu":
        return torch.from_numpy(array if array.flags.writeable else np.array(array))
    key = id(array)
    with _copies_lock:
        found = _copies.get(key)
        if found is not None and found[0]() is array and found[1] == device:
            return found[2]
        copy = copied(array, device)
        _copies[key] = (weakref.ref(array, _forget(_copies, key)), device, copy)
        return copy


def copied(array: np.ndarray, device: str) -> torch.Tensor:
    """A copy of the array (N, D) or (H, N, d) on `device`, holding no reference to it; heads copied one
    at a time (a matrix's heads are a view of larger arrays: a contiguous CPU copy of all would be made)."""
    copy = torch.empty(array.shape, dtype=torch.float32, device=device)
    for i, part in enumerate(array if array.ndim == 3 else [array]):
        (copy[i] if array.ndim == 3 else copy).copy_(torch.from_numpy(np.ascontiguousarray(part, np.float32)))
    return copy


class DeviceExact:
    """Exact search with the products on `device`; where the device cannot hold the matrix (out of
    memory), `Exact`'s fp32 CPU scan. standard (N, D), heads (H, N, d), extra: name -> (N, D_s), as `Exact`."""

    def __init__(self, standard: np.ndarray, heads: np.ndarray, extra: dict[str, np.ndarray] | None = None,
                 device: str = "cuda"):
        self.standard, self.heads, self.extra, self.device = standard, heads, extra or {}, device
        self.cpu = Exact(standard, heads, extra, precision="fp32")

    def __call__(self, chosen: list[Voter], queries: list[QueryVectors], c: int) -> tuple[np.ndarray, np.ndarray]:
        key = id(self.heads)
        refused = _too_large.get(key)
        if not queries or self.heads.shape[1] == 0 or (refused is not None and refused() is self.heads):
            return self.cpu(chosen, queries, c)
        if any(v.group == "heads" for v in chosen) and self.heads.shape[2] == 0:
            raise ValueError("the matrix was loaded without its heads (Store.matrix(heads=True) loads them)")
        try:
            return self.ranked(chosen, queries, c)
        except torch.OutOfMemoryError as error:  # this matrix is scanned on the CPU from now on
            with _copies_lock:
                for array in (self.standard, self.heads, *self.extra.values()):
                    _copies.pop(id(array), None)
                _too_large[key] = weakref.ref(self.heads, _forget(_too_large, key))
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            warnings.warn(f"the exact scan does not fit {self.device} ({error}); this matrix is scanned on the CPU",
                          RuntimeWarning, stacklevel=2)
            return self.cpu(chosen, queries, c)

    def ranked(self, chosen: list[Voter], queries: list[QueryVectors], c: int) -> tuple[np.ndarray, np.ndarray]:
        """Each (part, voter)'s c best rows: (P, V, c) rows and similarities, as `Exact`."""
        p, n = len(queries), self.heads.shape[1]
        values, rows = [], []
        for v in chosen:  # one voter's P lines at a time: a few products, each over every row
            best_values, best_rows = block_best(self.similarity_source(v, queries), n, p, c + 1)
            values.append(best_values)
            rows.append(best_rows)
        ranking, similar = best_of(torch.cat(values).cpu().numpy(), torch.cat(rows).cpu().numpy(), c,
                                   lambda j: self.full_row(chosen[j // p], queries, j % p))
        return ranking.reshape(-1, p, c).transpose(1, 0, 2), similar.reshape(-1, p, c).transpose(1, 0, 2)

    def similarity_source(self, voter: Voter, queries: list[QueryVectors]) -> Callable[[int, int], torch.Tensor]:
        """A function (start, stop) -> the voter's cosines of those rows for every part, (P, B) on the device."""
        if voter.group == "heads":
            rows = on_device(self.heads, self.device)[voter.index]  # (N, d), a view
            q = np.stack([part.heads[voter.index] for part in queries])
        elif voter.group == "split":
            width = split_width(self.standard.shape[1], len(self.heads))
            columns = slice(voter.index * width, (voter.index + 1) * width)
            standard = on_device(self.standard, self.device)
            q = np.stack([part.standard[columns] for part in queries])
            q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
            lines = torch.from_numpy(np.ascontiguousarray(q, dtype=np.float32)).to(self.device)

            def split(start: int, stop: int) -> torch.Tensor:
                x = standard[start:stop, columns]
                unit = x / torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min(1e-12)  # as `strategies.unit`
                return lines @ unit.T

            return split
        else:
            vectors = self.standard if voter.group == "standard" else self.extra[voter.group]
            rows = on_device(vectors, self.device)
            q = np.stack([part.standard if voter.group == "standard" else part.extra[voter.group] for part in queries])
        lines = torch.from_numpy(np.ascontiguousarray(q, dtype=np.float32)).to(self.device)  # (P, d)
        return lambda start, stop: lines @ rows[start:stop].T

    def full_row(self, voter: Voter, queries: list[QueryVectors], part: int) -> np.ndarray:
        """All N similarities of one voter for one part (ranking a tie at the cut), from the products
        of the scan (every part, the same blocks), whose sums may differ from a product of other shapes."""
        sims, n = self.similarity_source(voter, queries), self.heads.shape[1]
        step = block_step(len(queries))
        row = torch.cat([sims(start, min(start + step, n))[part] for start in range(0, n, step)])
        return row.double().cpu().numpy()  # NaN kept, as `Exact.full_row`: `best_of` never picks it


def block_step(p: int) -> int:
    """Rows per block for p lines: their similarities fill about BLOCK_BYTES."""
    return max(1, BLOCK_BYTES // (4 * max(p, 1)))


def block_best(
    sims: Callable[[int, int], torch.Tensor], n: int, p: int, keep: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each of p lines' best `keep` rows over n rows scored a block at a time by `sims(start, stop)` -> (p, B):
    values and rows (p, K), best first; -inf and -1 where a line has fewer (NaN similarities never rank).
    The union of every block's best `keep` holds the best `keep` of all rows."""
    step = block_step(p)
    values, rows = [], []
    for start in range(0, n, step):
        block = sims(start, min(start + step, n))
        block = block.masked_fill(block.isnan(), -torch.inf)
        top = torch.topk(block, min(keep, block.shape[1]), dim=1)
        values.append(top.values)
        rows.append(top.indices + start)
    value, row = torch.cat(values, 1), torch.cat(rows, 1)
    if len(values) > 1:  # the blocks' best, best first
        top = torch.topk(value, min(keep, value.shape[1]), dim=1)
        value, row = top.values, torch.gather(row, 1, top.indices)
    return value.double(), row.masked_fill(value == -torch.inf, -1)
