"""Exact search in memory: every space's c nearest rows for all query parts at once.

The vectors live head-major, (H, N, d), so each head is one contiguous matrix. The rows are scanned
in blocks sized to stay in cache: per block, one batched GEMM scores all heads of all parts (and of
every query of a batch) and one GEMM the standard vectors. A block is not ranked row by row: each
line (voter x part) takes the best similarity of every segment of SEGMENT_ROWS rows, and only the
segments whose peak reaches the line's (c+1)-th best peak so far are kept (`Candidates`): c + 1
segments hold a row at least that good, so no row of another segment can place. The few kept rows
are ranked once at the end (`best_of`). A block thus costs its products and one max pass; a top-k
over every row cost more than the products for the heads' 384 lines of a batch of 32 queries.
With precision "bf16" (the default where the CPU has bf16 kernels) the heads, and a space searched
with two parts or more (or with one, from `lowprec.SPACE_ONE_PART_ROWS` rows), are scanned from a bf16
copy instead and the rows that could place re-scored in fp32 (`lowprec`): the same rows and scores, but
a space's scores up to their last bits (and its rows where two score within them). `Exact` is a
`types.Ranker`; `ann.AnnRanker` is the approximate one.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection
from typing import Any

import numpy as np
import torch

from mrag.retrieve import lowprec
from mrag.retrieve.strategies import unit
from mrag.retrieve.strategies import vote as retrieve_vote
from mrag.retrieve.types import QueryVectors, Result, Scales, Voter
from mrag.scales import split_width
from mrag.settings import cpu_has_bf16_kernels

SCORE_BYTES = 512 * 2**20  # the most memory a scan's candidates may take
BLOCK_ROWS = 65_536  # the most rows scored at a time
BLOCK_BYTES = 12 * 2**20  # a block's similarities, all lines: about what the L3 cache holds
SEGMENT_ROWS = 32  # rows per segment: a block's rows are kept or skipped a segment at a time
PRECISIONS = ("bf16", "fp32")  # the scan: a bf16 pass re-scored in fp32 (`lowprec`), or fp32
# bf16 gives fp32's rows and scores (a space's up to the last bits; tested) and was faster (core-lowprec*.md):
# the default where the CPU has bf16 kernels, fp32 elsewhere (`default_precision`)
DEFAULT_PRECISION = "bf16"
PRECISION_VARIABLE = "MRAG_EXACT_PRECISION"  # fp32: no bf16 copies (half the bytes of what they copy)


def default_precision() -> str:
    """bf16 where torch has bf16 kernels for this CPU (oneDNN's: x86 with AVX-512 and up, Arm with BF16),
    else fp32: on an AVX2-only CPU (an AMD EPYC, torch 2.13) the bf16 scan of 141k rows for a six-part
    query took 219 ms against fp32's 20.1 for `segment+standard`, 2,773 against 44.7 for `mrag`
    (benchmarks/results/precision-cpu.md). Not measured on an AVX-512 CPU without native bf16, where
    oneDNN converts."""
    return DEFAULT_PRECISION if cpu_has_bf16_kernels() else "fp32"


def precision_from_env() -> str:
    """The exact scan's precision the environment asks for (MRAG_EXACT_PRECISION), else `default_precision`."""
    value = os.environ.get(PRECISION_VARIABLE, "").strip() or default_precision()
    if value not in PRECISIONS:
        raise ValueError(f"{PRECISION_VARIABLE} must be one of {', '.join(PRECISIONS)}, got {value!r}")
    return value


def best_of(
    values: np.ndarray, rows: np.ndarray, c: int, full_row: Callable[[int], np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Each line's c best rows among its candidates, best first, ties to the smaller row.
    (R, K) candidate similarities and rows -> (R, c) rows, sims; -1 / -inf pad lines with fewer.

    Candidates are c + 1 best rows, so a line whose c-th and (c+1)-th candidates tie may have lost
    tied rows: it is ranked again from `full_row(line)`, all N similarities, with a
    stable sort, so the result never depends on the blocks or on the selection's order. (Up to the
    products' last bit: BLAS may round the same dot product an ulp apart at another row position, so
    two copies of a chunk can come out an ulp apart, with any block size.)"""
    r, k = values.shape
    c_eff = min(c, k)
    ranking = np.full((r, c), -1, dtype=np.int64)
    sims = np.full((r, c), -np.inf)
    if r == 0 or c_eff == 0:
        return ranking, sims
    top = torch.topk(_tensor(np.ascontiguousarray(values)), min(c + 1, k), dim=1)  # sorted, descending
    best, at = top.values.numpy(), np.take_along_axis(rows, top.indices.numpy(), axis=1)
    order = np.lexsort((at[:, :c_eff], -best[:, :c_eff]), axis=1)  # each line: best first, then smaller row
    ranking[:, :c_eff] = np.take_along_axis(at[:, :c_eff], order, axis=1)
    sims[:, :c_eff] = np.take_along_axis(best[:, :c_eff], order, axis=1)
    tied = np.flatnonzero(best[:, c_eff - 1] == best[:, c_eff]) if c_eff < k else np.zeros(0, np.int64)
    for j in tied:  # a tie at the cut: the stable order of the full row decides
        row = full_row(int(j))
        cut = best[j, c_eff - 1]  # the c-th value; rows below it (less an ulp's margin) cannot place
        near = np.flatnonzero(row >= cut - 1e-6 * max(1.0, abs(float(cut))))
        picked = near[np.lexsort((near, -row[near]))][:c]
        ranking[j], sims[j] = -1, -np.inf
        ranking[j, : len(picked)], sims[j, : len(picked)] = picked, row[picked]
    return ranking, sims


class Exact:
    """Exact search on vectors in memory: one pass over each matrix for all query parts at once.

    standard (N, D) and heads (H, N, d) unit vectors, head-major so each head is one contiguous
    matrix; extra: external space -> (N, D_s) unit vectors. `precision` "bf16" scans the heads, and the
    standard vector and external spaces (one part from `lowprec.SPACE_ONE_PART_ROWS` rows), in bf16 and
    re-scores the rows that could place in fp32 (`lowprec`: the result of "fp32", a space's scores up to
    their last bits); vectors with NaN or infinite values, and rows that tie near the top beyond
    `lowprec.KEPT_BYTES`, scan in fp32. None: as MRAG_EXACT_PRECISION says, else `default_precision()`."""

    def __init__(
        self,
        standard: np.ndarray,
        heads: np.ndarray,
        extra: dict[str, np.ndarray] | None = None,
        precision: str | None = None,
    ):
        precision = precision_from_env() if precision is None else precision
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.standard, self.heads, self.extra, self.precision = standard, heads, extra or {}, precision

    def __call__(self, chosen: list[Voter], queries: list[QueryVectors], c: int) -> tuple[np.ndarray, np.ndarray]:
        n = self.heads.shape[1]
        if not queries or n == 0:  # nothing to rank
            shape = (len(queries), len(chosen), c)
            return np.full(shape, -1, dtype=np.int64), np.full(shape, -np.inf)
        # per part and voter, its candidates (kept, waiting and their merge: ~16 B for each row of
        # c + 1 segments) take at most ~SCORE_BYTES at a time; a block's similarities ~BLOCK_BYTES, and
        # at most 4 x BLOCK_BYTES where so many lines share a block of SPACE_RESCORE_ROWS rows
        step = max(1, min(SCORE_BYTES // (len(chosen) * 16 * (c + 1) * SEGMENT_ROWS),
                          4 * BLOCK_BYTES // (4 * lowprec.SPACE_RESCORE_ROWS * len(chosen))))
        if len(queries) > step:
            done = [self(chosen, queries[i : i + step], c) for i in range(0, len(queries), step)]
            return np.concatenate([r for r, _ in done]), np.concatenate([s for _, s in done])
        # `voters` lists each group's members together: the lines are (voter, part), voter-major
        groups: dict[str, list[Voter]] = {}
        for v in chosen:
            groups.setdefault(v.group, []).append(v)
        if [v for members in groups.values() for v in members] != chosen:
            raise ValueError("the voters of a group must be listed together (as retrieve.voters lists them)")
        if "heads" in groups and self.heads.shape[2] == 0:
            raise ValueError("the matrix was loaded without its heads (Store.matrix(heads=True) loads them)")
        q = {g: self.query_matrix(g, members, queries) for g, members in groups.items()}
        found = {g: Candidates(c + 1, n) for g in groups}
        bf16 = {g: self.heads_bf16(members, q[g], c + 1) if g == "heads" else self.space_bf16(g, q[g], c + 1)
                for g, members in groups.items() if self.precision == "bf16" and g != "split"}
        apart = {g: best for g, best in bf16.items() if best is not None}  # groups ranked apart, in bf16
        scanned = {g: members for g, members in groups.items() if g not in apart}
        buffers: dict[tuple[str, tuple[int, ...]], torch.Tensor] = {}  # reused by every block: no fresh pages
        block = block_rows(sum(map(len, scanned.values())) * len(queries))
        starts = list(range(0, n if scanned else 0, block))
        if len(starts) > 1 and n - starts[-1] < lowprec.SPACE_RESCORE_ROWS:  # a short last block joins the one before
            starts.pop()
        for start, stop in zip(starts, [*starts[1:], n]):
            for g, members in scanned.items():
                found[g].offer(self.similarities(g, members, q[g], start, stop, buffers), start)
        best = [apart[g] if g in apart else found[g].best() for g in groups]
        p = len(queries)
        lines = [(v, part) for members in groups.values() for v in members for part in queries]
        ranking, sims = best_of(
            torch.cat([v for v, _ in best]).numpy(),
            torch.cat([r for _, r in best]).numpy(),
            c,
            lambda j: self.full_row(*lines[j]),
        )
        return ranking.reshape(-1, p, c).transpose(1, 0, 2), sims.reshape(-1, p, c).transpose(1, 0, 2)

    def query_matrix(self, group: str, members: list[Voter], queries: list[QueryVectors]) -> torch.Tensor:
        """The parts' vectors for one group: heads (h, P, d), split slices (s, P, w), else (P, D)."""
        if group == "heads":
            return _tensor(np.stack([p.heads[[v.index for v in members]] for p in queries], axis=1))
        if group == "split":
            width = split_width(self.standard.shape[1], len(self.heads))  # as the store's split statistics
            cut = [[p.standard[v.index * width : (v.index + 1) * width] for p in queries] for v in members]
            return _tensor(np.stack([unit(np.stack(parts)) for parts in cut]))
        return _tensor(np.stack([p.standard if group == "standard" else p.extra[group] for p in queries]))

    def head_rows(self, members: list[Voter], start: int, stop: int) -> np.ndarray:
        """The voters' heads, rows start..stop: (h, B, d), a view when the heads are consecutive."""
        return _head_rows(self.heads, [v.index for v in members], start, stop)

    def heads_bf16(self, members: list[Voter], q: torch.Tensor, keep: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Each line's best `keep` rows by fp32 score, from a bf16 scan and an fp32 re-score of the rows
        that could place: scores and rows (h * P, min(keep, N)), best first. q (h, P, d). None where
        the bf16 scan cannot be trusted or kept too many rows: the caller scans in fp32."""
        n = self.heads.shape[1]
        if n < lowprec.SMALL_ROWS or not lowprec.worth_it(n, q.shape[0] * q.shape[1]):
            return None  # nothing to gain (and below SMALL_ROWS, BLAS's small kernels would differ)
        index = [v.index for v in members]
        return lowprec.ranked(self.heads, q, index, keep,
                              lambda lines, rows: lowprec.rescore(q, _tensor(self.heads), index, lines, rows))

    def space_bf16(self, group: str, q: torch.Tensor, keep: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """As `heads_bf16`, for one space's vectors (the standard vector, an external space): q (P, D).
        Not where it would not pay. One part is scanned and re-scored as two equal columns: the fp32
        scan's matrix-vector sums depend on the rows around, so no re-score could repeat them, but a
        product of two columns can. Its scores may thus differ from the fp32 scan's in the last bits (as
        a query's alone and in a batch differ in fp32, `_times_rows`), its rows only where two rows score
        within them; they are those of the fp32 scan of the part given twice."""
        vectors = self.standard if group == "standard" else self.extra[group]
        n, p = len(vectors), len(q)
        least = lowprec.SPACE_ONE_PART_ROWS if p == 1 else lowprec.SPACE_ROWS_PER_PART * p
        # (n < SPACE_RESCORE_ROWS matters only where the thresholds are lowered, as the tests do)
        if n < lowprec.SPACE_RESCORE_ROWS or not lowprec.worth_it(n, p) or n < least:
            return None
        columns = q if p > 1 else q.expand(2, -1)  # (max(P, 2), D)
        found = lowprec.ranked(vectors, columns[None], [0], keep,
                               lambda parts, rows: lowprec.rescore_rows(columns, _tensor(vectors), parts, rows))
        return None if found is None else (found[0][:p], found[1][:p])

    def similarities(
        self,
        group: str,
        members: list[Voter],
        q: torch.Tensor,
        start: int,
        stop: int,
        buffers: dict[tuple[str, tuple[int, ...]], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Cosines of rows start..stop for one group's voters and every part: (len(members) * P, B),
        written into the group's buffer in `buffers` when given, kept for the next block (fresh memory
        for every block's similarities cost more than the products)."""
        if group == "heads":  # one part is doubled: two take BLAS's GEMM kernel, as `lowprec.rescore` does
            x = _tensor(self.head_rows(members, start, stop))  # (h, B, d)
            parts = q.to(x.dtype) if q.shape[1] > 1 else q.to(x.dtype).expand(-1, 2, -1)
            out = _buffer(buffers, group, (len(x), parts.shape[1], stop - start), x.dtype)
            return torch.bmm(parts, x.transpose(1, 2), out=out)[:, : q.shape[1]].flatten(0, 1)  # (h, P, B)
        if group == "split":
            width = q.shape[2]
            cut = [unit(self.standard[start:stop, v.index * width : (v.index + 1) * width]) for v in members]
            return torch.cat([_times_rows(q[i], _tensor(rows)) for i, rows in enumerate(cut)])
        rows = _tensor((self.standard if group == "standard" else self.extra[group])[start:stop])
        return _times_rows(q, rows, _buffer(buffers, group, (len(rows), len(q)), rows.dtype))

    def full_row(self, voter: Voter, query: QueryVectors) -> np.ndarray:
        """All N similarities of one voter for one part (ranking a tie at the cut): the part twice, so a
        space takes the scan's product of columns rather than the matrix-vector one, whose sums differ."""
        q = self.query_matrix(voter.group, [voter], [query, query])
        return self.similarities(voter.group, [voter], q, 0, self.heads.shape[1])[0].numpy()


def block_rows(lines: int) -> int:
    """Rows per block for this many lines: their similarities fill about BLOCK_BYTES, at most
    BLOCK_ROWS, at least lowprec.SPACE_RESCORE_ROWS (a space's bf16 re-score repeats the sums of
    products of that many rows), in whole segments: segments never straddle blocks. (Tests lower
    BLOCK_ROWS below SPACE_RESCORE_ROWS, or take segments that do not divide it: the block is then
    shorter.)"""
    fit = min(max(BLOCK_BYTES // (4 * max(lines, 1)), lowprec.SPACE_RESCORE_ROWS), BLOCK_ROWS)
    return max(fit // SEGMENT_ROWS, 1) * SEGMENT_ROWS


class Candidates:
    """One group's candidate rows, offered block by block: for each line, its best `keep` segments
    by peak. A row of the final top `keep` lies in a segment whose peak is at least that row's value,
    and fewer than `keep` segments hold a row above the keep-th best value: so the best `keep`
    segments hold every row above it and at least `keep` rows at or above it (ties at the last place
    are settled by `best_of`). A block's segments below the keep-th best peak kept so far are skipped
    without being copied; the others wait in `pending` until a line has more than `keep` waiting."""

    def __init__(self, keep: int, n: int):
        self.keep, self.n = keep, n
        self.whole: tuple[torch.Tensor, torch.Tensor] | None = None  # a one-block scan, ranked directly
        self.kept: tuple[torch.Tensor, ...] | None = None  # (R, <= keep): peaks, first rows; (R, <= keep, seg) sims
        self.pending: list[tuple[torch.Tensor, ...]] = []  # per block: line, peak, sims (M, seg), first row
        self.waiting = torch.zeros(1, dtype=torch.long)  # (R,) each line's segments in `pending`
        self.first_floor: torch.Tensor | None = None  # (R, 1) the first block's keep-th best peak

    def offer(self, sims: torch.Tensor, start: int) -> None:
        """A block's similarities (R, B), rows start..start + B; B is whole segments but for the last block."""
        r, b = sims.shape
        if b == self.n:  # all rows in one block: a top-k is cheaper than segments
            top = torch.topk(sims, min(self.keep, b), dim=1)
            if top.values.isnan().any():  # torch ranks NaN first: rank again without them (older indexes)
                top = torch.topk(_no_nan(sims.clone()), min(self.keep, b), dim=1)
            self.whole = top.values, top.indices.masked_fill(top.values == -torch.inf, -1)
            return
        if b % SEGMENT_ROWS:  # a last block that ends inside a segment: -inf fills it (one copy)
            sims = torch.nn.functional.pad(sims, (0, SEGMENT_ROWS - b % SEGMENT_ROWS), value=-torch.inf)
        segments = sims.unflatten(1, (-1, SEGMENT_ROWS))  # (R, S, seg), a view
        peaks = segment_peaks(segments)  # (R, S)
        nan = peaks.isnan()
        if nan.any():  # a NaN row (older indexes) never ranks, and must not hide the rest of its segment
            peaks[nan] = _no_nan(segments[nan]).amax(1)
        if self.first_floor is None and peaks.shape[1] >= self.keep:  # the first block: its keep-th best peak
            self.first_floor = torch.topk(peaks, self.keep, dim=1).values[:, -1:]
        line, segment = (peaks >= self.floor(r)).nonzero().unbind(1)  # (M,) each
        values = _no_nan(segments[line, segment])  # a copy: the buffer is reused
        self.pending.append((line, peaks[line, segment], values, segment * SEGMENT_ROWS + start))
        self.waiting = self.waiting + torch.bincount(line, minlength=r)
        if int(self.waiting.max()) > self.keep:  # bounded memory, even where every segment ties at the floor
            self.merge(r)

    def floor(self, r: int) -> torch.Tensor:
        """Each line's keep-th best peak as of the last merge, or of the first block before (R, 1):
        every segment skipped or dropped so far is below it; -inf before `keep` segments were seen."""
        if self.kept is not None and self.kept[0].shape[1] == self.keep:
            return self.kept[0][:, -1:]
        return torch.full((r, 1), -torch.inf) if self.first_floor is None else self.first_floor

    def merge(self, r: int) -> None:
        """Keep each line's best `keep` segments by peak of the kept and the pending ones."""
        line, peak, values, first = (torch.cat(part) for part in zip(*self.pending))
        order = torch.argsort(line, stable=True)  # line-major, as the slots below assume
        line, peak, values, first = line[order], peak[order], values[order], first[order]
        # lay each line's pending segments side by side after its kept ones: -inf where none
        count = torch.bincount(line, minlength=r)
        slot = torch.arange(len(line)) - (torch.cumsum(count, 0) - count)[line]
        held = 0 if self.kept is None else self.kept[0].shape[1]
        width = held + int(count.max())
        peaks = torch.full((r, width), -torch.inf, dtype=peak.dtype)
        sims = torch.full((r, width, SEGMENT_ROWS), -torch.inf, dtype=values.dtype)
        firsts = torch.zeros((r, width), dtype=torch.long)
        if self.kept is not None:
            peaks[:, :held], firsts[:, :held], sims[:, :held] = self.kept
        peaks[line, held + slot], sims[line, held + slot], firsts[line, held + slot] = peak, values, first
        top = torch.topk(peaks, min(self.keep, width), dim=1)
        at = top.indices
        self.kept = top.values, torch.gather(firsts, 1, at), sims[torch.arange(r)[:, None], at]
        self.pending, self.waiting = [], torch.zeros(r, dtype=torch.long)

    def best(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Each line's best `keep` rows: similarities and rows (R, K), K = min(keep, N), best first;
        of rows tied at the last place, any may be kept. A line comes short of K rows (-1 rows, -inf
        values) only where its similarities are NaN."""
        if self.whole is not None:
            return self.whole
        if self.pending:
            self.merge(len(self.waiting))
        assert self.kept is not None  # every block leaves a segment per line or a merge
        _, first, sims = self.kept
        top = torch.topk(sims.flatten(1), min(self.keep, self.n), dim=1)
        rows = torch.gather(first, 1, top.indices // SEGMENT_ROWS) + top.indices % SEGMENT_ROWS
        return top.values, rows.masked_fill_(top.values == -torch.inf, -1)


def segment_peaks(segments: torch.Tensor) -> torch.Tensor:
    """Each line's best similarity per segment: (R, S, seg) -> (R, S). Reduced along the memory
    order: segments of a (P, B) view of a row-major (B, P) product are read as (S, seg, P)."""
    if segments.stride(2) == 1:
        return segments.amax(2)
    return segments.permute(1, 2, 0).amax(1).T


def _head_rows(heads: Any, index: list[int], start: int, stop: int) -> Any:
    """Heads `index` of (H, N, d) (numpy or torch), rows start..stop: (h, B, d), a view when consecutive."""
    if index == list(range(index[0], index[-1] + 1)):
        return heads[index[0] : index[-1] + 1, start:stop]
    return heads[index, start:stop]


def _no_nan(x: torch.Tensor) -> torch.Tensor:
    """NaN -> -inf, in place (torch.topk ranks NaN above everything)."""
    return x.masked_fill_(x.isnan(), -torch.inf)


def _times_rows(queries: torch.Tensor, rows: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """queries @ rows.T, as a (P, N) view of rows @ queries.T, which streams the rows once (3x faster
    than the other order at 200k rows, 6 parts); `out` is used when it fits (N, P).

    One query takes torch's matrix-vector product: 64 ms at 1M rows against 130 for any product of
    two to sixteen columns (torch 2.13, 2 cores), which reads the rows at half the memory's speed. Its
    sums may differ from a product's in the last bit: a query's scores searched alone and in a batch
    can differ there. All products go through torch: numpy's BLAS threads and torch's spun against
    each other (8 ms instead of 0.1 ms at 2k rows)."""
    q = queries.to(rows.dtype)
    if len(q) == 1:
        return torch.mv(rows, q[0], out=None if out is None else out[:, 0])[None]
    if out is None or out.shape != (len(rows), len(q)):
        out = torch.empty(len(rows), len(q), dtype=rows.dtype)
    return torch.mm(rows, q.T, out=out).T


def _buffer(
    buffers: dict[tuple[str, tuple[int, ...]], torch.Tensor] | None,
    group: str,
    shape: tuple[int, ...],
    dtype: torch.dtype,
) -> torch.Tensor | None:
    """The group's product buffer of this shape and dtype, made on first use; None without `buffers`."""
    if buffers is None:
        return None
    key = (group, shape)
    if key not in buffers or buffers[key].dtype != dtype:
        buffers[key] = torch.empty(shape, dtype=dtype)
    return buffers[key]


def _tensor(array: np.ndarray) -> torch.Tensor:
    """A tensor sharing the array's memory. A read-only array (Arrow's zero-copy views) is copied
    first: torch warns on those, and a process-wide warnings filter would be an import side effect.
    The store's matrix is writable (`mrag.matrix` allocates it), so searching an index copies nothing."""
    return torch.from_numpy(array if array.flags.writeable else np.array(array))


def run(
    strategy: str,
    standard: np.ndarray,
    heads: np.ndarray,
    query: QueryVectors,
    k: int,
    c: int,
    scales: Scales,
    parts: list[QueryVectors] | None = None,
    extra: dict[str, np.ndarray] | None = None,
    select: Collection[str] | None = None,
    precision: str | None = None,
) -> Result:
    """Exact search for one query.  standard (N, D) and heads (H, N, d) hold unit vectors; `extra`
    the external spaces' unit vectors, name -> (N, D_s).  See `vote` for the rest."""
    ranker = Exact(standard, heads, extra, precision)
    return retrieve_vote(strategy, query, k, c, scales, ranker, len(heads), parts, list(extra or {}), select)
