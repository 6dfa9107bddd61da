"""When a search may skip LanceDB's version check (`Store.refresh(quick=True)`): on a local index, while the
manifest table's `_versions` folder, where every commit and prune adds or removes a file, is as the last
check left it, for at most QUICK_FOR seconds after that check (a file system whose folder times do not
move, a FUSE mount of a bucket, or that caches them, NFS, is then at most that late).
"""

from __future__ import annotations

import os
import time

from mrag.locking import is_local, local_path

SETTLED_NS = 2_000_000_000  # a `_versions` folder unchanged this long has a trusted mtime (FAT ticks in 2 s)
QUICK_FOR = 1.0  # seconds a search trusts an unchanged `_versions` folder after LanceDB's version check

Stamp = tuple[int, int, int]


class VersionsWatch:
    """The `_versions` folder of the manifest table at `uri`, as the last version check saw it."""

    def __init__(self, uri: str, manifest: str) -> None:
        self._folder = local_path(uri).absolute() / f"{manifest}.lance" / "_versions" if is_local(uri) else None
        self._seen: tuple[Stamp, float] | None = None  # `stamp()` at the last check, and when (time.monotonic())

    def stamp(self) -> Stamp | None:
        """(device, inode, mtime) of the folder; None on object storage, when it cannot be read, or when it
        changed less than SETTLED_NS ago (a file system's mtime ticks coarsely, so a second commit in the
        same tick could leave it as it was)."""
        found = self._stat()
        if found is None or time.time_ns() - found.st_mtime_ns < SETTLED_NS:
            return None
        return found.st_dev, found.st_ino, found.st_mtime_ns

    def identity(self) -> tuple[int, int, int] | None:
        """(device, inode, ctime) of the folder: another when the index was made again or swapped in (same
        version numbers or not; ctime too, as a file system may give a freed inode again at once), or after
        a commit or a prune; None on object storage or when it cannot be read."""
        found = self._stat()
        return None if found is None else (found.st_dev, found.st_ino, found.st_ctime_ns)

    def _stat(self) -> os.stat_result | None:
        if self._folder is None:
            return None
        try:
            return os.stat(self._folder)
        except OSError:
            return None

    def unchanged(self) -> bool:
        """Whether the folder is as the last check saw it, within QUICK_FOR seconds of that check."""
        seen = self._seen  # one read: another thread may check meanwhile
        return seen is not None and time.monotonic() < seen[1] + QUICK_FOR and self.stamp() == seen[0]

    def checked(self, stamp: Stamp | None, at: float) -> None:
        """A version check that began at `at` (time.monotonic()), when the folder's stamp was `stamp`."""
        self._seen = None if stamp is None else (stamp, at)
