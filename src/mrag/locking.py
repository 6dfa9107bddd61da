"""One writer at a time across processes: an exclusive `flock` on a file in the index folder.

The kernel drops the lock when its holder exits, `kill -9` included, so a crashed writer never leaves
the index locked. While held, the file names the holder (pid, host, command, since when), so a
writer that times out can say who it waited for. Object-store indexes (s3://...) have no such file:
`write_lock` is then a no-op and the caller must ensure a single writer (see docs/scaling.md).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_FILE = ".mrag-write.lock"
DEFAULT_TIMEOUT = 600.0  # seconds a writer waits for another one
POLL = 0.05


class LockTimeout(TimeoutError):
    """Another writer held the index for longer than the timeout."""


def lock_timeout() -> float:
    """The wait before giving up: MRAG_LOCK_TIMEOUT seconds, default 600."""
    value = os.environ.get("MRAG_LOCK_TIMEOUT")
    try:
        return float(value) if value else DEFAULT_TIMEOUT
    except ValueError:
        raise ValueError(f"MRAG_LOCK_TIMEOUT must be a number of seconds, got {value!r}") from None


def is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def local_path(uri: str) -> Path:
    return Path(uri.removeprefix("file://")).expanduser()


@contextmanager
def write_lock(uri: str, timeout: float | None = None) -> Iterator[None]:
    """Hold the index's write lock (blocking up to `timeout` seconds; None: `lock_timeout()`)."""
    if not is_local(uri) or sys.platform == "win32":
        yield
        return
    import fcntl

    path = local_path(uri) / LOCK_FILE
    timeout = lock_timeout() if timeout is None else timeout
    deadline = time.monotonic() + timeout
    with open(path, "a+") as handle:  # never truncated on open: the holder's note stays readable
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LockTimeout(
                        f"another writer holds {uri} ({holder(path)}); waited {timeout:g} s "
                        "(MRAG_LOCK_TIMEOUT sets the wait)"
                    ) from None
                time.sleep(POLL)
        try:
            handle.seek(0)
            handle.truncate()
            note = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv)[:200],
                    "since": time.strftime("%Y-%m-%dT%H:%M:%S")}
            handle.write(json.dumps(note))
            handle.flush()
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            handle.flush()
            fcntl.flock(handle, fcntl.LOCK_UN)


def holder(path: Path) -> str:
    """Who holds the lock, as its holder wrote it."""
    try:
        note = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return "holder unknown"
    if not note:
        return "holder unknown"
    return f"pid {note.get('pid')} on {note.get('host')}, since {note.get('since')}: {note.get('command')}"
