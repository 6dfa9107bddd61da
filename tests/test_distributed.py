"""Indexing on a local Ray cluster gives the same index as one process, commits once, and rolls back on failure.

Ray probes cloud metadata addresses when it starts, so the Ray part runs in a child process inside a
fresh network namespace that has only loopback (`unshare -n`): there such probes fail at once and
nothing leaves the machine. The child is this file run as a script; it prints a JSON summary.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import FakeEmbedder

from mrag.cli import cli
from mrag.index import Index

pytestmark = pytest.mark.slow
HERE = Path(__file__).resolve().parent
POISON = "POISONED"

TOPICS = [
    "Roman aqueducts carried water downhill into the city by gravity. Arches crossed the valleys.",
    "Honeybees fan their wings to cool the hive on hot days. Workers bring water in summer.",
    "Deep Blue beat Kasparov at chess in 1997. The match was played in New York.",
    "The Moon pulls the oceans and raises the tides twice a day. Spring tides follow the full moon.",
    "Volcanoes form where plates pull apart or dive under each other. Lava cools into basalt.",
    "Penicillin was found by accident on a mould-covered dish. It changed medicine.",
]


def make_corpus(root: Path) -> Path:
    """Text files of several chunks each, a JSONL file of records, and a folder file that is skipped."""
    corpus = root / "corpus"
    (corpus / "sub").mkdir(parents=True)
    for i, text in enumerate(TOPICS):
        body = " ".join(f"{text} Part {j} of note {i}." for j in range(1 + i % 3))
        (corpus / ("sub" if i % 2 else ".") / f"note{i}.txt").write_text(body)
    records = [{"id": f"rec{i}", "text": f"Record {i}: {TOPICS[i % len(TOPICS)]}", "title": f"R{i}"} for i in range(5)]
    (corpus / "records.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    (corpus / "sub" / "blob.txt").write_bytes(b"\x00\x01binary")
    return corpus


class PoisonEmbedder(FakeEmbedder):
    """The fake embedder, failing on any batch that holds POISON (a worker that dies mid-job)."""

    def embed_batch(self, texts: list[str]):
        if any(POISON in t for t in texts):
            raise RuntimeError("poisoned chunk")
        return super().embed_batch(texts)


class OtherPoisonEmbedder(PoisonEmbedder):
    """Another model, failing as `PoisonEmbedder` does: which error a job gives tells whether it embedded."""

    name = "other-bow"


class SlowEmbedder(FakeEmbedder):
    """The fake embedder taking 0.2 s a batch, as a model would: the pool's actors all start meanwhile."""

    def embed_batch(self, texts: list[str]):
        time.sleep(0.2)
        return super().embed_batch(texts)


class LockProbeEmbedder(FakeEmbedder):
    """The fake embedder that, on its first batch, notes in `<db>.probe` whether the index's write lock is free:
    another process (this actor) trying it while the job embeds, as another writer would."""

    def __init__(self, db: str) -> None:
        super().__init__()
        self.db = db

    def embed_batch(self, texts: list[str]):
        from mrag.locking import write_lock

        probe = Path(self.db + ".probe")
        if not probe.exists():
            try:
                with write_lock(self.db, timeout=0):
                    probe.write_text("free")
            except Exception as e:  # held by the job's driver
                probe.write_text(f"held: {type(e).__name__}")
        return super().embed_batch(texts)


def manifest_versions(db: Path) -> int:
    return len(list((db / "manifest.lance" / "_versions").iterdir()))


