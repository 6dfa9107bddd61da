"""Exact top rows from a bf16 pass: scan a bf16 copy, keep every row that could place, re-score those in
fp32. For the heads, and for one space's vectors (the standard vector, an external space) as one head.

A bf16 copy is half the bytes of the fp32 vectors, and bf16 products run on the CPU's bf16 units (fp32
products of a few columns read the rows at half the memory's speed here).
A bf16 product's fp32 sum is within `error_bound` of the fp32 score (from the query's rounding error,
measured at each scan, and each head's largest one, measured when the copy is made: about 1.3 u in
all on unit vectors, u = 2^-8), and rounding it to bf16 moves it by at most u of itself; so a row of
the true top `keep` has a rounded product at least the keep-th best one less about 2 * 1.3 u + u:
every such row is kept (`HeadScan`) and scored again in fp32 with the same kernel shapes as the fp32
scan (`rescore`, `rescore_rows`), so the final ranking and scores are those of the fp32 scan
(`exact.Exact`, precision "fp32"): bit for bit for the heads (tested; one exception seen, heads only 2
or 3 wide, where a score's last bit may differ), and for a space up to the last bits where BLAS splits a
sum between more than 2 threads (a product of fewer than about 384 rows from D = 1024 splits it on 2,
so the re-score and the scan's blocks multiply at least SPACE_RESCORE_ROWS).

The copy is row-major, a row's heads side by side. A few parts (a query or two) take one product per
block against the parts laid out block-diagonally (`block_diagonal`): the zeros off a head's own block
add exact zeros, and the one wide product streams the rows at memory speed, where one narrow product
per head did not (`scan`). bf16 reductions are slow in torch; the scan takes each segment's peak on the
int16 view of the bf16 bits, whose order is the float order for values >= +0.0 (`segment_peaks`).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable

import numpy as np
import torch

from mrag.matrix import growing

BF16_UNIT = 2.0**-8  # bf16 keeps 8 significant bits: rounding to nearest moves a value by at most this, relatively
SEGMENT_ROWS = 32  # rows per segment: a block's rows are kept or skipped a segment at a time
BLOCK_BYTES = 16 * 2**20  # a block's bf16 products, all lines (at 1M rows, 6 parts: 60 ms a scan against 70 at 4 MiB)
KEPT_BYTES = 512 * 2**20  # the most memory the kept segments may take before the scan gives up (`TooManyKept`)
RESCORE_PARTS = 32  # query parts per re-scoring product (at least 2: one part takes another BLAS kernel)
SMALL_ROWS = 64  # fewer rows to a product take another BLAS kernel: the re-score pads to this, the scans avoid it
# a space's fp32 product of fewer rows may split each sum between threads (2 threads, D >= 1024: below
# about 384 rows), so its re-score pads the union of its rows to this, and no scan block is shorter
SPACE_RESCORE_ROWS = 512
# heads x parts up to which the block-diagonal product beats one product per head (it multiplies H times
# the zeros; 12 heads: at 1M rows 6 parts 48 ms against 84, 24 parts 86 against 164, 64 parts even; at
# 100k rows 48 parts 43 against 59, 96 even, 192 parts 235 against 177)
BLOCK_DIAGONAL_WORK = 768


MIN_ROWS, MIN_PRODUCTS = 20_000, 4_000_000  # below both, the bf16 pass's fixed costs outweigh what it saves


# one space's bf16 pass needs this many rows per part: with many parts the fp32 product runs near its
# peak and the pass's bookkeeping decides (192 parts: at 100k rows 2.7 ms a query against 2.2 in fp32,
# at 1M 8.5 against 18.6; 32 parts at 100k 0.47 against 0.58)
SPACE_ROWS_PER_PART = 1000
# one part of one space needs this many rows: its fp32 scan is a matrix-vector product, which reads
# the rows at memory speed too (benchmarks/results/core-one-part.md)
SPACE_ONE_PART_ROWS = 64_000


def worth_it(n: int, lines: int) -> bool:
    """Whether a bf16 pass beats the fp32 scan for n rows and this many lines (measured on 2 cores:
    6 parts at 10k rows 4.5 ms against 3.2 ms, at 30k 8.4 against 11; 192 parts at 10k 126 against 181)."""
    return n >= MIN_ROWS or n * lines >= MIN_PRODUCTS


class TooManyKept(RuntimeError):
    """More rows tie near the top than `KEPT_BYTES` holds: the caller scans in fp32 instead."""


class Bf16Copy:
    """A bf16 copy of unit heads (H, N, d), or of one space's vectors (N, D) as one head, row-major
    (N', H * d) with zero rows after the last one up to a whole segment (every block of rows is one
    contiguous matrix); for the error bound, each head's largest row norm and largest rounding error
    ||x - bf16(x)|| (H,)."""

    def __init__(self, vectors: np.ndarray, prefix: Bf16Copy | None = None, m: int = 0):
        """The copy of `vectors`; given the copy `prefix` of their first m rows, only the rows after
        those are rounded (its rows copied, its largest norms and errors carried)."""
        source = torch.from_numpy(vectors if vectors.flags.writeable else np.array(vectors))  # torch warns on read-only
        source = source[None] if source.dim() == 2 else source
        h, n, d = source.shape
        self.heads = h
        self.rows = torch.empty((-(-n // SEGMENT_ROWS) * SEGMENT_ROWS, h * d), dtype=torch.bfloat16)
        self.rows[n:] = 0  # every row below n is written below
        self.row_norm, self.row_error = torch.zeros(h, dtype=torch.float64), torch.zeros(h, dtype=torch.float64)
        if prefix is not None:
            self.rows[:m] = prefix.rows[:m]
            self.row_norm, self.row_error = prefix.row_norm.clone(), prefix.row_error.clone()
        step = max(2**22 // max(d, 1), 1)  # rows at a time: no fp32 or bf16 copy of all heads on the way
        # checked on the copy, a block at a time (all at once held 1.8 GB more at 1M rows of 384): a finite fp32
        # value past bf16's range rounds to inf, and the block-diagonal product's zeros would turn it into NaN
        # for every head of its row
        self.finite = True
        for i in range(h):
            for start in range(m, n, step):
                x = source[i, start : start + step]
                rounded = self.rows[start : start + len(x), i * d : (i + 1) * d]
                rounded.copy_(x)  # rounded to nearest
                self.finite = self.finite and bool(torch.isfinite(rounded).all())
                norm, error = largest_norms(x, x - rounded.float())  # the difference is exact in fp32
                self.row_norm[i], self.row_error[i] = max(self.row_norm[i], norm), max(self.row_error[i], error)
        if not self.finite:  # never scanned (the fp32 scan runs instead): keep no copy
            self.rows = torch.zeros((0, h * d), dtype=torch.bfloat16)


def largest_norms(x: torch.Tensor, error: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The largest row norm of x and of its rounding error, (B, d) each with B >= 1 -> two float64
    scalars. In fp32 (a quarter of float64's time), but in float64 where every row is below 2^-40:
    there the squares of the errors may underflow and hide them. Above it, what underflows (errors
    below 2^-63, sqrt(d) 2^-63 a row) is below the error bound's fp32-sum term, 2 gamma_d ||x|| >= d 2^-63."""
    norm, largest = (torch.linalg.vector_norm(v, dim=1).max().double() for v in (x, error))
    if norm < 2.0**-40:
        norm, largest = (torch.linalg.vector_norm(v.double(), dim=1).max() for v in (x, error))
    return norm, largest


