"""Search settings and their defaults: strategy names and how they parse, the ANN index types and
thresholds, and the parts a long indexing run commits in. Plain Python, so the CLI builds its help from them
without loading numpy, LanceDB or torch."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


def names(given: str | Iterable[str]) -> list[str]:
    """A comma-separated list of names (strategies, spaces), or several such: "standard, bm25" and
    ["standard,bm25"] -> ["standard", "bm25"] (empty names dropped)."""
    items = [given] if isinstance(given, str) else given
    return [name.strip() for item in items for name in item.split(",") if name.strip()]

BASE_STRATEGIES = (
    "standard", "mrag-paper", "mrag-std", "mrag-decay", "mrag-distance", "split", "split-weighted", "spaces",
    "bm25", "hybrid",
)
MODIFIERS = {"segment+": ("sentences", 1), "interleave+": ("round-robin", 2)}
EXTRA_SPACE_STRATEGIES = ("mrag-std", "spaces")  # the base strategies where external spaces vote
FUSION = {"fusion": "standard", "mrag-fusion": "mrag-std"}  # over sub-queries, reciprocal rank fusion
# the default: the standard vector and the full-text space vote per query part; it measured best on multi-
# and single-aspect sets together, held-out halves included (benchmarks/results/eval/fulltext/): with the
# packaged MiniLM the heads' votes lowered it on every set (`mrag-bm25` keeps them; `mrag tune` compares both)
DEFAULT_STRATEGY = "segment-bm25"
VECTOR_DEFAULT = "mrag"  # the default of an index without a full-text index (written before mrag had one)
FULLTEXT = "bm25"  # the full-text space's voter name (`mrag.retrieve.fulltext`): LanceDB's BM25 index on the text
DEFAULT_C = 32


@dataclass(frozen=True)
class Plan:
    base: str  # a BASE_STRATEGIES name
    expand: str | None = None  # None, "segment+", "interleave+" or "fusion"
    one_part: str | None = None  # the voter that alone ranks a query of one part (None: the base's voters)
    fulltext: bool = False  # the full-text space votes too (and beside `one_part` on a query of one part)
    zscores: bool = False  # each part ranked by its lists' fused z-scores (`mrag.vote.zscore_weights`), not rank votes


# `mrag` (the default of an index without a full-text index): a query of several parts (sentences,
# questions) votes per part with the heads and the standard vector; a query of one part is ranked by the
# standard vector alone, which ranks one-topic queries better than the heads' vote
# (benchmarks/results/eval/single-aspect.md)
ALIASES = {"mrag": Plan("mrag-std", "segment+", one_part="standard"),
           # the same with the full-text space voting beside the heads and the standard vector
           "mrag-bm25": Plan("mrag-std", "segment+", one_part="standard", fulltext=True),
           # the default: per part, the scores of the standard vector, the full-text space and any external spaces
           # fused as z-scores; parts merged by consensus
           "segment-bm25": Plan("spaces", "segment+", fulltext=True, zscores=True)}


def strategy_names() -> list[str]:
    modified = [m + s for m in MODIFIERS for s in BASE_STRATEGIES]
    return [*ALIASES, *BASE_STRATEGIES, *modified, *FUSION]


def parse_strategy(name: str) -> Plan:
    """'mrag' -> Plan('mrag-std', 'segment+', one_part='standard'); 'fusion' -> Plan('standard', 'fusion');
    'segment+standard' -> Plan('standard', 'segment+'); 'split' -> Plan('split')."""
    if name in ALIASES:
        return ALIASES[name]
    if name in FUSION:
        return Plan(FUSION[name], "fusion")
    for prefix in MODIFIERS:
        if name.startswith(prefix) and name.removeprefix(prefix) in BASE_STRATEGIES:
            return Plan(name.removeprefix(prefix), prefix)
    if name in BASE_STRATEGIES:
        return Plan(name)
    raise ValueError(f"unknown strategy {name!r}; choose one of {', '.join(strategy_names())}")


def check_strategy(name: str) -> str:
    parse_strategy(name)
    return name


# LanceDB's indexes, and "HNSW": in-process faiss graphs over the in-memory matrix (`mrag.retrieve.graph`)
GRAPH_INDEX = "HNSW"
INDEX_TYPES = ("IVF_FLAT", "IVF_PQ", "IVF_HNSW_SQ", GRAPH_INDEX)
DEFAULT_INDEX = "IVF_FLAT"  # measured best for 32-dim heads: fast build, recall 0.998 (benchmarks/results/ann.md)
# rows; below it the in-memory exact scan (once loaded) is faster than LanceDB's IVF indexes at their default
# nprobes for queries of several parts, and exact: the default 71 ms a six-sentence query against 89 at 1M rows,
# 44 against 65 at 500k, 43 against 61 at 300k; one part 58 against 33 at 1M, 34 against 26 at 500k (2 cores,
# benchmarks/results/exact-or-ann-*.md)
ANN_THRESHOLD = 1_000_000
DEFAULT_CANDIDATES = 0  # ANN: 0 asks one index per space; N re-scores each part's N nearest standard rows (ann-1m.md)
DEFAULT_EF = 128  # HNSW: rows a search walks (efSearch); the default's recall@10 0.994, 141k real rows (graph-141k.md)
# chunks embedded per commit of a long `mrag index` run (`mrag.sync.commit_parts`)
COMMIT_EVERY = 10_000
DEFAULT_NPROBES = 60  # recall of the final mrag top 10 >= 0.96 at 1M even with overlapping clusters (scale-hard.md)


@dataclass
class AnnPolicy:
    """When writes (re)build the ANN indexes: from `threshold` rows (see `mrag.retrieve.ann.needs_ann`), with
    this index type and default nprobes (None: what the index recorded, else the defaults)."""

    threshold: int = ANN_THRESHOLD
    index_type: str | None = None
    nprobes: int | None = None
    spaces: tuple[str, ...] | None = None  # HNSW: the spaces that get a graph (None: every one)


def cpu_has_bf16_kernels() -> bool:
    """Whether torch has bf16 kernels for this CPU (oneDNN's: x86 with AVX-512 and up, Arm with BF16); without
    them bf16 work is slower than fp32 (the exact scan's default precision, `--dtype bfloat16`)."""
    import torch

    if not torch.backends.mkldnn.enabled:  # turned off: torch's slow bf16 path
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False
