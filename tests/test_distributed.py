"""Indexing on a local Ray cluster gives the same index as one process, commits once, and rolls back on failure.

Ray probes cloud metadata addresses when it starts, so the Ray part runs in a child process inside a
fresh network namespace that has only loopback (`unshare -n`): there such probes fail at once and
nothing leaves the machine. The child is this file run as a script; it prints a JSON summary.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
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


def child(corpus: Path, db: Path) -> dict:
    """The Ray side: three jobs on one local cluster of 2 CPUs and 3 worker processes."""
    import ray

    from mrag.distributed import index_with_ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=150 * 2**20)
    options = {"num_workers": 3, "cpus_per_worker": 0.5, "batch_size": 4}
    out = {"first": index_with_ray(db, [corpus], make_embedder=FakeEmbedder, **options).to_dict()}
    (corpus / "note0.txt").write_text(TOPICS[3] + " Rewritten.")
    out["changed"] = index_with_ray(db, [corpus], make_embedder=FakeEmbedder, **options).to_dict()
    (corpus / "poison.txt").write_text(f"A {POISON} note. " + TOPICS[1])
    try:
        index_with_ray(db, [corpus], make_embedder=PoisonEmbedder, **options)
        out["poison"] = "no error"
    except Exception as e:  # the worker's error, unwrapped from Ray's
        out["poison"] = f"{type(e).__name__}: {e}"
    (corpus / "poison.txt").unlink()
    ray.shutdown()
    return out


def cli_child(corpus: Path, db: Path) -> dict:
    """`mrag index --ray` on a local cluster, with the real packaged model on the worker."""
    import ray
    from click.testing import CliRunner

    from mrag.cli import cli

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=150 * 2**20)
    done = CliRunner().invoke(cli, ["index", str(corpus), "--db", str(db), "--ray", "--workers", "1"])
    out = {"exit": done.exit_code, "output": done.output[-2000:]}
    blob = corpus / "sub" / "blob.txt"  # an unreadable file named explicitly: exit 1, nothing written
    bad = CliRunner().invoke(cli, ["index", str(corpus / "note0.txt"), str(blob), "--db", str(db), "--ray"])
    out["bad"] = {"exit": bad.exit_code, "output": bad.output}
    ray.shutdown()
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
    # the child changed note0.txt after its first job: do the same here
    (corpus / "note0.txt").write_text(TOPICS[3] + " Rewritten.")
    single.add_paths([corpus])

    assert out["first"]["added"] == len(first.added) and out["first"]["chunks"] == first.chunks
    assert [s["source"] for s in out["first"]["skipped"]] == [str(corpus / "sub" / "blob.txt")]
    workers = out["first"]["workers"]  # the actors of Ray Data's pool that embedded something
    assert sum(w["chunks"] for w in workers) == first.chunks
    assert 2 <= len(workers) <= 3 and all(w["chunks"] > 0 for w in workers)
    changed = out["changed"]  # one file rewritten: only its chunks are embedded again
    assert changed["updated"] == 1 and changed["unchanged"] == len(first.added) - 1 and changed["added"] == 0
    assert changed["chunks"] == 1
    assert out["poison"] == "RayJobError: the Ray job failed, nothing was written: RuntimeError: poisoned chunk"

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
    assert distributed.store.stats.count == single.store.stats.count == len(theirs)


def test_cli_ray_index_equals_cli_index(tmp_path, reuse_minilm):
    """`mrag index --ray` against `mrag index` in this process: same chunks, same scales."""
    corpus = make_corpus(tmp_path)
    out = run_child_in_netns(corpus, tmp_path / "cli-ray", mode="cli")
    assert out["exit"] == 0, out["output"]
    report = json.loads(out["output"].splitlines()[-1])
    done = CliRunner().invoke(cli, ["index", str(corpus), "--db", str(tmp_path / "cli-single")])
    assert done.exit_code == 0, done.output
    assert (
        out["bad"]["exit"] == 1
        and out["bad"]["output"] == f"Error: {corpus / 'sub' / 'blob.txt'}: a binary file, not text\n"
    )
    by_ray, here = Index.open(tmp_path / "cli-ray", create=False), Index.open(tmp_path / "cli-single", create=False)
    assert report["chunks"] == len(rows_by_id(here)) and report["workers"][0]["chunks"] == report["chunks"]
    assert sorted(rows_by_id(by_ray)) == sorted(rows_by_id(here))
    for group, scales in here.store.committed_scales().items():
        np.testing.assert_allclose(by_ray.store.committed_scales()[group], scales, rtol=1e-4)


def test_listing_and_reading_files_without_ray(tmp_path):
    """The read stage and the plan are plain functions: files -> document rows -> what to embed."""
    from mrag.distributed import _plan, list_files, read_documents
    from mrag.ingest import IngestError

    corpus = make_corpus(tmp_path)
    files = list_files([corpus])
    assert all(not explicit for _, explicit in files) and len(files) == len(TOPICS) + 2
    rows = [r for path, explicit in files for r in read_documents({"path": path, "explicit": explicit}, 120, 1, {})]
    blob = [r for r in rows if r["problem"]]
    assert [r["path"] for r in blob] == [str(corpus / "sub" / "blob.txt")] and blob[0]["n_chunks"] == 0
    assert {r["doc_id"] for r in rows if r["doc_id"].startswith("rec")} == {f"rec{i}" for i in range(5)}
    assert all(r["n_chunks"] == len(r["chunks"]) >= 1 for r in rows if not r["problem"])
    assert len({tuple(sorted(r)) for r in rows}) == 1  # one schema for every row, problem rows too

    index = Index.open(tmp_path / "db", embedder=FakeEmbedder())
    index.add_paths([corpus / "note0.txt"])
    report, todo = _plan(index.store, rows)
    note0 = next(r["doc_id"] for r in rows if r["path"] == str(corpus / "note0.txt"))
    assert report.unchanged == [note0] and note0 not in todo and len(todo) == len(rows) - 2
    assert [s.source for s in report.skipped] == [str(corpus / "sub" / "blob.txt")]
    assert todo == {r["doc_id"]: r["n_chunks"] for r in rows if not r["problem"] and r["doc_id"] != note0}

    named = [dict(r, explicit=True) if r["problem"] else r for r in rows]  # a bad file named explicitly
    with pytest.raises(IngestError, match="blob.txt"):
        _plan(index.store, named)
    with pytest.raises(ValueError, match="duplicate document ids"):
        _plan(index.store, rows + [rows[0]])
    with pytest.raises(ValueError, match="no files"):
        list_files([])
    (tmp_path / "custom.jsonl").write_text('{"key": "k1", "body": "A record with its own field names."}')
    custom = {"path": str(tmp_path / "custom.jsonl"), "explicit": True}
    [row] = read_documents(custom, 120, 1, {"text_field": "body", "id_field": "key"})
    assert row["doc_id"] == "k1" and row["chunks"] == ["A record with its own field names."]


def test_cli_ray_refuses_extra_spaces(tmp_path):
    corpus = make_corpus(tmp_path)
    done = CliRunner().invoke(cli, ["index", str(corpus), "--db", str(tmp_path / "db"), "--ray", "--space", "x=fake"])
    assert done.exit_code == 2 and "--ray does not embed extra spaces" in done.output
    assert not (tmp_path / "db").exists()


if __name__ == "__main__":
    run = cli_child if sys.argv[3] == "cli" else child
    print(json.dumps(run(Path(sys.argv[1]), Path(sys.argv[2]))))
