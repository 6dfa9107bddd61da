"""`mrag bench`: a multi-aspect benchmark made from a user's own documents.

The folder it writes is a BEIR folder that `mrag eval --corpus DIR` reads as it is:
    corpus.jsonl   {"_id", "title", "text", "category", "doc_id"}   category = the document's group,
                   doc_id = the id `mrag index` gives it (what `mrag tune` matches on)
    queries.jsonl  {"_id", "text", "n", "relevant", "touches", "form"}  appended one by one (resumable);
                   touches = how many relevant documents share a content word with the query
    dropped.jsonl  {"_id", "text", "n", "reason"}                   queries the checks refused
    qrels/test.tsv query-id, corpus-id, score                       written at the end
    bench.json     the settings, how the groups were found, counts

A query of size n needs n documents from n different groups. Groups are the input's sub-folders,
a metadata field, or k-means clusters of the standard embeddings when there is neither.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from random import Random
from typing import Any

import numpy as np

from mrag.documents import Document
from mrag.evaluate.files import json_lines
from mrag.evaluate.querygen import QueryWriter, content_words, quoted_words
from mrag.ingest import read_paths

DEFAULT_NS = (1, 2, 3, 4, 6)
DEFAULT_PER_N = 25
MAX_QUOTE = 8  # a query repeating 8 consecutive words of a document is dropped
MAX_SIMILARITY = 0.95  # ... and one whose embedding is this close to a relevant document's
Embed = Callable[[list[str]], np.ndarray]  # texts -> (N, D) standard embeddings


@dataclass
class Planned:
    id: str
    n: int
    docs: list[int]  # positions in the corpus


def relative_id(doc: Document, roots: Sequence[Path]) -> str:
    """A file's path below the folder it was found in ('history/rome.md'); a record's id, or without one the
    file's and its place ('history/dates.jsonl#2')."""
    if doc.id == doc.source:
        return relative_path(doc.source, roots)
    if doc.id.startswith(doc.source + "#"):
        return relative_path(doc.source, roots) + doc.id[len(doc.source):]
    return doc.id


def relative_path(source: str, roots: Sequence[Path]) -> str:
    """A file's path below the first of `roots` (folders given) that holds it, else its name."""
    path = Path(source)
    for root in roots:
        if root.is_dir() and path.is_relative_to(root):
            return path.relative_to(root).as_posix()
    return path.name


def folder_groups(places: Sequence[str]) -> list[str] | None:
    """The first folder of each document's file below the folder given (`relative_path`), when every
    document lies in one and there are two or more."""
    firsts = [i.split("/", 1)[0] if "/" in i else None for i in places]
    if any(f is None for f in firsts) or len(set(firsts)) < 2:
        return None
    return [str(f) for f in firsts]