def child(corpus: Path, db: Path) -> dict:
    """The Ray side: jobs on a local cluster of 2 CPUs and a pool of 3 actors."""
    import ray

    from mrag.distributed import index_with_ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=150 * 2**20)
    options = {"num_workers": 3, "cpus_per_worker": 0.5, "batch_size": 4}
    out = {"first": index_with_ray(db, [corpus], make_embedder=FakeEmbedder, **options).to_dict()}
    out["fragments"] = len(list((db / "chunks.lance" / "data").iterdir()))  # the batches written as one
    versions = manifest_versions(db)
    os.chdir(corpus.parent)  # the same files by a relative path: the same documents, nothing to do
    out["again"] = index_with_ray(db, [corpus.name], make_embedder=FakeEmbedder, **options).to_dict()
    out["again_commits"] = manifest_versions(db) - versions
    (corpus / "note0.txt").write_text(TOPICS[3] + " Rewritten.")
    probe = functools.partial(LockProbeEmbedder, str(db))  # the lock is free while the workers embed
    out["changed"] = index_with_ray(db, [corpus], make_embedder=probe, **options).to_dict()
    out["lock_while_embedding"] = Path(f"{db}.probe").read_text()
    try:  # GPUs the cluster does not have: refused (Ray would wait for them forever)
        index_with_ray(db, [corpus], make_embedder=FakeEmbedder, gpus_per_worker=1, **options)
        out["no_gpu"] = "no error"
    except ValueError as e:
        out["no_gpu"] = str(e)
    out["stale"] = stale_jobs(corpus, db, options)
    # a records file follows its file: rec0 changed and rec4 gone in one commit, then rec3 gone alone
    records = corpus / "records.jsonl"
    kept = [json.loads(line) for line in records.read_text().splitlines()][:4]
    kept[0]["text"] += " Revised."
    records.write_text("\n".join(json.dumps(r) for r in kept))
    versions = manifest_versions(db)
    out["records"] = index_with_ray(db, [corpus], make_embedder=FakeEmbedder, **options).to_dict()
    out["records_commits"] = manifest_versions(db) - versions
    records.write_text("\n".join(json.dumps(r) for r in kept[:3]))
    out["gone"] = index_with_ray(db, [corpus], make_embedder=FakeEmbedder, **options).to_dict()
    (corpus.parent / "elsewhere").mkdir()
    (corpus.parent / "elsewhere" / "other.jsonl").write_text(json.dumps({"id": "rec1", "text": "Another rec1."}))
    try:  # an id indexed from another file that still exists
        index_with_ray(db, [corpus.parent / "elsewhere"], make_embedder=FakeEmbedder, **options)
        out["taken"] = "no error"
    except ValueError as e:
        out["taken"] = str(e)
    (corpus / "poison.txt").write_text(f"A {POISON} note. " + TOPICS[1])
    try:
        index_with_ray(db, [corpus], make_embedder=PoisonEmbedder, **options)
        out["poison"] = "no error"
    except Exception as e:  # the worker's error, unwrapped from Ray's
        out["poison"] = f"{type(e).__name__}: {e}"
    try:  # another model than the index's: refused before any chunk is embedded (before, after all of them)
        index_with_ray(db, [corpus], make_embedder=OtherPoisonEmbedder, **options)
        out["other_model"] = "no error"
    except Exception as e:
        out["other_model"] = f"{type(e).__name__}: {e}"
    try:  # a new index: a job that fails leaves none behind
        index_with_ray(corpus.parent / "poison-db", [corpus], make_embedder=PoisonEmbedder, **options)
    except Exception:
        out["poison_created"] = (corpus.parent / "poison-db").exists()
    (corpus / "poison.txt").unlink()
    big = corpus.parent / "big.jsonl"  # one file of many records: still spread over the pool
    big.write_text("\n".join(json.dumps({"id": f"big{i}", "text": TOPICS[i % len(TOPICS)]}) for i in range(60)))
    out["one_file"] = index_with_ray(corpus.parent / "big-db", [big], make_embedder=SlowEmbedder, **options).to_dict()
    (corpus.parent / "empty").mkdir()
    out["empty"] = index_with_ray(corpus.parent / "empty-db", [corpus.parent / "empty"], **options).to_dict()
    out["empty_created"] = (corpus.parent / "empty-db").exists()
    ray.shutdown()
    # a cluster with a GPU: one worker per GPU, each asking for one (the fake embedder ignores it)
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False, object_store_memory=150 * 2**20)
    out["gpu"] = index_with_ray(corpus.parent / "gpu-db", [corpus], make_embedder=FakeEmbedder, num_workers=3).to_dict()
    ray.shutdown()
    return out


def racing_job(corpus: Path, db: Path, options: dict, edits: dict[str, str], meanwhile) -> dict:
    """A job over the folder `corpus` that reads `edits` written, while `meanwhile()` runs after its read,
    before its write lock (another run of `mrag index`); the report, and the texts committed after it."""
    from mrag import sync
    from mrag.distributed import index_with_ray

    for name, text in edits.items():
        (corpus / name).write_text(text)
    real = sync.refuse_taken

    def check(store, read, skipped=()):  # in the driver, after the job read the files, before its lock
        sync.refuse_taken = real  # the other run's own check
        meanwhile()
        return real(store, read, skipped)

    sync.refuse_taken = check
    try:
        report = index_with_ray(db, [corpus], make_embedder=FakeEmbedder, **options).to_dict()
    finally:
        sync.refuse_taken = real
    index = Index.open(db, embedder=FakeEmbedder(), create=False)
    rows = index.store.rows(columns=["doc_id", "text"]).to_pylist()
    return report | {"texts": {Path(r["doc_id"]).name: r["text"] for r in rows}}


