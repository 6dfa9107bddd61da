"""Benchmark loaders: the MRAG paper's Wikipedia JSON, its topic-folder layout, and BEIR.

Everything becomes a `Benchmark`: documents (each with a unit and a category) and queries whose
relevant set is a list of aspects. An aspect is satisfied when any of its units is retrieved: a
title shared by several documents is one aspect with several acceptable documents, so duplicate
titles never merge documents. In the topic layout a unit is a topic (one JSON file of passages) and
its category is its folder. Queries naming something missing are reported and skipped.
"""

from __future__ import annotations

import tarfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from mrag.documents import clean_text
from mrag.evaluate.files import decode, jsonl_records, loads, parse_json, read_qrels, required, text_field

BEIR_FILES = "corpus.jsonl, queries.jsonl and qrels/test.tsv"


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

    def __post_init__(self) -> None:  # searched as `Index.search` searches a query (`documents.clean_text`)
        self.text = clean_text(self.text)
        self.fusion = [clean_text(q) for q in self.fusion]

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


def load(corpus: str | Path, queries: str | Path | None = None) -> Benchmark:
    """Pick the loader from the corpus path: BEIR folder, topic folder/tarball, or Wikipedia JSON."""
    corpus, queries = Path(corpus), Path(queries) if queries else None
    if not corpus.exists():
        raise FileNotFoundError(f"no such corpus: {corpus}")
    if queries is not None and not queries.exists():
        raise FileNotFoundError(f"no such queries file: {queries}")
    if corpus.is_dir() and (corpus / "corpus.jsonl").exists():
        return load_beir(corpus)
    if corpus.is_dir() and queries is None:
        raise ValueError(f"{corpus} is no BEIR folder ({BEIR_FILES}; it holds {folder_listing(corpus)}), and "
                         "the topic-folder layout (category/topic.json files) needs --queries")
    if corpus.is_dir() or corpus.name.endswith((".tar.bz2", ".tar.gz", ".tar", ".tgz")):
        if queries is None:
            raise ValueError("the topic-folder layout needs --queries")
        return load_topics(corpus, queries)
    if queries is None:
        raise ValueError("the Wikipedia layout needs --queries")
    return load_wikipedia(corpus, queries)


def folder_listing(folder: Path, most: int = 8) -> str:
    """The first names in a folder, for an error message ('corpus.csv, qrels/, queries.jsonl')."""
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    return ", ".join(names[:most]) + (", ..." if len(names) > most else "") if names else "nothing"


def json_list(path: Path, what: str) -> list[dict[str, Any]]:
    """A JSON file holding a list of objects (`what` names one, for the error)."""
    rows = parse_json(path)
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise ValueError(f"{path}: expected a JSON list of {what} objects")
    return rows


def load_wikipedia(articles: Path, queries: Path) -> Benchmark:
    """[{"title","text","label"}] and [{"topics": [titles], "text", "fusion": [...]}]."""
    docs = []
    for i, r in enumerate(json_list(articles, "article")):
        where = f"{articles}: record {i}"
        docs.append(BenchDoc(id=f"d{i:05d}", text=text_field(r, "text", where), title=str(required(r, "title", where)),
                             unit=f"d{i:05d}", category=str(required(r, "label", where))))
    by_title: dict[str, list[BenchDoc]] = defaultdict(list)
    for d in docs:
        by_title[d.title].append(d)
    out, skipped = [], []
    for i, q in enumerate(json_list(queries, "query")):
        where = f"{queries}: record {i}"
        topics, text = list(dict.fromkeys(required(q, "topics", where))), text_field(q, "text", where)  # once each
        missing = [t for t in topics if t not in by_title]
        if not topics:
            skipped.append(f"query {i}: no documents")
            continue
        if missing:
            skipped.append(f"query {i}: unknown document(s) {missing}")
            continue
        if not text.strip():
            skipped.append(f"query {i}: empty text")
            continue
        aspects = [
            Aspect(frozenset(d.unit for d in by_title[t]), frozenset(d.category for d in by_title[t]))
            for t in topics
        ]
        out.append(BenchQuery(f"q{i:04d}", text, aspects, clean_fusion(q.get("fusion", []))))
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
                files["/".join(parts)] = (parts[-2], parse_json(f))
        return files
    with tarfile.open(corpus) as tar:
        for member in sorted(tar.getmembers(), key=lambda m: m.name):
            name = PurePosixPath(member.name)
            if member.isfile() and name.suffix == ".json" and len(name.parts) >= 2:
                data = tar.extractfile(member)
                if data is not None:
                    where = f"{corpus}: {member.name}"
                    files[member.name] = (name.parts[-2], loads(decode(data.read(), where), where))
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
        raise ValueError(f"{corpus}: no topic files (category/topic.json) found; a BEIR folder needs {BEIR_FILES}")
    category_of = {d.unit: d.category for d in docs}
    out, skipped = [], []
    by_size = parse_json(queries)
    if not isinstance(by_size, dict):
        raise ValueError(f'{queries}: expected a JSON object {{"<n>": [queries]}} (the topic layout\'s queries)')
    for n, items in by_size.items():
        for i, q in enumerate(items):
            where = f"{queries}: query {n}/{i}"
            related, text = list(dict.fromkeys(required(q, "related", where))), text_field(q, "text", where)
            missing = [t for t in related if t not in by_topic]
            if not related:
                skipped.append(f"query {n}/{i}: no topics")
                continue
            if missing:
                skipped.append(f"query {n}/{i}: unknown topic(s) {missing}")
                continue
            if not text.strip():
                skipped.append(f"query {n}/{i}: empty text")
                continue
            aspects = [
                Aspect(frozenset(by_topic[t]), frozenset(category_of[u] for u in by_topic[t] if u in category_of))
                for t in related
            ]
            out.append(BenchQuery(f"q{n}-{i}", text, aspects, clean_fusion(q.get("fusion", []))))
    return Benchmark(corpus.name, docs, out, skipped)


