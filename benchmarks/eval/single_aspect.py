"""Single-aspect benchmarks made by rule from the MRAG paper's Wikipedia v1 articles, as BEIR folders
that `mrag eval --corpus FOLDER` reads (one relevant article per query, ranking metrics reported):

- titles/:   known-item search, the query is an article's title ("Hanging Gardens of Babylon"), the
             relevant documents are the articles of that title; 1,250 queries.
- snippets/: fact lookup, the query is the first 12 words of an article's second sentence (its first
             when it has one), lower-cased, with the article's title words removed, so the query does
             not name its article; 1,250 queries.
- questions/: search queries an LLM wrote, not the articles' words: the benchmark's own RAG-Fusion
             sub-queries ("fusion") of its 25 one-article stories, numbering and quotes removed, each
             relevant to the story's article; 100 queries.

No LLM run here, no randomness: the same files give the same folders.
Run: python benchmarks/eval/single_aspect.py DATASETS_DIR OUT_DIR
"""

from __future__ import annotations

import bz2
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
from mrag.chunk import split_sentences  # noqa: E402

WORD = re.compile(r"[\w'-]+")


def snippet(title: str, text: str, words: int = 12) -> str:
    sentences = split_sentences(text)
    sentence = sentences[1] if len(sentences) > 1 else sentences[0]
    banned = {w.lower() for w in WORD.findall(title)}
    kept = [w for w in WORD.findall(sentence.lower()) if w not in banned]
    return " ".join(kept[:words])


def write_beir(folder: Path, articles: list[dict], queries: dict[str, str], relevant: dict[str, list[str]]) -> None:
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    with open(folder / "corpus.jsonl", "w") as f:
        for i, a in enumerate(articles):
            f.write(json.dumps({"_id": f"d{i:05d}", "title": a["title"], "text": a["text"]}) + "\n")
    with open(folder / "queries.jsonl", "w") as f:
        for qid, text in queries.items():
            f.write(json.dumps({"_id": qid, "text": text}) + "\n")
    with open(folder / "qrels" / "test.tsv", "w") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        for qid, docs in relevant.items():
            for doc in docs:
                f.write(f"{qid}\t{doc}\t1\n")


def main() -> None:
    data, out = Path(sys.argv[1]), Path(sys.argv[2])
    articles = json.load(bz2.open(data / "wikipedia_articles_v1.json.bz2"))
    by_title: dict[str, list[str]] = {}
    for i, a in enumerate(articles):
        by_title.setdefault(a["title"], []).append(f"d{i:05d}")
    titles = {f"t{i:05d}": t for i, t in enumerate(sorted(by_title))}
    write_beir(out / "titles", articles, titles, {q: by_title[t] for q, t in titles.items()})
    snippets = {f"s{i:05d}": snippet(a["title"], a["text"]) for i, a in enumerate(articles)}
    write_beir(out / "snippets", articles, snippets, {f"s{i:05d}": [f"d{i:05d}"] for i in range(len(articles))})
    stories = [q for q in json.load(bz2.open(data / "wikipedia_queries_v1.json.bz2")) if len(q["topics"]) == 1]
    asked = {f"f{i:03d}-{j}": re.sub(r'^\d+\.\s*|"', "", sub).strip() for i, q in enumerate(stories)
             for j, sub in enumerate(q["fusion"])}
    write_beir(out / "questions", articles, asked,
               {qid: by_title[stories[int(qid[1:4])]["topics"][0]] for qid in asked})
    print(f"{len(titles)} title queries, {len(snippets)} snippet queries, {len(asked)} questions in {out}")


if __name__ == "__main__":
    main()