def stale_jobs(corpus: Path, db: Path, options: dict) -> dict:
    """1. The job reads note1, note2 and note4 edited; another run indexes note2 edited again, and prunes note4,
    removed: the job leaves both as that run committed them (it would undo the edit and bring note4 back)
    and lists them as changed, while note1 is written. 2. The job reads note3 and note5 edited; another run
    indexes note3 edited again, and note5 as the job read it: nothing is left to write (note5 is unchanged)."""
    other = Index.open(db, embedder=FakeEmbedder(), create=False)

    def first() -> None:
        (corpus / "note2.txt").write_text(LATER)
        (corpus / "note4.txt").unlink()
        other.add_paths([corpus / "note2.txt", corpus / "note4.txt"], prune=True)

    def second() -> None:
        other.add_paths([corpus])
        (corpus / "sub" / "note3.txt").write_text(LATER)
        other.add_paths([corpus])

    edits = {"sub/note1.txt": "Bees, edited.", "note2.txt": "Tides, edited.", "note4.txt": "Lava."}
    out = {"first": racing_job(corpus, db, options, edits, first)}
    edits = {"sub/note3.txt": "Chess, edited.", "sub/note5.txt": "Penicillin, edited."}
    out["second"] = racing_job(corpus, db, options, edits, second)
    # 3. records x1, x2 indexed; the job reads the file holding x1 alone (nothing to embed, x2 to delete), and
    # the file changes again meanwhile: x2 stays until the next run, and the file is listed as changed
    side = corpus.parent / "side"
    side.mkdir()
    (side / "x.jsonl").write_text('{"id": "x1", "text": "One."}\n{"id": "x2", "text": "Two."}\n')
    other.add_paths([side])
    edits = {"x.jsonl": '{"id": "x1", "text": "One."}\n'}
    out["third"] = racing_job(side, db, options, edits, lambda: (side / "x.jsonl").write_text(
        '{"id": "x1", "text": "One."}\n{"id": "x3", "text": "Three."}\n'))
    other.delete(["x1", "x2"])  # as the single-process index, which never saw them
    return out


LATER = "Tides, edited again by another run."


def cli_child(corpus: Path, db: Path) -> dict:
    """`mrag index --ray` as a user runs it (a process of its own, starting a local cluster), with the
    real packaged model on the worker; then an unreadable file named explicitly, for a new index."""
    mrag = [sys.executable, "-c", "from mrag.cli import main; main()"]
    done = subprocess.run(
        [*mrag, "index", str(corpus), "--db", str(db), "--ray", "--workers", "1"],
        capture_output=True,
        text=True,
        timeout=500,
    )
    out = {"exit": done.returncode, "output": done.stdout, "stderr": done.stderr[-3000:]}
    blob, fresh = corpus / "sub" / "blob.txt", db.parent / "fresh-db"
    bad = subprocess.run(
        [*mrag, "index", str(corpus / "note0.txt"), str(blob), "--db", str(fresh), "--ray"],
        capture_output=True,
        text=True,
        timeout=500,
    )
    out["bad"] = {
        "exit": bad.returncode,
        "stderr_last": bad.stderr.strip().splitlines()[-1:],
        "created": fresh.exists(),
    }
    return out


def run_child_in_netns(corpus: Path, db: Path, mode: str = "jobs") -> dict:
    pytest.importorskip("ray", reason="needs Ray: pip install 'ray[default]'")
    if not shutil.which("unshare") or subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode:
        pytest.skip("needs `unshare -n` (root) to keep Ray's start-up probes on this machine")
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    ray_tmp = tempfile.mkdtemp(prefix="mrag-ray-")  # short: Ray's socket paths must fit in 107 bytes
    env |= {"RAY_USAGE_STATS_ENABLED": "0", "RAY_TMPDIR": ray_tmp}
    script = 'ip link set lo up 2>/dev/null || true; exec "$@"'
    command = ["unshare", "-n", "sh", "-c", script, "sh", sys.executable, __file__, str(corpus), str(db), mode]
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def rows_by_id(index: Index) -> dict[str, dict]:
    return {r["id"]: r for r in index.store.rows().to_pylist()}