_copies: dict[int, tuple[weakref.ref[np.ndarray], Bf16Copy]] = {}  # id(array) -> (array, its copy)
# id(base) of a growing array (`mrag.matrix.Rows`) -> (base, layout, rows, copy): its largest copy so far,
# kept while the base lives, since the matrix it was made for is dropped when the next one grows
_latest: dict[int, tuple[weakref.ref[np.ndarray], tuple[object, ...], int, Bf16Copy]] = {}
_copies_lock = threading.Lock()


def bf16_copy(vectors: np.ndarray) -> Bf16Copy:
    """The bf16 copy of this array (heads (H, N, d) or one space (N, D)), made once per array object and
    dropped with it (an index's matrix is loaded once and searched many times). An array of the first
    rows of growing arrays (`mrag.matrix.Rows`, a matrix grown by appended rows) extends the largest
    copy made of the same arrays' first rows: only the new rows are rounded."""
    key = id(vectors)
    with _copies_lock:
        found = _copies.get(key)
        if found is not None and found[0]() is vectors:
            return found[1]
        base = vectors.base if growing(vectors) else None
        rows, layout = vectors.shape[-2], _layout(vectors)
        prefix = _prefix_copy(base, layout, rows)
        made = Bf16Copy(vectors) if prefix is None else Bf16Copy(vectors, *prefix)
        _copies[key] = (weakref.ref(vectors, lambda _: _copies.pop(key, None)), made)
        latest = _latest.get(id(base)) if base is not None else None
        if base is not None and (latest is None or latest[0]() is not base or latest[2] <= rows):
            base_key = id(base)  # replaces the smaller copy: it lives on only while a search holds it
            _latest[base_key] = (weakref.ref(base, lambda _: _latest.pop(base_key, None)), layout, rows, made)
        return made


