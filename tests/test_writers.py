"""Several processes on one index: writers take turns under the file lock, readers follow commits,
killed writers lose nothing acknowledged, and maintenance keeps a long-running index small.

Real processes (`tests/procs.py`), not threads: a file lock and a lost update only show across them.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import FakeEmbedder
from procs import check_index, expected_documents

import mrag.connection
import mrag.maintenance
import mrag.retrieve.search
import mrag.store
import mrag.versions
from mrag.errors import StoreError
from mrag.index import Index
from mrag.locking import LockTimeout
from mrag.writing import FromFiles

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


def acknowledged(log: Path) -> int:
    """How many writes a writer's log says were acknowledged."""
    return sum(json.loads(line)["state"] == "ok" for line in (log.read_text() if log.exists() else "").splitlines()
               if line.endswith("}"))  # (a line cut by the kill is not one)


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
        while acknowledged(logs[-1]) == 0 and time.monotonic() < deadline:
            time.sleep(0.05)  # it has committed a write (on a loaded machine that takes seconds)
        time.sleep(rng.uniform(0.0, 1.5))  # ... and is somewhere in the next ones
        victim.send_signal(signal.SIGKILL)
        victim.wait()
    finish(steady)
    counts = check_index(str(db), logs)  # nothing acknowledged lost, nothing deleted back
    assert all(acknowledged(log) for log in logs) and counts["acknowledged"] > 0
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


def test_a_lock_timeout_of_inf_waits_without_end(tmp_path, fake, monkeypatch):
    """`inf` (or any wait past what a thread lock takes) failed every write with an OverflowError."""
    index = Index.open(tmp_path / "db", embedder=fake)
    for value in ("inf", "1e10"):
        monkeypatch.setenv("MRAG_LOCK_TIMEOUT", value)
        index.add([{"id": value, "text": "bees and honey"}])
    assert index.store.count() == 2


@pytest.mark.parametrize("value", ["-1", "nan", "soon"])
def test_a_lock_timeout_that_is_no_wait_is_refused(tmp_path, fake, monkeypatch, value):
    index = Index.open(tmp_path / "db", embedder=fake)
    monkeypatch.setenv("MRAG_LOCK_TIMEOUT", value)
    with pytest.raises(ValueError, match=f"MRAG_LOCK_TIMEOUT must be a number of seconds, 0 or more, got '{value}'"):
        index.add([{"id": "a", "text": "bees and honey"}])
    assert index.store.count() == 0


