"""The heads' exact top rows from a bf16 pass: scan a bf16 copy, keep every row that could place, re-score
those in fp32.

A bf16 copy of the heads is half the bytes of the fp32 ones, and bf16 products run on the CPU's bf16 units.
Each approximate score is within `error_bound` of the fp32 one, so a row of the true top `keep` scores at
least the keep-th best approximate score less twice that bound: every such row is kept (`HeadScan`) and
scored again in fp32 with the same kernel shapes as the fp32 scan (`rescore`), so the final ranking and
scores are those of the fp32 scan (`exact.Exact`, precision "fp32"), tested bit for bit.

bf16 reductions are slow in torch; the scan takes each segment's peak on the int16 view of the bf16 bits,
whose order is the float order for values >= +0.0 (`peak_bounds`).
"""

from __future__ import annotations

import threading
import weakref

import numpy as np
import torch

BF16_UNIT = 2.0**-8  # bf16 keeps 8 significant bits: rounding to nearest moves a value by at most this, relatively
SEGMENT_ROWS = 32  # rows per segment: a block's rows are kept or skipped a segment at a time
CHUNK_ROWS = 1024  # the bf16 copy is stored chunk-major, (C, H, CHUNK_ROWS, d): a block of chunks is contiguous
BLOCK_BYTES = 16 * 2**20  # a block's bf16 products, all lines (fewer, larger blocks: fewer small steps)
KEPT_BYTES = 512 * 2**20  # the most memory the kept segments may take before the scan gives up (`TooManyKept`)
RESCORE_PARTS = 32  # query parts per re-scoring product (at least 2: one part takes another BLAS kernel)
SMALL_ROWS = 64  # fewer rows to a product take another BLAS kernel: the re-score pads to this, the scans avoid it


MIN_ROWS, MIN_PRODUCTS = 20_000, 4_000_000  # below both, the bf16 pass's fixed costs outweigh what it saves


def worth_it(n: int, lines: int) -> bool:
    """Whether a bf16 pass beats the fp32 scan for n rows and this many lines (measured on 2 cores:
    6 parts at 10k rows 4.5 ms against 3.2 ms, at 30k 8.4 against 11; 192 parts at 10k 126 against 181)."""
    return n >= MIN_ROWS or n * lines >= MIN_PRODUCTS


class TooManyKept(RuntimeError):
    """More rows tie near the top than `KEPT_BYTES` holds: the caller scans in fp32 instead."""