def _prefix_copy(base: np.ndarray | None, layout: tuple[object, ...], rows: int) -> tuple[Bf16Copy, int] | None:
    """The largest copy of at most `rows` first rows of the growing array `base` laid out as `layout`,
    and its rows; None if there is none (or it holds values past bf16's range)."""
    latest = _latest.get(id(base)) if base is not None else None
    if latest is None or latest[0]() is not base or latest[1] != layout or latest[2] > rows or not latest[3].finite:
        return None
    return latest[3], latest[2]


def _layout(vectors: np.ndarray) -> tuple[object, ...]:
    """Where an array starts and how it is laid out, all but its number of rows (axis -2)."""
    return vectors.__array_interface__["data"][0], vectors.strides, vectors.shape[:-2] + vectors.shape[-1:]


def error_bound(q: torch.Tensor, row_norm: torch.Tensor, row_error: torch.Tensor) -> torch.Tensor:
    """The most the bf16 product's fp32 sum q~.x~ (before its rounding to bf16) can differ from the fp32
    score q.x, per line (R,) float64, from the lines q (R, d) and their heads' largest row norm and
    rounding error (R,). q.x - q~.x~ = q.(x - x~) + (q - q~).x~ exactly, so Cauchy-Schwarz bounds it by
    ||q|| ||x - x~|| + ||q - q~|| ||x~||, with ||x~|| <= (1 + u) ||x||; each fp32 sum of d products
    (the score's and the product's; bf16 products are exact in fp32) adds at most gamma_d ||q|| ||x||,
    and a kernel that flushes values below 2^-126 to zero (bf16 units do) at most d 2^-126 for the
    products and the sums and d 2^-126 (||q|| + ||x||) for the inputs. About 1.3 u ||q|| ||x|| on unit
    vectors of 32 dimensions (u = 2^-8), where the coordinate-wise bound (2u + u^2) ||q|| ||x|| is 2u;
    the last factor covers the fp32 norms' own rounding."""
    d = q.shape[1]
    gamma = d * 2.0**-24 / (1 - d * 2.0**-24)
    norm = torch.linalg.vector_norm(q.double(), dim=1)
    error = torch.linalg.vector_norm(q.double() - q.to(torch.bfloat16).double(), dim=1)
    grown = row_norm.double() * (1 + BF16_UNIT)
    flushed = d * 2.0**-126 * (2 + norm + grown)
    return (norm * row_error.double() + error * grown + 2 * gamma * norm * (1 + BF16_UNIT) * grown + flushed) * (
        1 + 2.0**-10
    )


def block_rows(lines: int) -> int:
    """Rows per block for this many lines: their bf16 products fill about BLOCK_BYTES, in whole segments,
    at least SMALL_ROWS."""
    fit = BLOCK_BYTES // (2 * max(lines, 1)) // SEGMENT_ROWS * SEGMENT_ROWS
    return max(fit, SMALL_ROWS)


def block_diagonal(q: torch.Tensor, index: list[int], heads: int) -> torch.Tensor:
    """The parts of heads `index` laid out for one product with a row-major copy: q (h, P, d) ->
    (heads * d, h * P), head index[j]'s coordinates against line block j, zeros elsewhere."""
    h, p, d = q.shape
    laid = torch.zeros((heads * d, h * p), dtype=q.dtype)
    for j, i in enumerate(index):
        laid[i * d : (i + 1) * d, j * p : (j + 1) * p] = q[j].T
    return laid