def cluster_count(n_docs: int, at_least: int) -> int:
    """sqrt(N / 2) clusters, at least the largest n asked (and 2), at most N / 2."""
    return max(at_least, 2, min(round(math.sqrt(n_docs / 2)), n_docs // 2))


def kmeans(x: np.ndarray, k: int, seed: int, iterations: int = 25) -> np.ndarray:
    """Spherical k-means (cosine) with k-means++ seeding.  x: (N, D) -> labels (N,)"""
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    rng = np.random.default_rng(seed)
    centres = [x[rng.integers(len(x))]]
    for _ in range(1, k):
        far = np.clip(1 - np.max(x @ np.array(centres).T, axis=1), 0, None) ** 2
        centres.append(x[rng.choice(len(x), p=far / far.sum())] if far.sum() > 0 else x[rng.integers(len(x))])
    c = np.array(centres)  # (k, D)
    labels = np.zeros(len(x), dtype=int)
    for _ in range(iterations):
        labels = np.argmax(x @ c.T, axis=1)
        for j in range(k):
            members = x[labels == j]
            if len(members):
                c[j] = members.sum(0) / max(np.linalg.norm(members.sum(0)), 1e-12)
    return labels


def plan(groups: Sequence[str], ns: Sequence[int], per_n: int, seed: int) -> list[Planned]:
    """For each n, `per_n` queries over n distinct groups; within a group the documents are taken in a
    seeded shuffled cycle, so every document is used about as often as its group allows."""
    by_group: dict[str, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        by_group[g].append(i)
    names = sorted(by_group)
    for n in ns:
        if n > len(names):
            raise ValueError(f"--n {n} needs {n} groups but the documents form {len(names)}: lower --n, "
                             "add documents from other groups, or choose another --group-by")
    rng = Random(seed)
    cycles = {g: rng.sample(by_group[g], len(by_group[g])) for g in names}
    taken = dict.fromkeys(names, 0)
    out = []
    for n in ns:
        for j in range(per_n):
            chosen = rng.sample(names, n)
            docs = []
            for g in chosen:
                docs.append(cycles[g][taken[g] % len(cycles[g])])
                taken[g] += 1
            out.append(Planned(f"n{n}-{j:03d}", n, docs))
    return out


def fingerprint(docs: Sequence[dict[str, Any]], settings: dict[str, Any]) -> str:
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for d in docs:
        h.update(json.dumps([d["_id"], d["category"], d["text"]]).encode())
    return h.hexdigest()[:20]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSONL file; a last line cut short by a crash is ignored, a broken line before it refused."""
    if not path.exists():
        return []
    lines, rows = json_lines(path.read_text(encoding="utf-8")), []
    for number, line in enumerate(lines, 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            if number < len(lines):
                raise ValueError(f"{path}: invalid JSON at line {number} ({e.msg})") from None
    return rows


def drop_cut_line(path: Path) -> None:
    """Cut a JSONL file back to its last complete ("\\n"-ended) line: a crash mid-write leaves a partial last
    line, which `read_jsonl` ignores but an append would run on into, breaking the file for good."""
    if not path.exists():
        return
    with path.open("rb+") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)  # 0 when no line is complete


def append_jsonl(path: Path, row: dict[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.flush()


def build(
    paths: Sequence[str | Path],
    out: str | Path,
    writer: QueryWriter,
    embed: Embed | None = None,
    ns: Sequence[int] = DEFAULT_NS,
    per_n: int = DEFAULT_PER_N,
    seed: int = 0,
    group_by: str | None = None,
    max_quote: int = MAX_QUOTE,
    max_similarity: float = MAX_SIMILARITY,
    show_progress: bool = False,
) -> dict[str, Any]:
    """Write (or resume) a benchmark folder; -> its bench.json. `embed` finds clusters when the documents
    have no groups, and checks queries for near-copies (None: no embedding check)."""
    if not ns or min(ns) < 1:
        raise ValueError(f"--n must list sizes of 1 or more, got {list(ns)}")
    if per_n < 1:
        raise ValueError(f"--per-n must be positive, got {per_n}")
    docs, _ = read_paths(paths)
    if len(docs) < 2:
        raise ValueError(f"a benchmark needs at least 2 documents; found {len(docs)} in {', '.join(map(str, paths))}")
    roots = [Path(p).expanduser().resolve() for p in paths]
    ids = [relative_id(d, roots) for d in docs]
    if len(set(ids)) != len(ids):
        raise ValueError("two documents share an id; give each input once")
    places = [relative_path(d.source, roots) for d in docs]
    groups, how = find_groups(docs, ids, places, group_by, embed, max(ns), seed)
    corpus = [{"_id": i, "title": d.title, "text": d.text, "category": g, "doc_id": d.id}
              for i, d, g in zip(ids, docs, groups)]
    settings = {"n": list(ns), "per_n": per_n, "seed": seed, "generator": writer.name, "groups": how,
                "max_quote": max_quote, "max_similarity": max_similarity if embed else None,
                "duplicates": "dropped"}  # a folder begun before the rule is not resumed under it
    folder = Path(out)
    key = fingerprint(corpus, settings)
    planned = plan(groups, ns, per_n, seed)  # refuses sizes the groups cannot fill, before anything is written
    start(folder, corpus, key)
    for name in ("queries.jsonl", "dropped.jsonl"):
        drop_cut_line(folder / name)  # a resumed run appends after the last whole line
    kept = read_jsonl(folder / "queries.jsonl")
    done = {r["_id"] for r in kept + read_jsonl(folder / "dropped.jsonl")}
    texts = {r["text"] for r in kept}  # a query written twice (few documents, the same ones drawn) is kept once
    todo = [p for p in planned if p.id not in done]
    vectors = embed([d.text for d in docs]) if embed is not None and todo and max_similarity < 1 else None
    rng = Random(seed)
    work: Any = todo
    if show_progress:
        from tqdm import tqdm

        work = tqdm(todo, desc="writing queries", unit="query", initial=len(planned) - len(todo), total=len(planned))
    for p in work:
        rng.seed(f"{seed}:{p.id}")  # each query's own stream: a resumed run writes what a whole run would
        draft = writer.write([(docs[i].title, docs[i].text) for i in p.docs], rng)
        text = draft.text if draft else ""
        refusal = check(text, [docs[i].text for i in p.docs], max_quote)
        if refusal is None and text in texts:
            refusal = ("duplicate", "the text of an earlier query")
        if refusal is None and vectors is not None and embed is not None:
            refusal = near_copy(embed([text])[0], vectors[p.docs], max_similarity)
        row = {"_id": p.id, "text": text, "n": p.n, "relevant": [ids[i] for i in p.docs],
               "touches": touched(text, [docs[i].text for i in p.docs])}
        if refusal:
            append_jsonl(folder / "dropped.jsonl", row | {"reason": refusal[0], "detail": refusal[1]})
        else:
            texts.add(text)
            append_jsonl(folder / "queries.jsonl", row | {"form": draft.form if draft else ""})
    return finish(folder, planned, settings | {"documents": len(docs), "fingerprint": key})


def find_groups(
    docs: Sequence[Document], ids: Sequence[str], places: Sequence[str], group_by: str | None, embed: Embed | None,
    at_least: int, seed: int,
) -> tuple[list[str], str]:
    """Each document's group and how they were found: a metadata field, the sub-folders of their files
    (`places`: `relative_path`), or clusters."""
    if group_by:
        missing = [i for i, d in zip(ids, docs) if d.metadata.get(group_by) in (None, "")]
        if missing:
            raise ValueError(f"{len(missing)} document(s) have no {group_by!r} field, e.g. {missing[0]}")
        return [str(d.metadata[group_by]) for d in docs], f"metadata field {group_by!r}"
    by_folder = folder_groups(places)
    if by_folder is not None:
        return by_folder, "sub-folders"
    if embed is None:
        raise ValueError("the documents lie in no sub-folders and no --group-by field was given: "
                         "clustering them needs an embedding model")
    k = cluster_count(len(docs), at_least)
    if k > len(docs):
        raise ValueError(f"--n {at_least} needs {at_least} groups but there are only {len(docs)} documents")
    labels = kmeans(embed([d.text for d in docs]), k, seed)
    return [f"cluster-{label:02d}" for label in labels], f"{k} k-means clusters of the standard embeddings"


def touched(text: str, relevant: Sequence[str]) -> int:
    """How many of the relevant documents share a content word with the query."""
    query = set(content_words(text))
    return sum(1 for d in relevant if query & set(content_words(d)))


def check(text: str, relevant: Sequence[str], max_quote: int) -> tuple[str, str] | None:
    """(why, detail) when a written query is refused, else None."""
    if not text.strip():
        return "no query written", "the writer gave no usable text"
    if touched(text, relevant) == 0:
        return "touches no document", "no content word in common with any relevant document"
    quoted = max(quoted_words(text, d) for d in relevant)
    if quoted >= max_quote:
        return "quotes a document", f"{quoted} consecutive words of a relevant document"
    return None


def near_copy(query: np.ndarray, relevant: np.ndarray, max_similarity: float) -> tuple[str, str] | None:
    """A query whose embedding is almost a relevant document's: an embedding search finds it trivially."""
    cos = relevant @ query / np.maximum(np.linalg.norm(relevant, axis=1) * np.linalg.norm(query), 1e-12)
    best = float(np.max(cos))
    return ("near copy", f"cosine {best:.3f} to a relevant document") if best >= max_similarity else None


def start(folder: Path, corpus: list[dict[str, Any]], key: str) -> None:
    """A new folder gets the corpus; an existing one must have been started with the same documents and
    settings (then the run resumes)."""
    manifest = folder / "bench.json"
    if manifest.exists():
        recorded = json.loads(manifest.read_text(encoding="utf-8")).get("fingerprint")
        if recorded != key:
            raise ValueError(f"{folder} holds a benchmark of other documents or settings: choose another -o")
        return
    if folder.exists() and any(folder.iterdir()):
        raise ValueError(f"{folder} exists and is not a benchmark folder: choose another -o")
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "corpus.jsonl.tmp"
    tmp.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in corpus), encoding="utf-8")
    tmp.replace(folder / "corpus.jsonl")
    manifest.write_text(json.dumps({"fingerprint": key, "complete": False}, indent=2), encoding="utf-8")


def finish(folder: Path, planned: list[Planned], settings: dict[str, Any]) -> dict[str, Any]:
    """qrels/test.tsv from the kept queries, and bench.json with the counts."""
    kept = read_jsonl(folder / "queries.jsonl")
    dropped = read_jsonl(folder / "dropped.jsonl")
    (folder / "qrels").mkdir(exist_ok=True)
    lines = ["query-id\tcorpus-id\tscore"] + [f"{q['_id']}\t{d}\t1" for q in kept for d in q["relevant"]]
    (folder / "qrels" / "test.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    reasons: dict[str, int] = defaultdict(int)
    for d in dropped:
        reasons[d["reason"]] += 1
    per_n: dict[str, dict[str, int]] = {}
    for p in planned:
        per_n.setdefault(str(p.n), {"planned": 0, "kept": 0})["planned"] += 1
    for q in kept:
        per_n[str(q["n"])]["kept"] += 1
    full = sum(1 for q in kept if q.get("touches", q["n"]) == q["n"])
    info = settings | {"complete": True, "queries": len(kept), "dropped": len(dropped),
                       "touching_every_document": full,
                       "dropped_by_reason": dict(reasons), "per_n": per_n,
                       "groups_found": len({d["category"] for d in read_jsonl(folder / "corpus.jsonl")})}
    (folder / "bench.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
    return info
