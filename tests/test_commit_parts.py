"""A long `mrag index` run commits in parts (`sync.commit_parts`): the parts end as one commit would, and a
run killed midway keeps the parts it committed, which the next run skips."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FakeEmbedder

from mrag import sync
from mrag.chunk import chunk_text
from mrag.documents import Document
from mrag.embed.base import PROBE
from mrag.index import Index
from mrag.retrieve import fulltext
from mrag.sync import commit_parts
from mrag.writing import FromFiles

PROCS = str(Path(__file__).with_name("procs.py"))
LONG = "One two three. Four five six. Seven eight nine."  # three chunks of at most 20 characters


def doc(i: str, text: str) -> Document:
    return Document(id=i, text=text, source=f"/notes/{i}.txt")


def test_parts_end_once_the_chunks_to_embed_reach_the_limit(tmp_path):
    index = Index.open(tmp_path / "db", embedder=FakeEmbedder(), chunk_chars=20, overlap=0)
    assert len(chunk_text(LONG, 20, 0)) == 3
    a, b, long, d = doc("a", "Alpha here."), doc("b", "Beta here."), doc("long", LONG), doc("d", "Delta.")
    ids = [[x.id for x in part] for part in commit_parts(index.store, [a, b, long, d], 2)[0]]
    assert ids == [["a", "b"], ["long"], ["d"]]  # 1 + 1 chunks, then 3, then the last 1
    assert commit_parts(index.store, [a, b, long, d], 0) == ([[a, b, long, d]], None, None)  # 0: one commit
    assert commit_parts(index.store, [a, b], 100) == ([[a, b]], None, None)  # fewer characters than the limit
    index.upsert([a, b], files=FromFiles())  # unchanged now: nothing to embed, so no part ends on them
    assert [[x.id for x in part] for part in commit_parts(index.store, [a, b, long, d], 2)[0]] == [
        ["a", "b", "long"], ["d"]]
    index.add([f"Filler {i}." for i in range(38)])  # 40 rows: a part ends at a quarter of the rows before it
    many = [doc(f"n{i}", f"New {i}.") for i in range(30)]
    assert [len(part) for part in commit_parts(index.store, many, 2)[0]] == [10, 12, 8]  # 40 // 4, then 50 // 4


def rows(index: Index) -> list[tuple]:
    return sorted((r["id"], r["doc_id"], r["source"], r["doc_hash"], r["text"]) for r in index.store.rows().to_pylist())


def write(path: Path, records: dict[str, str]) -> None:
    path.write_text("\n".join(json.dumps({"id": i, "text": t}) for i, t in records.items()))


def test_a_run_in_parts_ends_as_one_commit_would(tmp_path):
    """Files edited, deleted (--prune), records gone from a file and records moved between files in parts
    before and after theirs: the same rows and sums as runs of one commit each."""
    folder = tmp_path / "files"
    folder.mkdir()
    for i, topic in enumerate(["glaciers melt", "bees fan hives", "rome built aqueducts", "tides follow the moon",
                               "knights move in chess", "volcanoes erupt lava"]):
        (folder / f"note{i}.txt").write_text(f"A note about how {topic}.")
    write(folder / "m.jsonl", {f"r{i}": f"Record {i} about owls and {w}." for i, w in enumerate("abcdef")})
    parts, whole = (Index.open(tmp_path / name, embedder=FakeEmbedder()) for name in ("parts", "whole"))

    def both(prune: bool = False) -> None:
        split, one = parts.add_paths([folder], prune=prune, commit_every=2), whole.add_paths([folder], prune=prune)
        for key in ("added", "updated", "unchanged", "removed"):
            assert sorted(getattr(split, key)) == sorted(getattr(one, key)), key
        assert split.chunks == one.chunks and rows(parts) == rows(whole)
        for index in (parts, whole):
            assert index.verify()["sums_drift"] < 1e-6 and index.verify()["duplicate_ids"] == 0

    both()
    assert parts.store.manifest.maintenance["writes"] == 6 and whole.store.manifest.maintenance["writes"] == 1
    assert parts.store.reading(fulltext.has_index)  # built by the first part; the rest as the policy says
    for index in (parts, whole):
        assert index.search("owls and e", k=1, strategy="bm25")[0].doc_id == "r4"
    (folder / "note1.txt").write_text("A note about how bees dance.")
    (folder / "note4.txt").unlink()
    write(folder / "m.jsonl", {"r0": "Record 0 about owls and a.", "r2": "Record 2, now about herons."})
    write(folder / "z.jsonl", {"r3": "Record 3 about owls and d.", "r9": "A new record about comets."})
    both(prune=True)  # r1, r4, r5 gone, r3 moved to a file read in a later part, note4 pruned
    assert {r[1] for r in rows(parts)} >= {"r3", "r9"} and "r1" not in {r[1] for r in rows(parts)}
    write(folder / "z.jsonl", {"r9": "A new record about comets."})
    write(folder / "a.jsonl", {"r3": "Record 3 about owls and d."})  # moved again, to a file read before
    both()
    assert {r[1]: r[2] for r in rows(parts)}["r3"] == str((folder / "a.jsonl").resolve())


class Counting(FakeEmbedder):
    def __init__(self) -> None:
        super().__init__()
        self.texts: list[str] = []

    def embed_batch(self, texts: list[str]):
        self.texts += texts
        return super().embed_batch(texts)


def test_a_run_killed_midway_keeps_its_parts_and_the_next_run_embeds_the_rest(tmp_path):
    folder = tmp_path / "files"
    folder.mkdir()
    for i in range(8):
        (folder / f"note{i}.txt").write_text(f"Note {i} about glaciers and bees number {i}.")
    run = subprocess.Popen([sys.executable, PROCS, "parts", str(tmp_path / "db"), str(folder), "2", "3"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert run.stdout is not None
    seen = [run.stdout.readline().strip() for _ in range(3)]
    assert seen == ["embedding 1", "embedding 2", "embedding 3"], run.stderr and run.stderr.read()
    run.kill()  # -9, while it embeds its third part: the first two are committed
    run.wait(timeout=60)
    embedder = Counting()
    index = Index.open(tmp_path / "db", embedder=embedder)
    assert len({r["doc_id"] for r in index.store.rows().to_pylist()}) == 4
    assert index.verify()["sums_drift"] < 1e-6
    assert index.store.reading(fulltext.unindexed_rows) == 2  # built by the first part, caught up by the last
    assert index.search("glaciers bees number 3", k=1, strategy="bm25")[0].doc_id.endswith("note3.txt")
    embedder.texts = []  # the search's
    report = index.add_paths([folder], commit_every=2)
    assert len(report.unchanged) == 4 and len(report.added) == 4 and len(embedder.texts) == 4 == report.chunks
    clean = Index.open(tmp_path / "clean", embedder=FakeEmbedder())
    clean.add_paths([folder])
    assert rows(index) == rows(clean) and index.verify()["sums_drift"] < 1e-6


class Meddling(FakeEmbedder):
    """Runs `meanwhile` at its first embedding of documents (not the index's probe at its opening)."""

    def __init__(self, meanwhile) -> None:
        super().__init__()
        self.meanwhile = meanwhile

    def embed_batch(self, texts: list[str]):
        if self.meanwhile is not None and texts != [PROBE]:
            meanwhile, self.meanwhile = self.meanwhile, None
            meanwhile()
        return super().embed_batch(texts)


def test_a_file_another_run_wrote_meanwhile_is_left_as_committed_in_every_later_part(tmp_path):
    """A part that finds a file changed since it was read and written by another run leaves it as committed;
    the parts after it wrote that file's other records from the stale read (a record the file no longer holds
    was indexed)."""
    folder = tmp_path / "files"
    folder.mkdir()
    first = {f"a{i}": f"Record a{i} about owls." for i in range(6)}
    write(folder / "a.jsonl", first)
    Index.open(tmp_path / "db", embedder=FakeEmbedder()).add_paths([folder])
    write(folder / "a.jsonl", first | {"a0": "Record a0, edited once.", "a_new": "A new record about comets."})

    def edited_again_and_indexed() -> None:
        write(folder / "a.jsonl", first | {"a0": "Record a0, edited twice, a_new dropped."})
        Index.open(tmp_path / "db", embedder=FakeEmbedder()).add_paths([folder])

    index = Index.open(tmp_path / "db", embedder=Meddling(edited_again_and_indexed))
    report = index.add_paths([folder], commit_every=1)
    assert [s.reason for s in report.skipped] == [sync.CHANGED] and report.added == []
    texts = {r[1]: r[4] for r in rows(index)}
    assert "a_new" not in texts and texts["a0"] == "Record a0, edited twice, a_new dropped."


def test_an_id_taken_between_parts_is_refused_saying_what_was_kept(tmp_path):
    folder = tmp_path / "files"
    folder.mkdir()
    write(folder / "a.jsonl", {f"a{i}": f"Record a{i} about owls." for i in range(4)})
    write(folder / "b.jsonl", {f"b{i}": f"Record b{i} about bats." for i in range(4)})
    (tmp_path / "c.jsonl").write_text(json.dumps({"id": "b3", "text": "Another b3."}))
    taken = []

    class TakenMeanwhile(FakeEmbedder):
        def embed_batch(self, texts: list[str]):
            if texts != [PROBE] and self.batches == 2 and not taken:  # the second part's embedding
                taken.append(Index.open(tmp_path / "db", embedder=FakeEmbedder()).add_paths([tmp_path / "c.jsonl"]))
            return super().embed_batch(texts)

    with pytest.raises(ValueError, match="b3 .*; part 2 of 2: the 4 documents of the parts before are committed"):
        Index.open(tmp_path / "db", embedder=TakenMeanwhile()).add_paths([folder], commit_every=4)
    assert len(rows(Index.open(tmp_path / "db", embedder=FakeEmbedder()))) == 5  # a0-a3, and the other run's b3


def test_the_last_part_catches_the_full_text_index_up_even_with_nothing_to_embed(tmp_path):
    folder = tmp_path / "files"
    folder.mkdir()
    (folder / "z.txt").write_text("A note about glaciers.")
    Index.open(tmp_path / "db", embedder=FakeEmbedder()).add_paths([folder])
    write(folder / "a.jsonl", {f"r{i}": f"Record {i} about owls." for i in range(1200)})
    index = Index.open(tmp_path / "db", embedder=FakeEmbedder())
    index.add_paths([folder], commit_every=300)  # the last part, z.txt, is unchanged
    assert index.store.reading(fulltext.unindexed_rows) == 0


class ShortSighted(FakeEmbedder):
    """Reads 8 "tokens": a text of more than 20 characters is longer than it reads."""

    max_length = 8

    def unread(self, texts):
        return sum(len(t) > 20 for t in texts), 0


def test_a_run_in_parts_warns_once_with_the_runs_totals(tmp_path):
    """Each part repeated its own warning ("1 of 1 chunks ..." four times): the run's totals, once."""
    folder = tmp_path / "docs"
    folder.mkdir()
    for i in range(4):
        (folder / f"long{i}.txt").write_text(f"A long text about aqueducts number {i}.")
    (folder / "short.txt").write_text("Bees.")
    index = Index.open(tmp_path / "db", embedder=ShortSighted())
    report = index.add_paths([folder], commit_every=1)
    assert index.store.manifest.maintenance["writes"] > 1 and report.to_dict()["warnings"] == [
        "4 of 5 chunks are longer than the model reads (8 tokens): their vectors see only their start (a smaller "
        "--chunk-chars, or a model that reads more)"]
    assert "warnings" not in index.add_paths([folder]).to_dict()  # nothing written: nothing to warn of
