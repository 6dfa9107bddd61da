"""Keeping a long-running index small: compaction of small fragments and pruning of old versions.

Every single-document write is a commit: a new version of the chunks table (a manifest listing every
fragment, and a fragment of its own) and of the one-row manifest table. Old versions are pruned by
count, not by age: a pass keeps only the committed version (the latest, under the write lock), so
the folder stays near its compacted size however fast writes come. Readers in other processes that
were still on a pruned version read again at the latest committed one (`Store.reading`,
`mrag.retrieve.search.search_many`; up to `READ_TRIES` tries, enough for a writer pruning at every commit
in `tests/test_writers.py`, where 3 were not always).

LanceDB prunes the chunks table only inside `optimize`, which compacts it too (rewriting every
fragment under 1M rows), so the chunks table is pruned when it is compacted, and compacted when
enough of it changed or when the folder outgrew its last compacted size (`compaction_due`). The
manifest table, one small file per commit, is pruned at every pass.
"""

from __future__ import annotations

import warnings
from datetime import timedelta
from typing import Any, Protocol

from mrag.manifest import Manifest
from mrag.scales import ScaleSums

MAINTAIN_EVERY = 32  # commits between automatic maintenance passes (LanceDB's advice: about every 20 writes)
MAINTAIN_SHARE = 8  # ... which compact once the rows changed since the last compaction are 1/8 of the table,
MAINTAIN_MAX = 1024  # or after this many commits: each compaction rewrites the fragments under 1M rows,
MAINTAIN_GROWTH = 1.25  # or once the folder is this much larger than its compacted size, scaled to the rows,
MAINTAIN_FLOOR = 2**18  # plus this many bytes (a small index compacts on the share rule anyway)
NEVER = timedelta(days=36500)  # "prune nothing" for LanceDB's optimize, which always prunes
LATEST_ONLY = timedelta(0)  # "keep only the latest version" for LanceDB's optimize
OPTIMIZE_PASSES = 3  # LanceDB optimize passes until the table stops changing (two with a full-text index)


class Store(Protocol):
    """What maintenance uses of `mrag.store.Store` (which imports this module)."""

    uri: str
    chunks: Any  # the chunks table, at the latest version
    _manifest_table: Any
    manifest: Manifest
    sums: ScaleSums  # the committed rows' sums (their heads' count is the rows')

    def disk_bytes(self) -> int | None: ...

    def _save_manifest(self, **changes: Any) -> None: ...


def compaction_due(since: dict[str, int], rows: int, folder_bytes: int | None) -> bool:
    """Whether a maintenance pass compacts (and so prunes) the chunks table. `since`: the manifest's
    maintenance counters (writes and rows changed since the last compaction; `bytes` and `count`: the
    folder's size and the rows right after it), `rows`: the committed rows now, `folder_bytes`: the
    folder's size now (None on object storage, where only the counters decide)."""
    if since["rows"] * MAINTAIN_SHARE >= rows or since["writes"] >= MAINTAIN_MAX:
        return True
    if folder_bytes is None or not since.get("count") or not since.get("bytes"):
        return False
    compacted = since["bytes"] * rows / since["count"]  # the compacted size, grown with the rows
    return folder_bytes > MAINTAIN_GROWTH * compacted + MAINTAIN_FLOOR


def maintain(store: Store, since: dict[str, int]) -> None:
    """The automatic pass after a commit, under the write lock: compaction with pruning when due,
    else only the manifest table's old versions pruned. A failure only warns: the write is committed,
    and a compaction cut short is rolled back by the next writer."""
    try:
        if compaction_due(since, store.sums.heads.count, store.disk_bytes()):
            compact_and_prune(store, None)
        else:
            prune(store._manifest_table, None)
    except Exception as exc:
        warnings.warn(f"maintenance of {store.uri} failed (the write itself is committed): {exc}", stacklevel=4)


def compact_and_prune(store: Store, keep: timedelta | None) -> None:
    """Under the write lock, after a commit. The compaction is committed before any prune, so the
    committed version is the latest when old versions go and survives a crash at any point.
    `keep`: prune versions older than this; None: all but the committed one."""
    store.chunks.checkout_latest()
    # LanceDB's optimize also folds new rows into the indexes, and a full-text index takes a second pass
    # (a version of its own): repeat until nothing moves, so the prune below writes no version after the
    # commit and removes none that readers were sent to
    for _ in range(OPTIMIZE_PASSES):
        version = store.chunks.version
        store.chunks.optimize(cleanup_older_than=NEVER)
        if store.chunks.version == version:
            break
    store._save_manifest(maintenance={"writes": 0, "rows": 0})
    prune(store.chunks, keep)
    prune(store._manifest_table, keep)
    # the commit again (pruning may write a version of its own), with the compacted size for `compaction_due`
    since = {"writes": 0, "rows": 0, "count": store.sums.heads.count, "bytes": store.disk_bytes() or 0}
    store._save_manifest(maintenance=since)


def prune(table: Any, keep: timedelta | None) -> None:
    """LanceDB's optimize with versions older than `keep` pruned (None: all but the latest), and the data files
    no version refers to (a write that failed on a full disk left one the size of the write, which LanceDB
    keeps for 7 days lest it belong to a write in progress: every write here holds the lock this runs under).
    Its warning for keep = 0 is about readers on old versions: ours retry at the latest one."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*cleanup_older_than=0.*")
        table.optimize(cleanup_older_than=LATEST_ONLY if keep is None else keep, delete_unverified=True)