def scan(copy: Bf16Copy, q: torch.Tensor, index: list[int], keep: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every (line, row) that could be in its line's true top `keep` by fp32 score: lines (K,), rows (K,),
    lines voter-major (head j of `index`, part) as q (h, P, d). Raises TooManyKept."""
    h, p, d = q.shape
    voter_of_line = torch.tensor(index).repeat_interleave(p)  # (h * P,)
    found = HeadScan(keep, n, error_bound(q.flatten(0, 1), copy.row_norm[voter_of_line], copy.row_error[voter_of_line]))
    queries = q.to(torch.bfloat16)
    step = block_rows(h * p)
    total = len(copy.rows)
    if copy.heads * p <= BLOCK_DIAGONAL_WORK:
        laid = block_diagonal(queries, index, copy.heads)  # (H * d, h * P)
        out = torch.empty((min(step, total), h * p), dtype=torch.bfloat16)  # reused: the scan copies what it keeps
        for start in range(0, total, step):
            products = torch.mm(copy.rows[start : start + step], laid, out=out[: min(step, total - start)])
            found.offer(products.view(-1, SEGMENT_ROWS, h, p), start)  # (B, h * P) as (S, seg, h, P)
    else:
        # one product per head: each block's heads copied apart first, (h, B, d) (a strided batch ran slower)
        apart = torch.empty((h, min(step, total), d), dtype=torch.bfloat16)
        out = torch.empty((h, min(step, total), p), dtype=torch.bfloat16)
        everyone = index == list(range(copy.heads))
        for start in range(0, total, step):
            rows = copy.rows[start : start + step].view(-1, copy.heads, d)  # (B, H, d)
            x = apart[:, : len(rows)]
            x.copy_((rows if everyone else rows[:, index]).transpose(0, 1))
            products = torch.bmm(x, queries.transpose(1, 2), out=out[:, : len(rows)])  # (h, B, P)
            found.offer(products.view(h, -1, SEGMENT_ROWS, p).permute(1, 2, 0, 3), start)
    return found.candidates()


def ranked(
    vectors: np.ndarray,
    q: torch.Tensor,
    index: list[int],
    keep: int,
    rescore_pairs: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Each line's best `keep` rows by fp32 score, from a bf16 scan of `vectors` (heads (H, N, d), or one
    space (N, D) as one head) and `rescore_pairs(lines, rows)`, the fp32 scores of the rows that could
    place: scores and rows (h * P, min(keep, N)), best first; q (h, P, d) for the heads `index`. None where
    the copy or the queries are not finite, or the scan kept too many rows: the caller scans in fp32."""
    copy = bf16_copy(vectors)
    if not copy.finite or not bool(torch.isfinite(q).all()):
        return None
    n = vectors.shape[-2]
    try:
        lines, rows = scan(copy, q, index, keep, n)
    except TooManyKept:
        return None
    return best_rows(lines, rows, rescore_pairs(lines, rows), q.shape[0] * q.shape[1], min(keep, n))


def segment_peaks(segments: torch.Tensor) -> torch.Tensor:
    """Each segment's peak as int16 bits: bf16 products (S, seg, h, P) -> (S, h, P). The int16 view
    orders bits as floats for values >= +0.0, and any of those above every negative value; a negative
    peak means every value of the segment is <= -0.0."""
    return segments.view(torch.int16).amax(1)


def bits_at_most(value: torch.Tensor) -> torch.Tensor:
    """int16 bits of the largest bf16 <= value (float64) where value > 0, else the lowest int16: a
    product whose fp32 sum is at least `value` rounds to at least these bits (rounding to nearest is
    monotone), and every peak reaches the lowest."""
    rounded = value.to(torch.bfloat16)  # one of value's two bf16 neighbours
    bits = rounded.view(torch.int16) - (rounded.double() > value).to(torch.int16)  # one step down if above
    return torch.where(value > 0, bits, torch.full_like(bits, -(2**15)))


def bits_value(bits: torch.Tensor) -> torch.Tensor:
    """A lower bound of the peak with these int16 bits (float64): its value, or -inf for negative bits."""
    return bits.view(torch.bfloat16).double().masked_fill(bits < 0, -torch.inf)


def kth_best(line: torch.Tensor, peak: torch.Tensor, k: int, r: int) -> torch.Tensor:
    """Each line's k-th best peak (float64, -inf where it has fewer): lines (M,) < r, int16 peaks (M,)
    -> (r,). One sort by line, then best peak first (int32 keys while lines fit: half the time)."""
    if len(line) == 0:
        return torch.full((r,), -torch.inf, dtype=torch.float64)
    key_type = torch.int32 if r <= 2**15 else torch.int64
    keys = torch.sort(line.to(key_type) * 2**16 + (2**15 - 1 - peak.to(key_type))).values
    count = torch.bincount(line, minlength=r)
    kth = (torch.cumsum(count, 0) - count + k - 1).clamp(max=len(line) - 1)
    kth_peak = (2**15 - 1 - (keys[kth].long() - torch.arange(r) * 2**16)).to(torch.int16)
    return torch.where(count >= k, bits_value(kth_peak), -torch.inf)


class HeadScan:
    """One group of heads' candidate rows, from bf16 products offered block by block.

    Each line's `floor` is a keep-th best segment peak: keep rows have a rounded product at least that
    high, so (the rounding moves a value by at most u of it, the product's sum by at most `error`) the
    line's keep-th best fp32 score is at least F = floor - u |floor| - error; a row of its true top keep
    has a sum at least F - error, hence a rounded product at least the largest bf16 <= F - error
    (`least`). A block keeps the segments whose peak reaches it. The floor is set by the first block and
    raised whenever the kept segments have doubled (a top-k per block cost more than the products):
    O(log N) times, each in time linear in what is kept."""

    def __init__(self, keep: int, n: int, error: torch.Tensor):
        self.keep, self.n, self.error = keep, n, error  # (R,) float64
        self.floor = torch.full((len(error),), -torch.inf, dtype=torch.float64)  # (R,)
        self.least = self.least_for(self.floor)  # (R,) int16
        self.kept: list[tuple[torch.Tensor, ...]] = []  # per block: line, peak bits, first row (M,); sims (M, seg)
        self.count = 0
        self.raise_at = 2 * keep * len(error)  # kept segments that raise the floor next

    def least_for(self, floor: torch.Tensor) -> torch.Tensor:
        """(R,) int16 bits: every row of a line's true top keep has a bf16 product at least this high."""
        return bits_at_most(floor - BF16_UNIT * floor.abs() - 2 * self.error)

    def raise_to(self, floor: torch.Tensor) -> None:
        """A higher floor (R,) float64, where it is higher."""
        self.floor = torch.maximum(self.floor, floor)
        self.least = self.least_for(self.floor)

    def offer(self, segments: torch.Tensor, start: int) -> None:
        """A block's bf16 products as segments (S, seg, h, P), rows start..start + S * seg (the copy's zero
        rows after the last row are set to the lowest int16, -0.0, here: no peak comes from them)."""
        s, seg, h, p = segments.shape
        padding = start + s * seg - self.n
        if padding > 0:
            segments.flatten(0, 1)[s * seg - padding :].view(torch.int16).fill_(-(2**15))
        peaks = segment_peaks(segments)  # (S, h, P)
        if not self.kept and self.count == 0:  # the first block sets the floor
            lines = peaks.reshape(s, h * p).T  # (R, S)
            if lines.shape[1] >= self.keep:
                self.raise_to(bits_value(torch.topk(lines, self.keep, dim=1).values[:, -1]))
        segment, head, part = (peaks >= self.least.view(1, h, p)).nonzero().unbind(1)  # (M,) each
        sims = segments[segment, :, head, part]  # (M, seg), a copy
        self.kept.append((head * p + part, peaks[segment, head, part], start + segment * seg, sims))
        self.count += len(segment)
        held = SEGMENT_ROWS * 2 + 32  # bytes per kept segment: bf16 sims, line, peak, first row
        if self.count > self.raise_at or self.count * held > KEPT_BYTES:
            self.raise_floor()
            self.raise_at = max(2 * self.count, self.raise_at)
            if self.count * held > KEPT_BYTES:
                raise TooManyKept(f"{self.count} segments tie near the top")

    def raise_floor(self) -> None:
        """Each line's floor from the keep-th best peak it kept, and forget the segments below `least`.
        Every segment of a line's keep best so far was kept: its peak reached the floor."""
        if not self.kept:
            return
        line, peak, first, sims = (torch.cat(part) for part in zip(*self.kept))
        self.raise_to(kth_best(line, peak, self.keep, len(self.floor)))
        stay = (peak >= self.least[line]).nonzero().squeeze(1)
        self.kept = [tuple(x.index_select(0, stay) for x in (line, peak, first, sims))]
        self.count = len(stay)

    def candidates(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every (line, row) that could be in its line's true top keep: lines (K,), rows (K,)."""
        self.raise_floor()  # leaves the kept segments in one block, or none
        if not self.kept:
            return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
        line, _, first, sims = self.kept[0]
        at, offset = (sims.view(torch.int16) >= self.least[line, None]).nonzero().unbind(1)  # (M, seg) -> (K,)
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


def rescore_rows(queries: torch.Tensor, vectors: torch.Tensor, parts: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """fp32 scores of (part, row) pairs of one space as its fp32 scan computes them: queries (P, D),
    P >= 2, vectors (N, D), parts (K,), rows (K,) -> (K,). All P parts against the union of the rows
    (padded to SPACE_RESCORE_ROWS) in one product: the scan's product of P columns, whose sum for a row
    does not depend on the other rows on 2 threads where both multiply that many rows at least (up to
    its last bits on more threads; one part takes a matrix-vector product there, whose sums differ)."""
    if len(rows) == 0:
        return torch.zeros(0, dtype=vectors.dtype)
    union, position = torch.unique(rows, return_inverse=True)
    padded = torch.cat([union, union[:1].expand(max(SPACE_RESCORE_ROWS - len(union), 0))])
    scores = torch.mm(vectors[padded], queries.to(vectors.dtype).T)  # (U, P)
    found = scores[position, parts]
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
