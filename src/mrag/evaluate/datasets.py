"""Benchmark loaders: the MRAG paper's Wikipedia JSON, its topic-folder layout, and BEIR.

Everything becomes a `Benchmark`: documents (each with a unit and a category) and queries whose
relevant set is a list of aspects. An aspect is satisfied when any of its units is retrieved: a
title shared by several documents is one aspect with several acceptable documents, so duplicate
titles never merge documents. In the topic layout a unit is a topic (one JSON file of passages) and
its category is its folder. Queries naming something missing are reported and skipped.
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import tarfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any


@dataclass(frozen=True)
class Aspect:
    units: frozenset[str]  # any of these retrieved satisfies the aspect
    categories: frozenset[str]
    grade: int = 1  # graded relevance (BEIR qrels), for nDCG


@dataclass
class BenchDoc:
    id: str
    text: str
    title: str
    unit: str
    category: str


@dataclass
class BenchQuery:
    id: str
    text: str
    aspects: list[Aspect]
    fusion: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.aspects)


@dataclass
class Benchmark:
    name: str
    docs: list[BenchDoc]
    queries: list[BenchQuery]
    skipped: list[str] = field(default_factory=list)  # why each skipped query was skipped
    has_categories: bool = True

    def unit_category(self) -> dict[str, str]:
        return {d.unit: d.category for d in self.docs}


def open_text(path: Path) -> str:
    """A text file, plain or compressed (.bz2, .gz, .xz)."""
    opener = {".bz2": bz2.open, ".gz": gzip.open, ".xz": lzma.open}.get(path.suffix, open)
    with opener(path, "rt", encoding="utf-8") as f:  # type: ignore[operator]
        return str(f.read())


def json_lines(text: str) -> list[str]:
    """The records of a JSON Lines text: its non-blank "\\n"-ended lines (str.splitlines would also cut at
    U+2028 and U+0085, which a JSON string written with ensure_ascii=False holds as they are)."""
    return [line for line in text.split("\n") if line.strip()]


def load(corpus: str | Path, queries: str | Path | None = None) -> Benchmark:
    """Pick the loader from the corpus path: BEIR folder, topic folder/tarball, or Wikipedia JSON."""
    corpus, queries = Path(corpus), Path(queries) if queries else None
    if not corpus.exists():
        raise FileNotFoundError(f"no such corpus: {corpus}")
    if queries is not None and not queries.exists():
        raise FileNotFoundError(f"no such queries file: {queries}")
    if corpus.is_dir() and (corpus / "corpus.jsonl").exists():
        return load_beir(corpus)
    if corpus.is_dir() or corpus.name.endswith((".tar.bz2", ".tar.gz", ".tar", ".tgz")):
        if queries is None:
            raise ValueError("the topic-folder layout needs --queries")
        return load_topics(corpus, queries)
    if queries is None:
        raise ValueError("the Wikipedia layout needs --queries")
    return load_wikipedia(corpus, queries)


def load_wikipedia(articles: Path, queries: Path) -> Benchmark:
    """[{"title","text","label"}] and [{"topics": [titles], "text", "fusion": [...]}]."""
    rows = json.loads(open_text(articles))
    docs = [
        BenchDoc(id=f"d{i:05d}", text=r["text"], title=r["title"], unit=f"d{i:05d}", category=str(r["label"]))
        for i, r in enumerate(rows)
    ]
    by_title: dict[str, list[BenchDoc]] = defaultdict(list)
    for d in docs:
        by_title[d.title].append(d)
    out, skipped = [], []
    for i, q in enumerate(json.loads(open_text(queries))):
        missing = [t for t in q["topics"] if t not in by_title]
        if not q["topics"]:
            skipped.append(f"query {i}: no documents")
            continue
        if missing:
            skipped.append(f"query {i}: unknown document(s) {missing}")
            continue
        aspects = [
            Aspect(frozenset(d.unit for d in by_title[t]), frozenset(d.category for d in by_title[t]))
            for t in q["topics"]
        ]
        out.append(BenchQuery(f"q{i:04d}", q["text"], aspects, clean_fusion(q.get("fusion", []))))
    return Benchmark(articles.name, docs, out, skipped)


def clean_fusion(subqueries: list[str]) -> list[str]:
    """Drop blanks and list numbering ("1. ", "2) ", "- ": a mark before a space; "1.5 degrees" keeps its
    number) from LLM-written sub-queries."""
    import re

    cleaned = [re.sub(r"^\s*(?:\d+[.)]|[-*•])(?=\s)\s*", "", s).strip().strip('"') for s in subqueries if s]
    return [s for s in cleaned if s]


def _topic_files(corpus: Path) -> dict[str, tuple[str, Any]]:
    """path 'category/topic.json' -> parsed list, from a folder or a tarball."""
    files: dict[str, tuple[str, Any]] = {}
    if corpus.is_dir():
        for f in sorted(corpus.rglob("*.json")):
            parts = f.relative_to(corpus).parts
            if len(parts) >= 2:
                files["/".join(parts)] = (parts[-2], json.loads(f.read_text(encoding="utf-8")))
        return files
    with tarfile.open(corpus) as tar:
        for member in sorted(tar.getmembers(), key=lambda m: m.name):
            name = PurePosixPath(member.name)
            if member.isfile() and name.suffix == ".json" and len(name.parts) >= 2:
                data = tar.extractfile(member)
                if data is not None:
                    files[member.name] = (name.parts[-2], json.load(io.TextIOWrapper(data, encoding="utf-8")))
    return files


def topic_name(stem: str, category: str) -> str:
    """The topic a file holds: its name, less a "<category>_" prefix (the legal and chemical releases
    name files "tax laws/tax laws_Self-Employment Contributions Act.json"; queries say the topic alone)."""
    prefix = f"{category}_"
    return stem[len(prefix):] if stem.startswith(prefix) and len(stem) > len(prefix) else stem


def load_topics(corpus: Path, queries: Path) -> Benchmark:
    """One folder per category, one JSON file per topic ([{"title","text"}]); queries
    {"<n>": [{"related": [topic names], "text"}]}. A retrieved passage counts for its topic."""
    docs: list[BenchDoc] = []
    by_topic: dict[str, list[str]] = defaultdict(list)  # topic name -> units (names may repeat)
    for path, (category, passages) in _topic_files(corpus).items():
        topic = topic_name(PurePosixPath(path).stem, category)
        unit = str(PurePosixPath(path).with_suffix(""))
        held = len(docs)
        for j, p in enumerate(passages if isinstance(passages, list) else [passages]):
            if isinstance(p, dict) and str(p.get("text", "")).strip():
                docs.append(BenchDoc(f"{unit}#{j}", p["text"], str(p.get("title", topic)), unit, category))
        if len(docs) > held:  # a file of no usable passage is no topic: its queries are skipped, not unanswerable
            by_topic[topic].append(unit)
    if not docs:
        raise ValueError(f"{corpus}: no topic files (category/topic.json) found")
    category_of = {d.unit: d.category for d in docs}
    out, skipped = [], []
    for n, items in json.loads(open_text(queries)).items():
        for i, q in enumerate(items):
            missing = [t for t in q["related"] if t not in by_topic]
            if not q["related"]:
                skipped.append(f"query {n}/{i}: no topics")
                continue
            if missing:
                skipped.append(f"query {n}/{i}: unknown topic(s) {missing}")
                continue
            aspects = [
                Aspect(frozenset(by_topic[t]), frozenset(category_of[u] for u in by_topic[t] if u in category_of))
                for t in q["related"]
            ]
            out.append(BenchQuery(f"q{n}-{i}", q["text"], aspects, clean_fusion(q.get("fusion", []))))
    return Benchmark(corpus.name, docs, out, skipped)


def load_beir(folder: Path, split: str = "test") -> Benchmark:
    """BEIR: corpus.jsonl {_id,title,text}, queries.jsonl {_id,text}, qrels/<split>.tsv. When every document
    has a "category" (as `mrag bench` writes), it is the document's group and the category metric applies."""
    docs, skipped = [], []
    for r in map(json.loads, json_lines(open_text(folder / "corpus.jsonl"))):
        title = r.get("title") or ""
        text = r.get("text") or title  # a title-only document (TREC-COVID has many) is searched by its title
        if not text.strip():
            skipped.append(f"document {r['_id']}: no text and no title")
            continue
        docs.append(BenchDoc(str(r["_id"]), text, title, str(r["_id"]), str(r.get("category", ""))))
    grouped = bool(docs) and all(d.category for d in docs)  # `mrag bench` folders record each document's group
    texts = {str(r["_id"]): r["text"] for r in map(json.loads, json_lines(open_text(folder / "queries.jsonl")))}
    qrels: dict[str, dict[str, int]] = defaultdict(dict)
    for i, line in enumerate(open_text(folder / "qrels" / f"{split}.tsv").splitlines()):
        parts = line.split("\t")
        if i == 0 and not parts[-1].strip().lstrip("-").isdigit():
            continue  # header
        if len(parts) >= 3 and int(parts[-1]) > 0:
            qrels[parts[0]][parts[1]] = int(parts[-1])
    known = {d.unit for d in docs}
    category_of = {d.unit: d.category for d in docs}
    out = []
    for qid, rel in qrels.items():
        if qid not in texts or not set(rel) & known:
            skipped.append(f"query {qid}: no text or no known relevant document")
            continue
        aspects = [Aspect(frozenset([u]), frozenset([category_of[u]] if grouped else []), g)
                   for u, g in sorted(rel.items()) if u in known]
        out.append(BenchQuery(qid, texts[qid], aspects))
    return Benchmark(folder.name, docs, out, skipped, has_categories=grouped)
