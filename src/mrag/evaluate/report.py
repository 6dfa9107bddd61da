"""Evaluation output: per-query records (JSONL), a Markdown table like the paper's, and PNG plots."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np


def by_n_at_k_eq_n(records: list[dict[str, Any]]) -> dict[str, dict[int, tuple[float, float]]]:
    """strategy -> n -> (mean doc ratio, mean category ratio) at k = n."""
    acc: dict[str, dict[int, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        if r["k"] == r["n"]:
            acc[r["strategy"]][r["n"]].append((r["success_ratio"], r["category_ratio"]))
    return {s: {n: tuple(np.mean(v, axis=0)) for n, v in sorted(per_n.items())} for s, per_n in acc.items()}  # type: ignore[misc]


def cell(doc: float, category: float | None) -> str:
    """'doc / category', or 'doc' for a set without categories."""
    return f"{doc:.3f}" if category is None else f"{doc:.3f} / {category:.3f}"


def markdown_table(records: list[dict[str, Any]], summary: dict[str, dict[str, float]], title: str,
                   categories: bool = True) -> str:
    """Rows n, columns strategies, cells 'doc / category' at k = n ('doc' alone for a set without
    `categories`); last row the mean over n >= 2."""
    table = by_n_at_k_eq_n(records)
    strategies = list(table)
    ns = sorted({n for per_n in table.values() for n in per_n})
    which = "documents / categories" if categories else "documents; the set has no categories"
    lines = [f"### {title}", "", f"Success ratio ({which}) at k = n.", ""]
    lines.append("| n | " + " | ".join(strategies) + " |")
    lines.append("|---|" + "---|" * len(strategies))
    for n in ns:
        cells = [cell(table[s][n][0], table[s][n][1] if categories else None) if n in table[s] else "-"
                 for s in strategies]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    means = [f"**{cell(summary[s]['doc'], summary[s]['category'] if categories else None)}**" if s in summary
             else "-" for s in strategies]
    lines.append("| mean n>=2 (over queries) | " + " | ".join(means) + " |")
    counts = {s: len({r["query"] for r in records if r["strategy"] == s and r["n"] >= 2}) for s in strategies}
    if len(set(counts.values())) > 1:  # fusion runs only where a query has sub-queries: not a paired comparison
        lines += ["", "Queries with n >= 2 differ by strategy (each cell averages its own): "
                  + ", ".join(f"{s} {c}" for s, c in counts.items()) + "."]
    per_n = {n: len({r["query"] for r in records if r["n"] == n}) for n in ns if n >= 2}
    if len(set(per_n.values())) > 1:  # the paper's mean is over n: the same only where every n has as many queries
        lines += ["", "The mean weighs every query alike, and n has queries in different numbers: "
                  + ", ".join(f"n = {n}: {c}" for n, c in per_n.items()) + "."]
    return "\n".join(lines) + "\n"


def write_records(records: list[dict[str, Any]], path: Path) -> None:
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


def plot(records: list[dict[str, Any]], out_dir: Path, baseline: str = "standard") -> list[Path]:
    """Paper-style plots: weighted-ratio gain over the baseline for k in [n, n+10], and box plots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    weighted: dict[tuple[str, int, int], dict[str, float]] = defaultdict(dict)  # -> query -> its weighted ratio
    for r in records:
        weighted[(r["strategy"], r["n"], r["k"])][r["query"]] = r["weighted_ratio"]
    strategies = sorted({r["strategy"] for r in records})
    ns = sorted({r["n"] for r in records if r["n"] >= 2})
    paths = []
    if baseline in strategies and ns:
        cols = min(3, len(ns))
        rows = -(-len(ns) // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows), squeeze=False)
        for ax, n in zip(axes.flat, ns):
            ks = [k for k in range(n, n + 11) if (baseline, n, k) in weighted]
            for s in strategies:
                if s == baseline or (s, n, ks[0] if ks else 0) not in weighted:
                    continue
                gain = [paired_gain(weighted[(s, n, k)], weighted[(baseline, n, k)]) for k in ks]
                ax.plot(ks, gain, marker="o", markersize=3, label=s)
            ax.axhline(0, color="grey", linewidth=0.8)
            ax.set_title(f"n = {n} aspects")
            ax.set_xlabel("k (documents fetched)")
            ax.set_ylabel(f"weighted ratio - {baseline}")
        for ax in axes.flat[len(ns):]:
            ax.axis("off")
        axes.flat[0].legend(fontsize=7)
        fig.tight_layout()
        paths.append(out_dir / "gain_over_standard.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    data = [
        [r["weighted_ratio"] for r in records if r["strategy"] == name and r["k"] == r["n"] >= 2] for name in strategies
    ]
    if any(data):
        fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(strategies)), 4))
        ax.boxplot(data, tick_labels=strategies)
        ax.set_ylabel("weighted ratio per query at k = n (n >= 2)")
        ax.tick_params(axis="x", rotation=30)
        fig.tight_layout()
        paths.append(out_dir / "weighted_ratio_box.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths


def paired_gain(ours: dict[str, float], baseline: dict[str, float]) -> float:
    """Mean of ours - baseline over the queries both answered (fusion answers only queries with sub-queries).
    {"a": 0.5, "b": 1.0} against {"a": 0.0, "b": 1.0, "c": 0.0} -> 0.25"""
    both = [q for q in ours if q in baseline]
    return float(np.mean([ours[q] - baseline[q] for q in both])) if both else float("nan")