class Bf16Heads:
    """A bf16 copy of unit heads (H, N, d), chunk-major (C, H, CHUNK_ROWS, d) with zero rows after the
    last one (bmm reads a contiguous batch several times faster than a strided one), and each head's
    largest row norm (H,) for the error bound."""

    def __init__(self, heads: np.ndarray):
        source = torch.from_numpy(heads if heads.flags.writeable else np.array(heads))  # torch warns on read-only
        h, n, d = source.shape
        self.finite = bool(torch.isfinite(source).all())
        self.copy = torch.zeros((-(-n // CHUNK_ROWS), h, CHUNK_ROWS, d), dtype=torch.bfloat16)
        whole = n // CHUNK_ROWS  # chunks without padding
        for i in range(h):  # one head at a time: no fp32 or bf16 copy of all heads on the way; rounded to nearest
            self.copy[:whole, i] = source[i, : whole * CHUNK_ROWS].unflatten(0, (whole, CHUNK_ROWS))
            self.copy[whole:, i, : n - whole * CHUNK_ROWS] = source[i, whole * CHUNK_ROWS :]
        self.row_norm = torch.linalg.vector_norm(source, dim=2).amax(1) if n else torch.zeros(h)


_copies: dict[int, tuple[weakref.ref[np.ndarray], Bf16Heads]] = {}
_copies_lock = threading.Lock()


def bf16_heads(heads: np.ndarray) -> Bf16Heads:
    """The bf16 copy of this heads array, made once per array object and dropped with it (an index's
    matrix is loaded once and searched many times)."""
    key = id(heads)
    with _copies_lock:
        found = _copies.get(key)
        if found is not None and found[0]() is heads:
            return found[1]
        made = Bf16Heads(heads)
        _copies[key] = (weakref.ref(heads, lambda _: _copies.pop(key, None)), made)
        return made


def error_bound(query_norms: torch.Tensor, row_norm: torch.Tensor) -> torch.Tensor:
    """The most a bf16 score q~.x~ (fp32 sums, rounded to bf16) can differ from q.x, per line (R,), from
    ||q|| (R,) and each line's largest row norm (R,). Rounding q and x moves q.x by at most
    (2u + u^2) |q||x| (Cauchy-Schwarz on the elementwise products), the fp32 sum of d products adds
    about d * 2^-24 of it, and rounding the result to bf16 u of it: together under 4u ||q|| ||x||."""
    return 4 * BF16_UNIT * query_norms * row_norm


def block_chunks(lines: int) -> int:
    """Chunks per block for this many lines: their bf16 products fill about BLOCK_BYTES (at least one)."""
    return max(BLOCK_BYTES // (2 * CHUNK_ROWS * max(lines, 1)), 1)


def segment_peaks(products: torch.Tensor) -> torch.Tensor:
    """Each segment's peak as int16 bits: bf16 products (k, h, R, P) of k chunks -> (k, h, R / seg, P).
    The int16 view orders bits as floats for values >= +0.0, and any of those above every negative
    value; a negative peak means every value of the segment is <= -0.0."""
    return products.view(torch.int16).unflatten(2, (-1, SEGMENT_ROWS)).amax(3)


def bits_at_least(value: torch.Tensor) -> torch.Tensor:
    """int16 bits that a segment's peak bits reach whenever its peak may reach `value` (float): those of
    the smallest bf16 >= value when value > 0, else the lowest int16 (every segment: a peak with
    negative bits is below 0, unknown below that)."""
    rounded = value.to(torch.bfloat16)
    bits = rounded.view(torch.int16) + (rounded.float() < value).to(torch.int16)  # one bf16 step up if below
    return torch.where(value > 0, bits, torch.full_like(bits, -(2**15)))


def bits_value(bits: torch.Tensor) -> torch.Tensor:
    """A lower bound of the peak with these int16 bits: its value, or -inf for negative bits."""
    return bits.view(torch.bfloat16).float().masked_fill(bits < 0, -torch.inf)


class HeadScan:
    """One group of heads' candidate rows, from bf16 products offered block by block.

    Each line's `floor` is a keep-th best segment peak (a lower bound): keep rows score at least that
    much, so the keep-th best approximate score is at least it, and a row of the true top keep scores at
    least floor - 2 * error (`threshold`). A block keeps the segments whose peak may reach the threshold.
    The floor is set by the first block and raised whenever the kept segments have doubled (a top-k per
    block cost more than the products): O(log N) times, each in time linear in what is kept."""

    def __init__(self, keep: int, n: int, error: torch.Tensor):
        self.keep, self.n, self.margin = keep, n, 2 * error  # (R,)
        self.floor = torch.full((len(error),), -torch.inf)  # (R,)
        self.kept: list[tuple[torch.Tensor, ...]] = []  # per block: line, peak bits, first row (M,); sims (M, seg)
        self.count = 0
        self.raise_at = 2 * keep * len(error)  # kept segments that raise the floor next

    def threshold(self) -> torch.Tensor:
        """(R,): every row of the true top keep scores at least this, approximately."""
        return self.floor - self.margin

    def offer(self, products: torch.Tensor, start: int) -> None:
        """bf16 products (k, h, R, P) of k chunks, rows start..start + k * R (the copy's zero rows after
        the last row are set to the lowest int16, -0.0, here: no peak comes from them)."""
        k, h, rows, p = products.shape
        padding = start + k * rows - self.n
        if padding > 0:
            products[-1, :, rows - padding :].view(torch.int16).fill_(-(2**15))
        peaks = segment_peaks(products)  # (k, h, S', P)
        if not self.kept and self.count == 0:  # the first block sets the floor
            lines = peaks.permute(1, 3, 0, 2).reshape(h * p, -1)  # (R, S)
            if lines.shape[1] >= self.keep:
                self.floor = bits_value(torch.topk(lines, self.keep, dim=1).values[:, -1])
        least = bits_at_least(self.threshold()).view(1, h, 1, p)
        chunk, head, segment, part = (peaks >= least).nonzero().unbind(1)  # (M,) each
        sims = products.unflatten(2, (-1, SEGMENT_ROWS))[chunk, head, segment, :, part]  # (M, seg), a copy
        first = start + (chunk * peaks.shape[2] + segment) * SEGMENT_ROWS
        self.kept.append((head * p + part, peaks[chunk, head, segment, part], first, sims))
        self.count += len(chunk)
        held = SEGMENT_ROWS * 2 + 32  # bytes per kept segment: bf16 sims, line, peak, first row
        if self.count > self.raise_at or self.count * held > KEPT_BYTES:
            self.raise_floor()
            self.raise_at = max(2 * self.count, self.raise_at)
            if self.count * held > KEPT_BYTES:
                raise TooManyKept(f"{self.count} segments tie near the top")

    def raise_floor(self) -> None:
        """Each line's floor from the keep-th best peak it kept, and forget the segments below the
        threshold. Every segment of a line's keep best so far was kept: its peak reached the floor."""
        if not self.kept:
            return
        line, peak, first, sims = (torch.cat(part) for part in zip(*self.kept))
        keys = torch.sort(line * 2**16 + (2**15 - 1 - peak.long())).values  # by line, then best peak first
        count = torch.bincount(line, minlength=len(self.floor))
        kth = (torch.cumsum(count, 0) - count + self.keep - 1).clamp(max=len(line) - 1)  # each line's keep-th best
        kth_peak = (2**15 - 1 - (keys[kth] - torch.arange(len(count)) * 2**16)).to(torch.int16)
        self.floor = torch.where(count >= self.keep, torch.maximum(self.floor, bits_value(kth_peak)), self.floor)
        stay = peak >= bits_at_least(self.threshold())[line]
        self.kept = [(line[stay], peak[stay], first[stay], sims[stay])]
        self.count = int(stay.sum())

    def candidates(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every (line, row) that could be in its line's true top keep: lines (K,), rows (K,)."""
        self.raise_floor()
        if not self.kept:
            return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
        line, _, first, sims = self.kept[0]
        near = sims.float() >= self.threshold()[line, None]  # (M, seg)
        at, offset = near.nonzero().unbind(1)
        rows = first[at] + offset
        inside = rows < self.n  # the last block's padding
        return line[at][inside], rows[inside]


def rescore(
    queries: torch.Tensor, heads: torch.Tensor, members: list[int], lines: torch.Tensor, rows: torch.Tensor
) -> torch.Tensor:
    """fp32 scores of (line, row) pairs: queries (h, P, d) for the heads `members` (h indexes into heads
    (H, N, d)), lines (K,) voter-major as the scan's, rows (K,) -> (K,).

    One batched product per member and group of RESCORE_PARTS parts, over the union of that group's
    rows, with at least 2 parts and SMALL_ROWS rows: BLAS then takes the kernel of the scan (which also
    pads one part to two, and scans no block of fewer rows), whose sums come out bit for bit the same."""
    queries = queries.to(heads.dtype)  # as the fp32 scan multiplies
    h, p, d = queries.shape
    width = min(max(p, 2), RESCORE_PARTS)  # parts per product
    groups_per_member = -(-p // width)
    padded = torch.cat([queries, queries[:, :1].expand(h, groups_per_member * width - p, d)], 1)
    q = padded.reshape(h * groups_per_member, width, d)  # (G, width, d)
    group = (lines // p) * groups_per_member + (lines % p) // width  # (K,)
    n = heads.shape[1]
    union, position = torch.unique(group * n + rows, return_inverse=True)  # sorted by group, then row
    union_group = union // n
    count = torch.bincount(union_group, minlength=len(q))
    first = torch.cumsum(count, 0) - count
    slot = torch.arange(len(union)) - first[union_group]  # each unique row's place in its group
    taken = torch.zeros(len(q), max(int(count.max()) if len(count) else 0, SMALL_ROWS), dtype=torch.long)  # row 0 pads
    taken[union_group, slot] = union % n
    member_of_group = torch.tensor(members).repeat_interleave(groups_per_member)  # (G,)
    x = heads[member_of_group[:, None], taken]  # (G, U, d)
    scores = torch.bmm(q, x.transpose(1, 2))  # (G, width, U)
    found = scores[group, (lines % p) % width, slot[position]]
    return found.masked_fill_(found.isnan(), -torch.inf)


def best_rows(
    lines: torch.Tensor, rows: torch.Tensor, scores: torch.Tensor, r: int, width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each line's `width` best (line, row, score) candidates: (R, width) scores and rows, best first;
    -inf and -1 where a line has fewer (rows whose fp32 score is NaN)."""
    order = torch.argsort(lines, stable=True)
    lines, rows, scores = lines[order], rows[order], scores[order]
    count = torch.bincount(lines, minlength=r)
    slot = torch.arange(len(lines)) - (torch.cumsum(count, 0) - count)[lines]
    held = max(int(count.max()) if len(count) else 0, width)
    laid = torch.full((r, held), -torch.inf, dtype=scores.dtype)
    laid_rows = torch.full((r, held), -1, dtype=torch.long)
    laid[lines, slot], laid_rows[lines, slot] = scores, rows
    top = torch.topk(laid, width, dim=1)
    found = torch.gather(laid_rows, 1, top.indices)
    return top.values, found.masked_fill_(top.values == -torch.inf, -1)
