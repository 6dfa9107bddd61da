"""Reports of the heads study (`heads_study.py`): per-part diagnostics and the markdown table."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

Ranker = Callable[[Any, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]  # (data, sims, head sims)


def diagnose(data: Any, rankers: dict[str, Ranker]) -> dict[str, float]:
    """Per part of the multi-aspect queries: is each space's first choice relevant (any aspect)? And per
    query, the share of its aspects some part ranks first (in its top 2), with each of `rankers`."""
    hits: dict[str, list[float]] = {}
    vote = rankers["vote"]
    for q in data.queries:
        if q.n < 2 or len(q.parts_std) < 2:
            continue
        relevant = set().union(*(a.units for a in q.aspects))
        for s, h in zip(q.parts_std, q.parts_heads):
            firsts = {"standard": int(np.argmax(s)), "vote": int(vote(data, s, h)[0][0])}
            firsts |= {f"head:{i}": int(np.argmax(h[i])) for i in range(len(h))}
            ok = {k: float(str(data.units[r]) in relevant) for k, r in firsts.items()}
            ok["any head"] = float(any(ok[f"head:{i}"] for i in range(len(h))))
            ok["vote right, standard wrong"] = float(ok["vote"] and not ok["standard"])
            ok["standard right, vote wrong"] = float(ok["standard"] and not ok["vote"])
            for k, v in ok.items():
                hits.setdefault(k, []).append(v)
    out = {k: float(np.mean(v)) for k, v in hits.items()} | {"parts": len(hits.get("vote", []))}
    for label, rk in rankers.items():
        cov: dict[int, list[float]] = {1: [], 2: []}
        precision = []
        for q in data.queries:
            if q.n < 2 or len(q.parts_std) < 2:
                continue
            lists = [rk(data, s, h)[0] for s, h in zip(q.parts_std, q.parts_heads)]
            for depth in (1, 2):
                got = {str(u) for r in lists for u in data.units[r[:depth]]}
                cov[depth].append(float(np.mean([bool(a.units & got) for a in q.aspects])))
            relevant = set().union(*(a.units for a in q.aspects))
            precision += [float(str(data.units[r[0]]) in relevant) for r in lists]
        out |= {f"{label}: part first relevant": float(np.mean(precision)),
                f"{label}: aspects some part ranks first": float(np.mean(cov[1])),
                f"{label}: aspects some part ranks in its top 2": float(np.mean(cov[2]))}
    return out


def table(results: dict[str, dict[str, dict[str, dict[str, float]]]], title: str) -> str:
    """Markdown: one row per strategy; multi-aspect sets doc / category (Wikipedia v1: tuning half,
    held-out half), single-aspect sets (and the n = 1 queries of the others) hit@1 / MRR@10."""
    sets = list(results)
    names = [n for n in next(iter(results.values())) if n != "diagnosis"]
    sets = [name for name in sets if set(names) <= set(results[name])]
    head, cols = ["strategy"], []
    for name in sets:
        r = results[name][names[0]]
        halves = ("tune", "held") if name == "wiki" else ("all",)
        for h in halves:
            if "doc" in r[h]:
                head.append(f"{name} {h if name == 'wiki' else ''} doc / cat".replace("  ", " "))
                cols.append((name, h, ("doc", "category")))
        if "hit@1" in r["all"]:
            head.append(f"{name} n=1 hit@1 / MRR@10" if "doc" in r["all"] else f"{name} hit@1 / MRR@10")
            cols.append((name, "all", ("hit@1", "mrr@10")))
    lines = [f"# {title}", "", "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for n in names:
        cells = [" / ".join(f"{results[s][n][h][m]:.3f}" for m in ms) for s, h, ms in cols]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
