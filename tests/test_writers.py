"""Several processes on one index: writers take turns under the file lock, readers follow commits,
killed writers lose nothing acknowledged, and maintenance keeps a long-running index small.

Real processes (`tests/procs.py`), not threads: a file lock and a lost update only show across them.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from procs import check_index, expected_documents

import mrag.store
from mrag.index import Index
from mrag.locking import LockTimeout

PROCS = str(Path(__file__).with_name("procs.py"))


def start(*args: object) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, PROCS, *map(str, args)], stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 240) -> None:
    _, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-2000:]


def searches(log: Path) -> dict:
    import json

    lines = [json.loads(line) for line in log.read_text().splitlines()]
    errors = [line["error"] for line in lines if "error" in line]
    assert not errors, errors[:3]
    return lines[-1]


def test_writers_and_searchers_in_several_processes(tmp_path, fake):
    db = tmp_path / "db"
    Index.open(db, embedder=fake).add([{"id": "seed", "text": "river mountain castle"}])
    logs = [tmp_path / f"w{i}.log" for i in range(3)]
    writers = [start("writer", db, log, f"w{i}", 14, i) for i, log in enumerate(logs)]
    readers = [start("searcher", db, tmp_path / f"s{i}.log", 8, 10 + i) for i in range(2)]
    for proc in writers + readers:
        finish(proc)
    logs.append(tmp_path / "seed.log")
    logs[-1].write_text('{"op": "add", "id": "seed", "text": "river mountain castle", "state": "ok"}\n')
    counts = check_index(str(db), logs)
    assert counts["in_flight"] == 0 and counts["documents"] == counts["acknowledged"] > 20
    for i in range(2):
        assert searches(tmp_path / f"s{i}.log")["searches"] > 0


def test_killed_writers_lose_nothing_acknowledged(tmp_path, fake):
    """One writer runs through; another is killed with -9 at random moments and restarted each time."""
    db = tmp_path / "db"
    Index.open(db, embedder=fake)
    rng = random.Random(7)
    steady = start("writer", db, tmp_path / "steady.log", "steady", 30, 1)
    logs = [tmp_path / "steady.log"]
    for kill in range(5):
        logs.append(tmp_path / f"victim{kill}.log")
        victim = start("writer", db, logs[-1], f"victim{kill}", 1000, 100 + kill)
        deadline = time.monotonic() + 60
        while not (logs[-1].exists() and logs[-1].read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)  # started: it has begun its first write
        time.sleep(rng.uniform(0.0, 1.5))
        victim.send_signal(signal.SIGKILL)
        victim.wait()
    finish(steady)
    counts = check_index(str(db), logs)
    assert counts["acknowledged"] > 30
    # and the index takes writes again, whatever the dead writers left behind
    index = Index.open(db, embedder=fake)
    index.add([{"id": "after", "text": "written after the crashes"}])
    assert index.search("written after the crashes", k=1)[0].doc_id == "after"
    assert index.verify()["sums_drift"] < 1e-6


def test_an_open_index_sees_another_process_commit_at_once(tmp_path, fake):
    db = tmp_path / "db"
    reader = Index.open(db, embedder=fake)
    reader.add([{"id": "first", "text": "castle moat"}])
    assert reader.info()["chunks"] == 1
    log = tmp_path / "w.log"
    finish(start("writer", db, log, "other", 6, 3))  # another process adds and deletes documents
    expected, _ = expected_documents([log])
    assert reader.info()["chunks"] >= len(expected) + 1
    assert {h.doc_id for h in reader.search("river mountain castle bee", k=50)} == set(expected) | {"first"}
    assert reader.head_scales() == Index.open(db, embedder=fake).head_scales()


def test_a_writer_waits_for_the_lock_then_names_its_holder(tmp_path, fake, monkeypatch):
    db = tmp_path / "db"
    index = Index.open(db, embedder=fake)
    index.add([{"id": "a", "text": "bees and honey"}])
    holder = subprocess.Popen([sys.executable, PROCS, "hold", str(db), "20"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        monkeypatch.setenv("MRAG_LOCK_TIMEOUT", "0.5")
        with pytest.raises(LockTimeout, match=f"pid {holder.pid} on .*procs.py hold"):
            index.add([{"id": "b", "text": "tides and the moon"}])
        with pytest.raises(LockTimeout):
            index.delete(["a"])
    finally:
        holder.kill()
        holder.wait()
    assert [r["id"] for r in index.store.rows(columns=["id"]).to_pylist()] == ["a#0"]
    monkeypatch.setenv("MRAG_LOCK_TIMEOUT", "5")  # the kernel released the dead holder's lock
    index.add([{"id": "b", "text": "tides and the moon"}])
    assert index.info()["chunks"] == 2


def test_two_processes_creating_one_index_agree(tmp_path):
    db = tmp_path / "db"
    procs = [start("writer", db, tmp_path / f"c{i}.log", f"c{i}", 3, i) for i in range(2)]
    for proc in procs:
        finish(proc)
    check_index(str(db), [tmp_path / "c0.log", tmp_path / "c1.log"])


def test_small_writes_are_compacted_and_old_versions_pruned(tmp_path, fake, monkeypatch):
    monkeypatch.setattr(mrag.store, "MAINTAIN_EVERY", 8)
    db = tmp_path / "db"
    index = Index.open(db, embedder=fake)
    for i in range(7):
        index.add([{"id": f"d{i}", "text": f"document {i} about rivers"}])
    assert index.store.chunks.stats()["fragment_stats"]["num_fragments"] == 7
    index.add([{"id": "d7", "text": "document 7 about rivers"}])  # the 8th commit compacts
    assert index.store.chunks.stats()["fragment_stats"]["num_fragments"] == 1
    assert index.store.manifest["maintenance"] == {"writes": 0, "rows": 0}
    for i in range(8, 12):
        index.add([{"id": f"d{i}", "text": f"document {i} about rivers"}])
    index.delete(["d3"])
    versions = len(index.store.chunks.list_versions())
    hits = [(h.id, h.score) for h in index.search("document 5 about rivers", k=5)]
    before = index.store.disk_bytes()
    report = index.optimize(keep_versions=0)
    assert report["bytes_after"] < before == report["bytes_before"]
    assert len(index.store.chunks.list_versions()) < versions
    assert len(index.store.chunks.list_versions()) == 1
    reopened = Index.open(db, embedder=fake)
    assert reopened.info()["chunks"] == 11
    assert reopened.search("document 5 about rivers", k=1, strategy="standard")[0].doc_id == "d5"
    assert [(h.id, h.score) for h in reopened.search("document 5 about rivers", k=5)] == hits
    check = reopened.verify()
    assert check["chunks"] == 11 and check["duplicate_ids"] == 0 and check["sums_drift"] < 1e-9


def test_a_reader_keeps_working_while_another_process_optimizes(tmp_path, fake):
    db = tmp_path / "db"
    index = Index.open(db, embedder=fake)
    for i in range(5):
        index.add([{"id": f"d{i}", "text": f"document {i} about glaciers"}])
    reader = Index.open(db, embedder=fake)
    assert reader.search("document 2 about glaciers", k=1)[0].doc_id == "d2"
    code = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import procs; " \
           f"procs.open_index({str(db)!r}).optimize(keep_versions=0)"
    subprocess.run([sys.executable, "-c", code], check=True, env=os.environ.copy())
    assert reader.search("document 2 about glaciers", k=1)[0].doc_id == "d2"  # follows to the new version
    assert reader.info()["chunks"] == 5
