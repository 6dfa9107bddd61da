"""`mrag bench` on the MRAG paper's own documents: do the strategies rank the same on generated
queries as on the paper's LLM-written ones?

Writes the 1,250 Wikipedia v1 articles as files, one folder per category (the groups), makes two
extractive benchmarks with different seeds (the second a held-out check of the first), evaluates
every strategy on both and on the paper's queries over the same articles, and writes
benchmarks/results/own-bench/summary.{md,json}: the rankings side by side and Kendall's tau
between them.

Also (--part bundled) the same for the bundled sample corpus (its topics as groups; no paper queries
there, so only the ranking is reported), and (--part local) a small run of the local LLM writer
(SmolLM2-135M-Instruct) whose every query, kept or dropped, is written out for reading.

Run: python benchmarks/eval/own_bench.py DATASETS_DIR WORK_DIR [--part paper|bundled|local]
         [--n 1,2,3,4,6,10] [--per-n 40]
"""

from __future__ import annotations

import argparse
import bz2
import json
import subprocess
import sys
from itertools import combinations
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "results" / "own-bench"
STRATEGIES = ("standard,mrag,mrag-bm25,segment-bm25,bm25,hybrid,mrag-paper,mrag-std,mrag-decay,mrag-distance,"
              "split,split-weighted,interleave+standard,interleave+mrag-paper,segment+standard,segment+mrag-paper")


def write_docs(datasets: Path, folder: Path) -> None:
    counts: dict[str, int] = {}
    for a in json.load(bz2.open(datasets / "wikipedia_articles_v1.json.bz2")):
        category = str(a["label"]).replace("/", "-")
        i = counts[category] = counts.get(category, -1) + 1
        path = folder / category / f"{i:03d}.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(a["title"] + "\n\n" + a["text"], encoding="utf-8")


def mrag(*args: str) -> str:
    command = Path(sys.executable).with_name("mrag")  # the venv's mrag beside this Python
    done = subprocess.run([str(command), *args], capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"mrag {' '.join(args)} failed: {done.stderr.strip().splitlines()[-1:]}")
    return done.stdout


def evaluate(corpus: Path, queries: Path | None, out: Path) -> dict:
    args = ["eval", "--corpus", str(corpus), "--strategies", STRATEGIES, "--json", "-o", str(out)]
    if queries is not None:
        args += ["--queries", str(queries)]
    return json.loads(mrag(*args))