def test_ray_index_equals_single_process_index(tmp_path):
    corpus = make_corpus(tmp_path)
    single = Index.open(tmp_path / "single", embedder=FakeEmbedder())
    first = single.add_paths([corpus])
    assert first.chunks > len(TOPICS)  # several chunks per file, so batches span documents

    out = run_child_in_netns(corpus, tmp_path / "ray-db")
    # the child edited note0, note1 and note2 and removed note4 (in this same corpus) after its first job
    single.add_paths([corpus], prune=True)

    assert out["first"]["added"] == len(first.added) and out["first"]["chunks"] == first.chunks
    assert [s["source"] for s in out["first"]["skipped"]] == [str(corpus / "sub" / "blob.txt")]
    workers = out["first"]["workers"]  # the actors of Ray Data's pool that embedded something
    assert sum(w["chunks"] for w in workers) == first.chunks and 1 <= len(workers) <= 3
    again = out["again"]  # nothing changed, named by a relative path: no model, no commit
    assert again["unchanged"] == len(first.added) and again["chunks"] == 0 and out["again_commits"] == 0
    spread = out["one_file"]["workers"]  # one file of 60 records, 15 batches: several actors share them
    assert out["one_file"]["chunks"] == 60 and len(spread) >= 2 and all(w["chunks"] > 0 for w in spread)
    assert out["empty"]["added"] == 0 and not out["empty_created"]
    gpu = out["gpu"]  # the corpus as it ends (as `single` has it): one GPU, one worker
    assert gpu["chunks"] == len(rows_by_id(single)) and len(gpu["workers"]) == 1
    changed = out["changed"]  # one file rewritten: only its chunks are embedded again
    assert changed["updated"] == 1 and changed["unchanged"] == len(first.added) - 1 and changed["added"] == 0
    assert changed["chunks"] == 1
    first = out["stale"]["first"]  # note2 and note4 left as another run committed them meanwhile, note1 written
    assert (first["updated"], first["chunks"], first["texts"]["note2.txt"]) == (1, 1, LATER)
    assert "note4.txt" not in first["texts"] and first["texts"]["note1.txt"] == "Bees, edited."
    moved = "changed or removed while it was being indexed: index it again"
    assert [(s["source"], s["reason"]) for s in first["skipped"][1:]] == [
        (str(corpus / "note2.txt"), moved), (str(corpus / "note4.txt"), moved)]
    second = out["stale"]["second"]  # nothing left to write: note3 as the other run left it, note5 unchanged
    assert (second["updated"], second["added"], second["chunks"], second["texts"]["note3.txt"]) == (0, 0, 0, LATER)
    assert second["unchanged"] == len(first["texts"]) - 1 and second["texts"]["note5.txt"] == "Penicillin, edited."
    assert [(s["source"], s["reason"]) for s in second["skipped"][1:]] == [(str(corpus / "sub" / "note3.txt"), moved)]
    third = out["stale"]["third"]
    assert (third["removed"], third["chunks"], third["texts"]["x2"]) == (0, 0, "Two.")
    assert [(s["source"], s["reason"]) for s in third["skipped"]] == [(str(tmp_path / "side" / "x.jsonl"), moved)]
    assert (out["records"]["updated"], out["records"]["removed"], out["records_commits"]) == (1, 1, 1)
    assert (out["gone"]["removed"], out["gone"]["chunks"]) == (1, 0)  # nothing to embed: the delete alone
    assert out["taken"].startswith("id(s) already indexed from another file, nothing written: rec1")
    assert out["poison"] == "RayJobError: the Ray job failed, nothing was written: RuntimeError: poisoned chunk"
    assert out["poison_created"] is False
    assert out["other_model"].startswith("StoreError: ") and "built with fake-bow, not other-bow" in out["other_model"]
    assert out["fragments"] == 1  # every batch in one fragment (one per batch of 4 chunks before)
    assert out["lock_while_embedding"] == "free"  # other writers go on while the workers embed
    assert out["no_gpu"] == "gpus_per_worker=1, but the Ray cluster has 0 GPUs"

    distributed = Index.open(tmp_path / "ray-db", embedder=FakeEmbedder(), create=False)
    mine, theirs = rows_by_id(distributed), rows_by_id(single)
    assert sorted(mine) == sorted(theirs)  # same chunk ids: none lost, none twice, no poison rows
    for chunk_id, row in theirs.items():
        assert mine[chunk_id]["text"] == row["text"] and mine[chunk_id]["doc_hash"] == row["doc_hash"]
        for column in single.store.head_columns():
            np.testing.assert_allclose(mine[chunk_id][column], row[column], rtol=1e-6)
    np.testing.assert_allclose(
        [h["scale"] for h in distributed.head_scales()], [h["scale"] for h in single.head_scales()], rtol=1e-9
    )
    committed, expected = distributed.store.committed_scales(), single.store.committed_scales()
    assert sorted(committed) == sorted(expected)
    for group in expected:  # heads, split slices, standard: every scale the index keeps
        np.testing.assert_allclose(committed[group], expected[group], rtol=1e-9)
    assert distributed.store.sums.heads.count == single.store.sums.heads.count == len(theirs)


