"""A writer or a searcher in a process of its own, on one index, with the fake embedder.

    python tests/procs.py writer DB LOG NAME OPS SEED    # adds, upserts, deletes its own documents
    python tests/procs.py searcher DB LOG SECONDS SEED   # searches until the time is up
    python tests/procs.py hold DB SECONDS                # holds the write lock (for the timeout test)
    python tests/procs.py slow-index DB FOLDER GO        # indexes FOLDER (--prune), embedding once GO exists
    python tests/procs.py parts DB FOLDER EVERY STOP     # indexes FOLDER in parts; stops at its STOP-th embedding

A writer logs every operation as a JSON line before it starts ("try") and after it returns ("ok"), so
a check afterwards knows which writes were acknowledged, even when the writer was killed with -9.
`expected_documents` and `check_index` (used by tests and benchmarks) read those logs.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
import traceback
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
WORDS = ("river mountain castle bee honey rome aqueduct tide moon chess knight pawn glacier valley "
         "volcano lava forest oak pine desert camel ocean whale coral reef storm thunder").split()


def log_line(handle: Any, **event: Any) -> None:
    handle.write(json.dumps(event) + "\n")
    handle.flush()  # in the kernel now: survives a kill -9 of this process


def text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def process_settings() -> None:
    """For a process of its own (never the test's): PROCS_PRUNE_EVERY_COMMIT=1: every commit compacts
    and prunes all but the committed version; PROCS_READ_TRIES=1: no read retry, to see what readers
    would meet without it."""
    import mrag.maintenance
    import mrag.retrieve.search
    import mrag.store

    if os.environ.get("PROCS_PRUNE_EVERY_COMMIT"):
        mrag.maintenance.MAINTAIN_EVERY, mrag.maintenance.MAINTAIN_SHARE = 1, 10**9
    if os.environ.get("PROCS_READ_TRIES"):
        mrag.store.READ_TRIES = mrag.retrieve.search.READ_TRIES = int(os.environ["PROCS_READ_TRIES"])


def open_index(db: str) -> Any:
    """The index at db (a folder, or s3:// with PROCS_STORAGE_OPTIONS as JSON) with the fake embedder."""
    sys.path.insert(0, str(HERE))
    from conftest import FakeEmbedder

    from mrag.index import Index

    options = json.loads(os.environ.get("PROCS_STORAGE_OPTIONS") or "null")
    return Index.open(db, embedder=FakeEmbedder(), storage_options=options)


def writer(db: str, log: str, name: str, ops: int, seed: int) -> None:
    rng = random.Random(seed)
    index = open_index(db)
    mine: list[str] = []  # acknowledged documents of this writer, still present
    with open(log, "a") as handle:
        for i in range(ops):
            roll = rng.random()
            if mine and roll < 0.2:
                doc = mine.pop(rng.randrange(len(mine)))
                log_line(handle, op="del", id=doc, state="try")
                index.delete([doc])
                log_line(handle, op="del", id=doc, state="ok")
                continue
            if mine and roll < 0.35:
                doc, op = rng.choice(mine), "upd"
            else:
                doc, op = f"{name}-{i}", "add"
            # a long text now and then: a document of several chunks (chunk_chars 1000)
            body = text(rng, rng.choice([5, 12, 400]))
            log_line(handle, op=op, id=doc, text=body, state="try")
            (index.upsert if op == "upd" else index.add)([{"id": doc, "text": body}])
            log_line(handle, op=op, id=doc, text=body, state="ok")
            if op == "add":
                mine.append(doc)


def searcher(db: str, log: str, seconds: float, seed: int) -> None:
    rng = random.Random(seed)
    index = open_index(db)
    done = errors = 0
    deadline = time.monotonic() + seconds
    with open(log, "a") as handle:
        while time.monotonic() < deadline:
            try:
                hits = index.search(text(rng, 4), k=5, strategy=rng.choice(["mrag", "standard", "mrag-paper"]))
                ids = [h.id for h in hits]
                if len(ids) != len(set(ids)):
                    raise AssertionError(f"duplicate hits {ids}")
                if done % 5 == 0:
                    index.info()  # the other read paths: row counts and a scan
                done += 1
            except Exception as exc:  # counted, not fatal: the check reports it
                errors += 1
                log_line(handle, error=f"{type(exc).__name__}: {exc}", where=traceback.format_exc()[-1500:])
        log_line(handle, searches=done, errors=errors)


def hold(db: str, seconds: float) -> None:
    from mrag.locking import write_lock

    options = json.loads(os.environ.get("PROCS_STORAGE_OPTIONS") or "null")
    with write_lock(db, timeout=30, storage_options=options):
        print("held", flush=True)
        time.sleep(seconds)


def expected_documents(logs: list[Path]) -> tuple[dict[str, str], set[str]]:
    """From writer logs: documents whose last operation was acknowledged (id -> text; deleted ones
    absent), and the ids whose last operation was in flight when the writer died (either state holds)."""
    state: dict[str, str | None] = {}  # id -> last acknowledged text, None once deleted
    uncertain: set[str] = set()
    for path in logs:
        pending: dict[str, Any] | None = None
        for line in (path.read_text() if path.exists() else "").splitlines():  # none: killed before a write
            event = json.loads(line)
            if event["state"] == "try":
                pending = event
                continue
            pending = None
            state[event["id"]] = None if event["op"] == "del" else event["text"]
        if pending is not None:  # killed in the middle of this one
            uncertain.add(pending["id"])
    return {doc: body for doc, body in state.items() if body is not None and doc not in uncertain}, uncertain


def check_index(db: str, logs: list[Path]) -> dict[str, Any]:
    """Every acknowledged write present once, no deleted document back, documents whole, sums sound.
    Raises AssertionError naming the first problem; returns the counts."""
    expected, uncertain = expected_documents(logs)
    index = open_index(db)
    report = index.verify()
    rows = index.store.rows(columns=["id", "doc_id", "text", "position"]).to_pylist()
    by_doc: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_doc.setdefault(row["doc_id"], []).append(row)
    missing = sorted(set(expected) - set(by_doc))
    extra = sorted(set(by_doc) - set(expected) - uncertain)
    broken = [doc for doc, chunks in by_doc.items()
              if sorted(r["position"] for r in chunks) != list(range(len(chunks)))]
    stale = [doc for doc, chunks in by_doc.items() if doc in expected and set(
        " ".join(r["text"] for r in sorted(chunks, key=lambda r: r["position"])).split()) != set(expected[doc].split())]
    assert not missing, f"{len(missing)} acknowledged documents lost, e.g. {missing[:3]}"
    assert not extra, f"{len(extra)} documents present that should not be, e.g. {extra[:3]}"
    assert not broken, f"{len(broken)} documents with missing or repeated chunks, e.g. {broken[:3]}"
    assert not stale, f"{len(stale)} documents not holding their last acknowledged text, e.g. {stale[:3]}"
    assert report["duplicate_ids"] == 0, report
    assert report["sums_drift"] < 1e-6, report
    return {"documents": len(by_doc), "acknowledged": len(expected), "in_flight": len(uncertain),
            "lost": len(missing), "resurrected": len(extra), **report}


def slow_index(db: str, folder: str, go: str) -> None:
    """`mrag index FOLDER --prune` that, once it starts embedding (the files read and looked up in the index),
    prints "embedding" and waits until the file `go` exists; then prints its report as JSON."""
    sys.path.insert(0, str(HERE))
    from conftest import FakeEmbedder

    from mrag.index import Index

    class Waits(FakeEmbedder):
        waiting = False  # in the run, not at the index's opening (its probe)

        def embed_batch(self, texts: list[str]) -> Any:
            if self.waiting:
                print("embedding", flush=True)
                deadline = time.monotonic() + 120
                while not os.path.exists(go) and time.monotonic() < deadline:
                    time.sleep(0.02)
            return super().embed_batch(texts)

    embedder = Waits()
    index = Index.open(db, embedder=embedder)
    embedder.waiting = True
    print(json.dumps(index.add_paths([folder], prune=True).to_dict()), flush=True)


def index_in_parts(db: str, folder: str, every: int, stop: int) -> None:
    """`mrag index FOLDER --commit-every EVERY` that prints "embedding N" before its N-th embedding and, at the
    STOP-th, waits there (to be killed)."""
    sys.path.insert(0, str(HERE))
    from conftest import FakeEmbedder

    from mrag.index import Index

    class Stops(FakeEmbedder):
        counting = False  # from the run on, not the index's probe at its opening

        def embed_batch(self, texts: list[str]) -> Any:
            if self.counting:
                print(f"embedding {self.batches + 1}", flush=True)
                if self.batches + 1 == stop:
                    time.sleep(300)
            return super().embed_batch(texts)

    embedder = Stops()
    index = Index.open(db, embedder=embedder)
    embedder.counting, embedder.batches = True, 0
    print(json.dumps(index.add_paths([folder], commit_every=every).to_dict()), flush=True)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    role, args = sys.argv[1], sys.argv[2:]
    process_settings()
    if role == "writer":
        writer(args[0], args[1], args[2], int(args[3]), int(args[4]))
    elif role == "searcher":
        searcher(args[0], args[1], float(args[2]), int(args[3]))
    elif role == "hold":
        hold(args[0], float(args[1]))
    elif role == "slow-index":
        slow_index(args[0], args[1], args[2])
    elif role == "parts":
        index_in_parts(args[0], args[1], int(args[2]), int(args[3]))
    else:
        raise SystemExit(f"unknown role {role}")