def kendall_tau(a: list[str], b: list[str]) -> float:
    """Kendall's tau between two rankings of the same names (1: same order, -1: reversed)."""
    pos_a, pos_b = {s: i for i, s in enumerate(a)}, {s: i for i, s in enumerate(b)}
    pairs = list(combinations(a, 2))
    agree = sum(1 if (pos_a[x] - pos_a[y]) * (pos_b[x] - pos_b[y]) > 0 else -1 for x, y in pairs)
    return agree / len(pairs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("datasets", type=Path)
    parser.add_argument("work", type=Path)
    parser.add_argument("--n", default="1,2,3,4,6,10")
    parser.add_argument("--per-n", default="40")
    parser.add_argument("--part", choices=("paper", "bundled", "local"), default="paper")
    args = parser.parse_args()
    if args.part == "bundled":
        return bundled(args.work)
    if args.part == "local":
        return local_writer(args.datasets, args.work)
    docs = args.work / "docs"
    if not docs.exists():
        write_docs(args.datasets, docs)
    runs = {}
    for seed in ("0", "1"):
        bench = args.work / f"bench-s{seed}"
        made = json.loads(mrag("bench", str(docs), "-o", str(bench), "--n", args.n, "--per-n", args.per_n,
                               "--seed", seed))
        runs[f"generated, seed {seed}"] = (made, evaluate(bench, None, args.work / f"eval-s{seed}"))
    paper = evaluate(args.datasets / "wikipedia_articles_v1.json.bz2", args.datasets / "wikipedia_queries_v1.json.bz2",
                     args.work / "eval-paper")
    runs["paper's queries"] = ({}, paper)
    report(runs)


def bundled(work: Path) -> None:
    """Extractive benchmark of the bundled sample corpus (topics as groups) and every strategy on it."""
    sample = Path(__file__).resolve().parents[2] / "src" / "mrag" / "data" / "sample_corpus.jsonl"
    bench = work / "bundled-bench"
    made = json.loads(mrag("bench", str(sample), "-o", str(bench), "--group-by", "topic", "--seed", "0"))
    result = evaluate(bench, None, work / "bundled-eval")
    summary, single = result["summary"], result["single_aspect"]
    ranked = sorted(summary, key=lambda s: -summary[s]["doc"])
    lines = ["# Strategies on an extractive benchmark of the bundled sample corpus", "",
             f"{made['documents']} documents in {made['groups_found']} groups ({made['groups']}); "
             f"{made['queries']} queries kept, {made['dropped']} dropped {made['dropped_by_reason'] or ''}; "
             f"n = {made['n']}.", "",
             "| strategy | n >= 2: doc / category at k = n | n = 1: MRR@10 / hit@1 |", "|---|---|---|"]
    lines += [f"| {s} | {summary[s]['doc']:.3f} / {summary[s]['category']:.3f} | "
              f"{single[s]['mrr@10']:.3f} / {single[s]['hit@1']:.3f} |" for s in ranked]
    write("bundled", lines, {"benchmark": made, "summary": summary, "single_aspect": single, "ranking": ranked})


def local_writer(datasets: Path, work: Path) -> None:
    """The local LLM writer on 48 Wikipedia articles (8 categories x 6): every query it wrote, and the checks."""
    docs = work / "local-docs"
    if not docs.exists():
        by_category: dict[str, list[dict]] = {}
        for a in json.load(bz2.open(datasets / "wikipedia_articles_v1.json.bz2")):
            by_category.setdefault(str(a["label"]).replace("/", "-"), []).append(a)
        for category in sorted(by_category)[:8]:
            for i, a in enumerate(by_category[category][:6]):
                path = docs / category / f"{i:03d}.md"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(a["title"] + "\n\n" + a["text"][:2000], encoding="utf-8")
    bench = work / "local-bench"
    made = json.loads(mrag("bench", str(docs), "-o", str(bench), "--generator", "local", "--n", "1,2,3",
                           "--per-n", "4", "--seed", "0"))
    rows = [json.loads(line) | {"kept": True} for line in (bench / "queries.jsonl").open()]
    if (bench / "dropped.jsonl").exists():
        rows += [json.loads(line) | {"kept": False} for line in (bench / "dropped.jsonl").open()]
    lines = ["# What the local writer (SmolLM2-135M-Instruct) wrote", "",
             f"{made['documents']} Wikipedia v1 articles (first 2,000 characters) in {made['groups_found']} "
             f"category folders; n = 1, 2, 3, 4 queries per n; {made['queries']} kept, {made['dropped']} dropped "
             f"{made['dropped_by_reason'] or ''}.", "",
             "| n | documents touched | kept | query (or the reason it was dropped) |", "|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["n"], r["_id"])):
        text = r["text"].replace("|", "/").replace("\n", " ")[:160]
        why = "" if r["kept"] else f" *({r['reason']})*"
        lines.append(f"| {r['n']} | {r.get('touches', '?')} | {'yes' if r['kept'] else 'no'} | {text}{why} |")
    write("local-smollm2", lines, {"benchmark": made, "queries": rows})


def write(name: str, lines: list[str], data: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2))
    print("\n".join(lines))


def report(runs: dict[str, tuple[dict, dict]]) -> None:
    names = list(runs)
    summaries = {name: result["summary"] for name, (_, result) in runs.items()}
    singles = {name: result["single_aspect"] for name, (_, result) in runs.items()}
    strategies = sorted(summaries[names[-1]], key=lambda s: -summaries[names[-1]][s]["doc"])
    rankings = {name: sorted(strategies, key=lambda s: -summaries[name][s]["doc"]) for name in names}
    lines = ["# Strategies on generated queries against the paper's queries (Wikipedia v1, same articles)", "",
             "Multi-aspect queries (n >= 2), doc / category success ratio at k = n, and the rank of each strategy:",
             "", "| strategy | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for s in strategies:
        cells = [f"{summaries[n][s]['doc']:.3f} / {summaries[n][s]['category']:.3f} (#{rankings[n].index(s) + 1})"
                 for n in names]
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    lines += ["", "Single-aspect queries (n = 1): MRR@10 / hit@1", "",
              "| strategy | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for s in strategies:
        lines.append(f"| {s} | " + " | ".join(f"{singles[n][s]['mrr@10']:.3f} / {singles[n][s]['hit@1']:.3f}"
                                               for n in names) + " |")
    taus = {f"{a} vs {b}": kendall_tau(rankings[a], rankings[b]) for a, b in combinations(names, 2)}
    lines += ["", "Kendall's tau between the multi-aspect rankings: "
              + "; ".join(f"{k}: {v:.2f}" for k, v in taus.items()), ""]
    made = {name: info for name, (info, _) in runs.items() if info}
    for name, info in made.items():
        lines.append(f"- {name}: {info['queries']} queries kept, {info['dropped']} dropped "
                     f"{info['dropped_by_reason'] or ''}, {info['documents']} documents in {info['groups_found']} "
                     f"groups ({info['groups']})")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "summary.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "summary.json").write_text(json.dumps(
        {"summaries": summaries, "single_aspect": singles, "rankings": rankings, "kendall_tau": taus,
         "benchmarks": made}, indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