def test_cli_ray_index_equals_cli_index(tmp_path, reuse_minilm):
    """`mrag index --ray` against `mrag index` in this process: same chunks, same scales."""
    corpus = make_corpus(tmp_path)
    out = run_child_in_netns(corpus, tmp_path / "cli-ray", mode="cli")
    assert out["exit"] == 0, out["stderr"]
    report = json.loads(out["output"])
    assert "Dataset" not in out["stderr"] and "Progress bars" not in out["stderr"]  # Ray Data kept quiet
    for said in ("Started a local Ray instance", "Token authentication", "minimum number of concurrent actors"):
        assert said not in out["stderr"], said  # the local Ray instance's start-up and hints too
    done = CliRunner().invoke(cli, ["index", str(corpus), "--db", str(tmp_path / "cli-single")])
    assert done.exit_code == 0, done.output
    assert out["bad"] == {
        "exit": 1,
        "stderr_last": [f"Error: {corpus / 'sub' / 'blob.txt'}: a binary file, not text"],
        "created": False,  # the new index is not even created
    }
    by_ray, here = Index.open(tmp_path / "cli-ray", create=False), Index.open(tmp_path / "cli-single", create=False)
    assert report["chunks"] == len(rows_by_id(here)) and report["workers"][0]["chunks"] == report["chunks"]
    assert sorted(rows_by_id(by_ray)) == sorted(rows_by_id(here))
    for group, scales in here.store.committed_scales().items():
        np.testing.assert_allclose(by_ray.store.committed_scales()[group], scales, rtol=1e-4)


def test_listing_reading_and_planning_without_ray(tmp_path):
    """The read stage, the plan and the chunk rows are plain functions: files -> documents -> work."""
    from mrag.distributed import chunk_rows, list_files, plan, read_documents
    from mrag.ingest import IngestError

    corpus = make_corpus(tmp_path)
    files = list_files([corpus])
    assert all(not explicit for _, explicit in files) and len(files) == len(TOPICS) + 2
    assert list_files([]) == [] and list_files([corpus / "note0.txt"]) == [(str(corpus / "note0.txt"), True)]
    items = [{"path": f, "shown": f, "explicit": e, "order": i} for i, (f, e) in enumerate(files)]
    rows = [r for item in items for r in read_documents(item, 120, 1, {})]
    blob = [r for r in rows if r["problem"]]
    assert [r["shown"] for r in blob] == [str(corpus / "sub" / "blob.txt")] and blob[0]["n_chunks"] == 0
    assert [r["doc_id"] for r in rows if r["doc_id"].startswith("rec")] == [f"rec{i}" for i in range(5)]
    assert [r["position"] for r in rows if r["doc_id"].startswith("rec")] == list(range(5))
    assert all(r["n_chunks"] == len(r["chunks"]) >= 1 for r in rows if not r["problem"])
    assert len({tuple(sorted(r)) for r in rows}) == 1  # one schema for every row, problem rows too

    index = Index.open(tmp_path / "db", embedder=FakeEmbedder())
    index.add_paths([corpus / "note0.txt"])
    ids = [r["doc_id"] for r in rows if not r["problem"]]
    report, todo = plan(rows, index.store.doc_hashes(ids))
    note0 = next(r["doc_id"] for r in rows if r["shown"] == str(corpus / "note0.txt"))
    assert report.unchanged == [note0] and report.added == [i for i in ids if i != note0]  # input order
    assert [s.source for s in report.skipped] == [str(corpus / "sub" / "blob.txt")]
    assert todo == {r["doc_id"]: r["n_chunks"] for r in rows if not r["problem"] and r["doc_id"] != note0}
    changed = {note0: "another digest"}
    report, todo = plan(rows, changed)
    assert report.updated == [note0] and note0 in todo

    named = [dict(r, explicit=True) if r["problem"] else r for r in rows]  # a bad file named explicitly
    with pytest.raises(IngestError, match="blob.txt: a binary file"):
        plan(named, {})
    with pytest.raises(ValueError, match="duplicate document ids"):
        plan(rows + [rows[0]], {})

    (tmp_path / "custom.jsonl").write_text('{"key": "k1", "body": "A record.", "lang": "en"}')
    custom = {"path": str(tmp_path / "custom.jsonl"), "shown": "custom.jsonl", "explicit": True, "order": 0}
    [row] = read_documents(custom, 120, 1, {"text_field": "body", "id_field": "key"})
    assert row["doc_id"] == "k1" and row["chunks"] == ["A record."] and json.loads(row["metadata"]) == {"lang": "en"}
    assert chunk_rows(dict(row, chunks=["one", "two"])) == [
        {
            "doc_id": "k1",
            "source": row["source"],
            "title": row["title"],
            "metadata": row["metadata"],
            "digest": row["digest"],
            "id": f"k1#{i}",
            "position": i,
            "text": text,
        }
        for i, text in enumerate(["one", "two"])
    ]
    assert chunk_rows(row, frozenset({"k1"})) == chunk_rows(row) and chunk_rows(row, frozenset({"other"})) == []


