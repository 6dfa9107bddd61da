"""An index folder before an index is made there: it must hold nothing else, and what a creation cut off left
is cleared (`mrag.store.Store.create`)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from mrag.errors import StoreError
from mrag.locking import LOCK_FILE, is_local, local_path

CHUNKS = "chunks"
MANIFEST = "manifest"
TABLES = (f"{CHUNKS}.lance", f"{MANIFEST}.lance")
OWN_ENTRIES = {*TABLES, LOCK_FILE, "graphs"}  # what an index folder holds


def own_folder(uri: str) -> None:
    """Refuse a local folder holding other files (--db given the documents' folder: the index would write among
    them); make it where there is none (the lock file lives in it)."""
    folder = local_path(uri)
    foreign = sorted(p.name for p in folder.iterdir() if p.name not in OWN_ENTRIES) if folder.is_dir() else []
    if foreign:
        raise StoreError(f"{uri} holds other files ({', '.join(foreign[:3])}): a new index needs a "
                         "folder of its own (a new or empty one)")
    folder.mkdir(parents=True, exist_ok=True)


def committed(table: Path) -> bool:
    """Whether a local table's folder holds a committed version (a creation cut off leaves one without)."""
    return any((table / "_versions").glob("*.manifest"))


def clear_half_made(db: Any, uri: str) -> None:
    """Under the write lock, before creating an index at `uri`: remove what a creation cut off left (a
    full disk, a kill between its two tables), which every later command refused ("Table 'manifest' was not
    found", or on an object store the old chunks table reopened: "Provided schema does not match"): a manifest
    table without a committed version, and a chunks table with no row. A chunks table with rows and no
    manifest is a damaged index, refused rather than replaced."""
    if not is_local(uri):
        if CHUNKS in db.list_tables().tables:
            rows = db.open_table(CHUNKS).count_rows()
            if rows:
                raise StoreError(f"{uri} holds {rows} indexed chunks but no manifest: a damaged index; restore it "
                                 "from a backup, or index the documents into a new prefix")
            db.drop_table(CHUNKS)
        return
    folder = local_path(uri)
    chunks, manifest = folder / f"{CHUNKS}.lance", folder / f"{MANIFEST}.lance"
    made = chunks.exists() and committed(chunks)
    rows = db.open_table(CHUNKS).count_rows() if made else 0
    if rows or (chunks.exists() and not made and any((chunks / "data").glob("*"))):
        # first: nothing is removed from a damaged index (rows, or data files whose versions are gone)
        raise StoreError(f"{folder} holds {f'{rows} indexed chunks' if rows else 'the data of indexed chunks'} but "
                         "no manifest: a damaged index; restore it from a backup, or index the documents into a new "
                         "folder")
    if manifest.exists() and not committed(manifest):
        shutil.rmtree(manifest)
    if chunks.exists():
        shutil.rmtree(chunks)
