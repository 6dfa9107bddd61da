"""`mrag demo`: index the bundled sample corpus and put standard RAG and MRAG side by side."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from importlib import resources
from typing import Any

from mrag.index import Hit, Index


def sample_corpus() -> list[dict[str, Any]]:
    """The bundled corpus: short original documents over clearly different topics."""
    text = resources.files("mrag").joinpath("data/sample_corpus.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def demo_questions() -> list[dict[str, Any]]:
    """Multi-aspect questions with the ids of the documents that answer each aspect."""
    return json.loads(resources.files("mrag").joinpath("data/demo_questions.json").read_text(encoding="utf-8"))


def run_demo(db: str | None, k: int, strategy: str, as_json: bool, echo: Callable[[str], None]) -> dict[str, int]:
    """Build (or reuse) the demo index, ask the questions, print both rankings; returns hit counts."""
    tmp = None
    if db is None:
        tmp = tempfile.TemporaryDirectory(prefix="mrag-demo-")
        db = tmp.name
    try:
        index = Index.open(db)
        docs = [{"id": d["id"], "text": d["text"], "title": d["title"], "topic": d["topic"]} for d in sample_corpus()]
        others = set(index.store.rows(columns=["doc_id"])["doc_id"].to_pylist()) - {d["id"] for d in docs}
        if others:  # an index of the user's own: the sample documents must not be written into it
            raise ValueError(f"{db} holds documents other than the demo's ({len(others)}, e.g. {min(others)!r}): "
                             "give a new folder, or none for a temporary one")
        report = index.upsert(docs)
        if not as_json:
            echo(f"Indexed {report.chunks} chunks from {len(docs)} sample documents into {db} "
                 f"({index.embedder.name}, layer {index.store.manifest.embedder.get('layer')}, "
                 f"{index.store.n_heads} heads x {index.store.head_dim}).\n")
        found = {"standard": 0, strategy: 0, "expected": 0}
        for q in demo_questions():
            expected = set(q["expected"])
            found["expected"] += len(expected)
            results = {s: index.search(q["question"], k=k, strategy=s) for s in ("standard", strategy)}
            for s, hits in results.items():
                found[s] += len(expected & {h.doc_id for h in hits})
            if as_json:
                echo(json.dumps({"question": q["question"], "expected": q["expected"],
                                 **{s: [h.to_dict(explain=True) for h in hits] for s, hits in results.items()}}))
            else:
                _print_question(q["question"], expected, results, strategy, echo)
        if not as_json:
            echo(f"Expected documents found in the top {k}: standard {found['standard']}/{found['expected']}, "
                 f"{strategy} {found[strategy]}/{found['expected']}.")
        return found
    finally:
        if tmp is not None:
            tmp.cleanup()


def _print_question(question: str, expected: set[str], results: dict[str, list[Hit]], strategy: str,
                    echo: Callable[[str], None]) -> None:
    echo(f"Q: {question}")
    width = 44
    echo(f"   {'standard':<{width}} {strategy}")
    left, right = results["standard"], results[strategy]
    for i in range(max(len(left), len(right))):
        cells = []
        for hits in (left, right):
            if i < len(hits):
                mark = "*" if hits[i].doc_id in expected else " "
                cells.append(f"{mark}{i + 1}. {hits[i].doc_id}"[:width])
            else:
                cells.append("")
        echo(f"   {cells[0]:<{width}} {cells[1]}")
    for i, hit in enumerate(right):
        top = sorted(hit.votes, key=lambda v: -v["weight"])[:4]
        echo(f"   why {i + 1}: " + ", ".join(f"{v['space']} rank {v['rank']} (+{v['weight']:.3f})" for v in top)
             + (f" and {len(hit.votes) - 4} more" if len(hit.votes) > 4 else ""))
    echo("   (* = a document the question asks about)\n")