def test_the_worker_failure_behind_ray_style_wrappers():
    from mrag.distributed.job import _causes, _worker_failure

    class Wrapper(Exception):
        def __init__(self, cause: object, message: str = "wrapped") -> None:
            super().__init__(message)
            self.cause = cause

    inner = KeyError("the worker's error")
    assert _causes(Wrapper(inner))[-1] is inner
    chained = RuntimeError("outer")
    chained.__cause__ = Wrapper(inner)
    assert _causes(chained)[-1] is inner
    assert len(_causes(Wrapper("not an exception"))) == 1  # a `cause` that is no exception
    looped = Wrapper(None)
    looped.cause = looped
    assert _causes(looped) == [looped]

    class RayTaskError(Exception):  # the shape of what Ray raises when the worker's exception stayed remote
        pass

    RayTaskError.__module__ = "ray.exceptions"
    text = "\n".join(
        [
            "Traceback (most recent call last):",
            '  File "embed.py", line 58, in embed_batch',
            '    raise RuntimeError("poisoned chunk")',
            "RuntimeError: poisoned chunk",
            "",
            "The above exception was the direct cause of the following exception:",
            "",
            "ray.exceptions.UserCodeException: UDF failed to process a data block.",
        ]
    )
    assert _worker_failure(RayTaskError(text)) == "RuntimeError: poisoned chunk"
    assert _worker_failure(Wrapper(inner)) == 'KeyError: "the worker\'s error"'
    # an actor that died while starting: Ray's ActorDiedError (its text ends with the worker's error) around an
    # empty SystemException
    died = RayTaskError("The actor died because of an error raised in its creation task, ...\n"
                        "  File \"embed.py\", line 9, in __init__\n"
                        "RuntimeError: CUDA out of memory while loading the model")
    empty = RayTaskError("")
    empty.__cause__ = died
    assert _worker_failure(empty) == "RuntimeError: CUDA out of memory while loading the model"
    assert _worker_failure(RayTaskError("")) == "RayTaskError"


def test_ray_refuses_an_index_with_extra_spaces_before_any_work(tmp_path):
    pytest.importorskip("ray", reason="needs Ray: pip install 'ray[data]'")
    import test_spaces  # noqa: F401  (registers the "test-words" embedding function)

    from mrag.distributed import index_with_ray

    corpus = make_corpus(tmp_path)
    index = Index.open(tmp_path / "db", embedder=FakeEmbedder(), spaces=["w=test-words"])
    index.add_paths([corpus / "note0.txt"])
    before = rows_by_id(index)
    with pytest.raises(ValueError, match="extra embedding spaces"):  # raised before Ray starts
        index_with_ray(tmp_path / "db", [corpus], make_embedder=FakeEmbedder)
    assert rows_by_id(Index.open(tmp_path / "db", embedder=FakeEmbedder(), create=False)).keys() == before.keys()


def test_cli_ray_refuses_extra_spaces(tmp_path):
    corpus = make_corpus(tmp_path)
    done = CliRunner().invoke(cli, ["index", str(corpus), "--db", str(tmp_path / "db"), "--ray", "--space", "x=fake"])
    assert done.exit_code == 2 and "--ray does not embed extra spaces" in done.output
    assert not (tmp_path / "db").exists()


if __name__ == "__main__":
    run = cli_child if sys.argv[3] == "cli" else child
    print(json.dumps(run(Path(sys.argv[1]), Path(sys.argv[2]))))