def test_a_writer_waits_for_the_lock_then_names_its_holder(tmp_path, fake, monkeypatch, caplog):
    """... and says, while it waits, for whom (a run held up by another looked hung)."""
    import mrag.locking

    db = tmp_path / "db"
    index = Index.open(db, embedder=fake)
    index.add([{"id": "a", "text": "bees and honey"}])
    holder = subprocess.Popen([sys.executable, PROCS, "hold", str(db), "20"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        monkeypatch.setenv("MRAG_LOCK_TIMEOUT", "0.5")
        monkeypatch.setattr(mrag.locking, "TELL_AFTER", 0.1)
        with pytest.raises(LockTimeout, match=f"pid {holder.pid} on .*procs.py hold"):
            index.add([{"id": "b", "text": "tides and the moon"}])
        told = [r.getMessage() for r in caplog.records if r.name == "mrag.locking"]
        assert len(told) == 1 and f"waiting for the write lock on {db}, held by pid {holder.pid}" in told[0]
        with pytest.raises(LockTimeout):
            index.delete(["a"])
    finally:
        holder.kill()
        holder.wait()
    assert [r["id"] for r in index.store.rows(columns=["id"]).to_pylist()] == ["a#0"]
    monkeypatch.setenv("MRAG_LOCK_TIMEOUT", "5")  # the kernel released the dead holder's lock
    index.add([{"id": "b", "text": "tides and the moon"}])
    assert index.info()["chunks"] == 2


def test_a_writer_thread_waits_for_another_one_no_longer_than_the_timeout(tmp_path, fake, monkeypatch):
    """Threads of one Index queued on its lock without end: a write stuck under it (a hung external space)
    held every other writer thread, and MRAG_LOCK_TIMEOUT held between processes only."""
    index = Index.open(tmp_path / "db", embedder=fake)
    index.add([{"id": "a", "text": "bees and honey"}])
    inside, leave = threading.Event(), threading.Event()

    def stuck() -> None:
        inside.set()
        leave.wait(30)

    slow = threading.Thread(target=lambda: index.upsert([{"id": "b", "text": "tides"}], files=FromFiles(stuck)),
                            name="slow")
    slow.start()
    try:
        assert inside.wait(30)
        monkeypatch.setenv("MRAG_LOCK_TIMEOUT", "0.5")
        started = time.monotonic()
        with pytest.raises(LockTimeout, match="another thread of this process writes .*thread slow"):
            index.add([{"id": "c", "text": "the moon"}])
        assert time.monotonic() - started < 5
    finally:
        leave.set()
        slow.join()
    index.add([{"id": "c", "text": "the moon"}])
    assert index.info()["chunks"] == 3


def test_two_processes_creating_one_index_agree(tmp_path):
    db = tmp_path / "db"
    procs = [start("writer", db, tmp_path / f"c{i}.log", f"c{i}", 3, i) for i in range(2)]
    for proc in procs:
        finish(proc)
    check_index(str(db), [tmp_path / "c0.log", tmp_path / "c1.log"])


def test_optimize_removes_a_data_file_no_version_refers_to(tmp_path, fake):
    """A write that failed on a full disk left a data file the size of the write, which no later write or
    `mrag optimize` removed (LanceDB keeps unreferenced files for 7 days): "free some space and run again"
    needed twice the space, for good."""
    index = Index.open(tmp_path / "db", embedder=fake)
    index.add(["bees fan the hive", "tides follow the moon"])
    data = tmp_path / "db" / "chunks.lance" / "data"
    (first,) = data.iterdir()
    stray = data / ("0" * 10 + first.name[10:])  # as a failed write leaves it: written, never committed
    shutil.copy(first, stray)
    index.optimize()
    assert not stray.exists() and list(data.iterdir()) == [first]
    assert [h.text for h in index.search("bees", k=1, strategy="standard")] == ["bees fan the hive"]


def test_small_writes_are_compacted_and_old_versions_pruned(tmp_path, fake, monkeypatch):
    monkeypatch.setattr(mrag.maintenance, "MAINTAIN_EVERY", 8)
    db = tmp_path / "db"
    index = Index.open(db, embedder=fake)
    for i in range(7):
        index.add([{"id": f"d{i}", "text": f"document {i} about rivers"}])
    assert index.store.chunks.stats()["fragment_stats"]["num_fragments"] == 7
    index.add([{"id": "d7", "text": "document 7 about rivers"}])  # the 8th commit compacts
    assert index.store.chunks.stats()["fragment_stats"]["num_fragments"] == 1
    assert index.store.manifest.maintenance | {"bytes": 0} == {"writes": 0, "rows": 0, "count": 8, "bytes": 0}
    assert 0 < index.store.manifest.maintenance["bytes"] <= index.store.disk_bytes()  # the compacted size
    # pruned by count: only the committed version is left
    assert [v["version"] for v in index.store.chunks.list_versions()] == [index.store.committed_version]
    for i in range(8, 12):
        index.add([{"id": f"d{i}", "text": f"document {i} about rivers"}])
    index.delete(["d3"])
    versions = len(index.store.chunks.list_versions())
    hits = [(h.id, h.score) for h in index.search("document 5 about rivers", k=5, strategy="mrag")]
    default_ids = [h.id for h in index.search("document 5 about rivers", k=5)]
    before = index.store.disk_bytes()
    report = index.optimize(keep_versions=0)
    assert report["bytes_after"] < before == report["bytes_before"]
    assert len(index.store.chunks.list_versions()) < versions
    assert len(index.store.chunks.list_versions()) == 1
    reopened = Index.open(db, embedder=fake)
    assert reopened.info()["chunks"] == 11
    assert reopened.search("document 5 about rivers", k=1, strategy="standard")[0].doc_id == "d5"
    assert [(h.id, h.score) for h in reopened.search("document 5 about rivers", k=5, strategy="mrag")] == hits
    # the default's BM25 scores follow the full-text index's statistics, which optimize brings up to date
    # (the deleted row leaves them): the same rows, scores a little apart
    assert [h.id for h in reopened.search("document 5 about rivers", k=5)] == default_ids
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


def test_searchers_never_fail_while_a_writer_prunes_at_every_commit(tmp_path, fake, monkeypatch):
    """The writer compacts and keeps only the committed version after every commit, so the readers'
    versions vanish under them all the time; they read again at the latest one and never fail."""
    db = tmp_path / "db"
    Index.open(db, embedder=fake).add([{"id": "seed", "text": "river mountain castle"}])
    monkeypatch.setenv("PROCS_PRUNE_EVERY_COMMIT", "1")
    writer = start("writer", db, tmp_path / "w.log", "w", 40, 5)
    readers = [start("searcher", db, tmp_path / f"s{i}.log", 10, 20 + i) for i in range(2)]
    for proc in [writer, *readers]:
        finish(proc)
    assert sum(searches(tmp_path / f"s{i}.log")["searches"] for i in range(2)) > 0  # and no errors
    index = Index.open(db, embedder=fake)
    assert len(index.store.chunks.list_versions()) <= 2  # pruned as it went (one more: the last commit's)
    seed = tmp_path / "seed.log"
    seed.write_text('{"op": "add", "id": "seed", "text": "river mountain castle", "state": "ok"}\n')
    check_index(str(db), [tmp_path / "w.log", seed])


class RefreshSkippedOnce:
    """A store's `refresh` that does nothing the first time: as if a writer committed and pruned
    right after the reader's version check."""

    def __init__(self, refresh):
        self.refresh, self.calls = refresh, 0

    def __call__(self, quick: bool = False) -> None:
        self.calls += 1
        if self.calls > 1:
            self.refresh(quick)


def pruned_under(reader: Index, fake, monkeypatch) -> None:
    """Another writer adds a document and prunes every version but its commit. It stands for another
    process, so it gets a LanceDB session (caches) of its own: one shared with the reader could still
    answer a read of the pruned version from what the writer cached."""
    monkeypatch.setattr(mrag.connection, "_session", None)
    writer = Index.open(reader.store.uri, embedder=fake)
    writer.add([{"id": "late", "text": "a late document about comets"}])
    writer.optimize(keep_versions=0)


@pytest.mark.parametrize("tries", [1, mrag.store.READ_TRIES])
def test_a_search_on_a_pruned_version_goes_again_at_the_latest(tmp_path, fake, monkeypatch, tries):
    """tries=1 shows what a reader meets without the retry: its version is gone."""
    reader = Index.open(tmp_path / "db", embedder=fake)
    for i in range(3):
        reader.add([{"id": f"d{i}", "text": f"document {i} about glaciers"}])
    assert reader.search("document 1 about glaciers", k=1)[0].doc_id == "d1"  # its matrix: this version
    pruned_under(reader, fake, monkeypatch)
    monkeypatch.setattr(reader.store, "refresh", RefreshSkippedOnce(reader.store.refresh))
    monkeypatch.setattr(mrag.retrieve.search, "READ_TRIES", tries)
    if tries == 1:
        with pytest.raises(Exception):  # noqa: B017  (Lance's error for a missing file)
            reader.search("comets", k=1, strategy="mrag")  # a given strategy: no refresh to choose it
        return
    assert reader.search("comets", k=1, strategy="mrag")[0].doc_id == "late"
    assert reader.store.committed_version == reader.store.chunks.version


@pytest.mark.parametrize("tries", [1, mrag.store.READ_TRIES])
def test_rows_of_a_pruned_version_are_read_again_at_the_latest(tmp_path, fake, monkeypatch, tries):
    reader = Index.open(tmp_path / "db", embedder=fake)
    reader.add([{"id": "d0", "text": "document about glaciers"}])
    pruned_under(reader, fake, monkeypatch)  # the reader's manifest still names its own, pruned, version
    monkeypatch.setattr(mrag.store, "READ_TRIES", tries)
    if tries == 1:
        with pytest.raises(Exception):  # noqa: B017
            reader.store.rows(columns=["id"])
        return
    assert sorted(r["id"] for r in reader.store.rows(columns=["id"]).to_pylist()) == ["d0#0", "late#0"]
    assert reader.store.count() == 2


def test_compaction_is_due_by_share_by_commits_or_by_the_folder_outgrowing_its_compacted_size():
    due = mrag.maintenance.compaction_due
    assert due({"writes": 32, "rows": 130}, 1000, None)  # 1/8 of the table changed
    assert not due({"writes": 32, "rows": 100}, 1000, None)
    assert due({"writes": mrag.maintenance.MAINTAIN_MAX, "rows": 1}, 10**6, None)
    compacted = {"writes": 32, "rows": 32, "count": 1000, "bytes": 10**7}  # 10 MB after the last compaction
    floor, growth = mrag.maintenance.MAINTAIN_FLOOR, mrag.maintenance.MAINTAIN_GROWTH
    assert not due(compacted, 1000, int(growth * 10**7 + floor))
    assert due(compacted, 1000, int(growth * 10**7 + floor) + 1)
    assert not due(compacted, 2000, int(growth * 2 * 10**7 + floor))  # the allowance grows with the rows
    assert not due(compacted, 1000, None)  # object storage: the counters alone
    assert not due({"writes": 32, "rows": 32}, 1000, 10**9)  # written before the size was recorded


def test_a_pass_keeps_only_the_committed_manifest_and_a_compaction_only_the_committed_chunks(
    tmp_path, fake, monkeypatch
):
    monkeypatch.setattr(mrag.maintenance, "MAINTAIN_EVERY", 4)
    monkeypatch.setattr(mrag.maintenance, "MAINTAIN_SHARE", 0)  # no compaction by share
    monkeypatch.setattr(mrag.maintenance, "MAINTAIN_GROWTH", 10.0**6)  # nor by size
    index = Index.open(tmp_path / "db", embedder=fake)
    store = index.store
    for i in range(4):
        index.add([{"id": f"d{i}", "text": f"document {i} about tides"}])
    assert len(store._manifest_table.list_versions()) == 1  # the committed manifest alone
    chunk_versions = [v["version"] for v in store.chunks.list_versions()]
    # not compacted: kept (4 writes, the empty table, and the full-text index the first write built)
    assert len(chunk_versions) == 5 + 1 and chunk_versions[-1] == store.committed_version
    monkeypatch.setattr(mrag.maintenance, "MAINTAIN_SHARE", 8)  # the 8 rows changed are the whole table
    for i in range(4, 8):
        index.add([{"id": f"d{i}", "text": f"document {i} about tides"}])
    assert [v["version"] for v in store.chunks.list_versions()] == [store.committed_version]
    assert store.chunks.stats()["fragment_stats"]["num_fragments"] == 1
    assert Index.open(tmp_path / "db", embedder=fake).info()["chunks"] == 8


class CountingTable:
    """A manifest table that counts its version checks."""

    def __init__(self, table: object) -> None:
        self.table, self.checks = table, 0

    @property
    def version(self) -> int:
        self.checks += 1
        return self.table.version  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> object:
        return getattr(self.table, name)


def test_searches_skip_the_version_check_until_another_process_commits(tmp_path, fake, monkeypatch):
    """A search checks LanceDB's latest version only when the manifest's `_versions` folder changed since
    the last check; a commit in another process changes it, and the next search sees the new document."""
    db = tmp_path / "db"
    Index.open(db, embedder=fake).add([{"id": "d0", "text": "glaciers carve valleys"}])
    reader = Index.open(db, embedder=fake)
    counting = reader.store._manifest_table = CountingTable(reader.store._manifest_table)
    reader.search("glaciers", k=1)
    assert counting.checks >= 1  # committed under two seconds ago: its folder's mtime is not trusted yet
    monkeypatch.setattr(mrag.versions, "SETTLED_NS", 0)  # trust it now (a test cannot wait for it to settle)
    monkeypatch.setattr(mrag.versions, "QUICK_FOR", 3600.0)  # and for as long as the test runs
    reader.search("glaciers", k=1)
    before = counting.checks
    assert [h.doc_id for h in reader.search("glaciers", k=1)] == ["d0"] and counting.checks == before
    monkeypatch.setattr(mrag.versions, "QUICK_FOR", 0.0)  # past it, a search checks again: a stamp that never moves
    reader.search("glaciers", k=1)  # (a FUSE mount's folder times) leaves a search that late at most
    assert counting.checks > before
    monkeypatch.setattr(mrag.versions, "QUICK_FOR", 3600.0)
    before = counting.checks
    time.sleep(0.05)  # past the file system's mtime tick
    code = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import procs; " \
           f"procs.open_index({str(db)!r}).add([{{'id': 'd1', 'text': 'tides and the moon'}}])"
    subprocess.run([sys.executable, "-c", code], check=True, env=os.environ.copy())
    assert [h.doc_id for h in reader.search("tides moon", k=1)] == ["d1"] and counting.checks > before
    before = counting.checks
    reader.add([{"id": "d2", "text": "volcano lava"}])  # a writer always checks, and its own commit moves the folder
    assert counting.checks > before
    assert [h.doc_id for h in reader.search("volcano lava", k=1)] == ["d2"]


def test_a_slow_run_in_another_process_leaves_files_changed_since_it_read_them(tmp_path, fake):
    """A real `mrag index --prune` run in another process; while it embeds, one file is edited and indexed by
    this process, another deleted and pruned: the slow run commits neither file's old text."""
    import json

    folder = tmp_path / "notes"
    folder.mkdir()
    edited, deleted = folder / "edited.txt", folder / "deleted.txt"
    edited.write_text("Version one of the glacier note.")
    deleted.write_text("A secret about bees.")
    index = Index.open(tmp_path / "db", embedder=fake)
    index.add_paths([folder])
    edited.write_text("Version two, the glacier note rewritten.")
    deleted.write_text("A secret about bees, edited.")
    go = tmp_path / "go"
    slow = subprocess.Popen([sys.executable, PROCS, "slow-index", str(tmp_path / "db"), str(folder), str(go)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert slow.stdout is not None and slow.stdout.readline().strip() == "embedding"
    edited.write_text("Version three, the glacier note as it is now.")
    index.add_paths([edited])
    deleted.unlink()
    assert index.add_paths([deleted], prune=True).removed == [str(deleted.resolve())]
    go.touch()
    out, err = slow.communicate(timeout=240)
    assert slow.returncode == 0, err[-2000:]
    assert len(json.loads(out)["skipped"]) == 2
    texts = {r["doc_id"]: r["text"] for r in Index.open(tmp_path / "db", embedder=fake).store.rows().to_pylist()}
    assert texts == {str(edited.resolve()): "Version three, the glacier note as it is now."}


def test_a_search_whose_read_found_a_file_gone_goes_again_even_at_the_same_commit(tmp_path, fake, monkeypatch):
    """A read of a version whose files a newer commit pruned fails with Lance's "Not found"; a search goes
    again even where its store shows no newer commit than when it began (a server's search under another
    process's `mrag index --prune` and maintenance failed so, once in about 40): only other errors are final."""
    reader = Index.open(tmp_path / "db", embedder=fake)
    reader.add([{"id": "d0", "text": "document about glaciers"}, {"id": "d1", "text": "comets and tails"}])
    failures = []
    texts = mrag.retrieve.bm25._texts

    def gone_once(matrix, start):
        if not failures:
            failures.append(start)
            raise RuntimeError("lance error: Not found: db/chunks.lance/data/0101.lance, local.rs:273:40")
        return texts(matrix, start)

    monkeypatch.setattr(mrag.retrieve.bm25, "_texts", gone_once)
    assert reader.search("comets", k=1, strategy="bm25")[0].doc_id == "d1" and failures == [0]
    monkeypatch.setattr(mrag.retrieve.bm25, "_texts", lambda matrix, start: 1 / 0)
    mrag.retrieve.bm25._built.clear()
    mrag.retrieve.bm25._previous.clear()
    with pytest.raises(ZeroDivisionError):  # any other error: raised at once
        reader.search("glaciers", k=1, strategy="bm25")


def test_a_store_read_that_found_a_file_gone_goes_again_even_at_the_same_commit(tmp_path, fake):
    """As a search does: a read begun before a newer commit pruned its version fails with Lance's "Not found"
    although the store may show no newer commit yet; other errors are final."""
    index = Index.open(tmp_path / "db", embedder=fake)
    index.add([{"id": "d0", "text": "document about glaciers"}])
    tries = []

    def gone_once(table):
        tries.append(table.version)
        if len(tries) == 1:
            raise RuntimeError("lance error: Not found: db/chunks.lance/data/0101.lance, local.rs:273:40")
        return table.count_rows()

    assert index.store.reading(gone_once) == 1 and len(tries) == 2
    with pytest.raises(ZeroDivisionError):
        index.store.reading(lambda table: 1 / 0)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX's")
@pytest.mark.filterwarnings("ignore::RuntimeWarning", "ignore::DeprecationWarning")  # LanceDB's and Python's on fork
def test_a_child_forked_after_the_index_was_used_is_refused_not_crashed(tmp_path, fake):
    """Children forked after the parent had used an index crashed (SIGSEGV) or hung in LanceDB or torch, one
    holding the index's write lock for good: a search, a write or an open there is refused at once."""
    index = Index.open(tmp_path / "db", embedder=fake)
    index.add(["bees fan the hive", "tides follow the moon"])
    index.search("bees", k=1)
    uses = {"search": lambda: index.search("bees", k=1), "write": lambda: index.add(["owls hunt at night"]),
            "open": lambda: Index.open(tmp_path / "db", embedder=FakeEmbedder()).search("bees")}
    for name, use in uses.items():
        pid = os.fork()
        if pid == 0:  # the child: only Python runs before the refusal
            try:
                use()
            except StoreError as e:
                os._exit(7 if "forked from one that had opened an mrag index" in str(e) else 3)
            os._exit(0)
        deadline = time.monotonic() + 60
        while not (done := os.waitpid(pid, os.WNOHANG))[0] and time.monotonic() < deadline:
            time.sleep(0.05)
        if not done[0]:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        assert done[0] and os.waitstatus_to_exitcode(done[1]) == 7, name
    assert [h.text for h in index.search("owls", k=1, strategy="bm25")] == []  # the child wrote nothing
    assert index.add(["owls hunt at night"]).added  # and the parent writes on: no lock left held


def test_an_index_is_not_pickled_and_says_how_to_share_it(tmp_path, fake):
    """A spawn Pool given an Index failed with "cannot pickle 'builtins.Connection' object"."""
    with pytest.raises(TypeError, match="pass its path to the worker and call Index.open there"):
        pickle.dumps(Index.open(tmp_path / "db", embedder=fake))