def load_beir(folder: Path, split: str = "test") -> Benchmark:
    """BEIR: corpus.jsonl {_id,title,text}, queries.jsonl {_id,text}, qrels/<split>.tsv. When every document
    has a "category" (as `mrag bench` writes), it is the document's group and the category metric applies.
    A query is skipped (and said why) when it has no text or names a document the corpus lacks."""
    docs, skipped = beir_docs(folder / "corpus.jsonl")
    grouped = bool(docs) and all(d.category for d in docs)  # `mrag bench` folders record each document's group
    texts = beir_queries(need(folder, "queries.jsonl"))
    qrels = read_qrels(qrels_file(folder, split))
    category_of = {d.unit: d.category for d in docs}
    out = []
    for qid, rel in qrels.items():
        missing = sorted(u for u in rel if u not in category_of)
        if qid not in texts:
            skipped.append(f"query {qid}: not in queries.jsonl")
        elif not texts[qid].strip():
            skipped.append(f"query {qid}: empty text")
        elif missing:
            skipped.append(f"query {qid}: unknown document(s) {missing}")
        else:
            aspects = [Aspect(frozenset([u]), frozenset([category_of[u]] if grouped else []), g)
                       for u, g in sorted(rel.items())]
            out.append(BenchQuery(qid, texts[qid], aspects))
    return Benchmark(folder.name, docs, out, skipped, has_categories=grouped)


def need(folder: Path, name: str) -> Path:
    """A file a BEIR folder must hold."""
    if not (folder / name).is_file():
        raise ValueError(f"{folder} has no {name}: a BEIR folder needs {BEIR_FILES}")
    return folder / name


def qrels_file(folder: Path, split: str) -> Path:
    """qrels/<split>.tsv, or an error naming the splits the folder has."""
    path = folder / "qrels" / f"{split}.tsv"
    if path.is_file():
        return path
    found = sorted(p.name for p in (folder / "qrels").glob("*.tsv")) if (folder / "qrels").is_dir() else []
    if not found:
        raise ValueError(f"{folder} has no qrels/{split}.tsv: a BEIR folder needs {BEIR_FILES}")
    raise ValueError(f"{folder} has no qrels/{split}.tsv (it has qrels/{', qrels/'.join(found)}): evaluation reads "
                     f"the {split} split; copy the split to score to qrels/{split}.tsv")


def beir_docs(path: Path) -> tuple[list[BenchDoc], list[str]]:
    """The documents of a corpus.jsonl, and why any was skipped; a repeated _id is refused."""
    docs, skipped = [], []
    line_of: dict[str, int] = {}
    for number, r in jsonl_records(path):
        doc_id = str(required(r, "_id", f"{path}: line {number}"))
        if doc_id in line_of:
            raise ValueError(f"{path}: line {number}: document id {doc_id!r} repeats line {line_of[doc_id]}: "
                             "give each document its own _id")
        line_of[doc_id] = number
        title = r.get("title") or ""
        text = r.get("text") or title  # a title-only document (TREC-COVID has many) is searched by its title
        if not text.strip():
            skipped.append(f"document {doc_id}: no text and no title")
            continue
        docs.append(BenchDoc(doc_id, text, title, doc_id, str(r.get("category", ""))))
    return docs, skipped


def beir_queries(path: Path) -> dict[str, str]:
    """query id -> text of a queries.jsonl; a repeated _id is refused (the later text would replace the first)."""
    texts: dict[str, str] = {}
    line_of: dict[str, int] = {}
    for number, r in jsonl_records(path):
        where = f"{path}: line {number}"
        qid = str(required(r, "_id", where))
        if qid in line_of:
            raise ValueError(f"{where}: query id {qid!r} repeats line {line_of[qid]}: give each query its own _id")
        line_of[qid], texts[qid] = number, text_field(r, "text", where)
    return texts
