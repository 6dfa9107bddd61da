"""One writer at a time across processes and machines.

Local folders: an exclusive `flock` on a file in the index folder. The kernel drops it when its holder
exits, `kill -9` included, so a crashed writer never leaves the index locked.

S3 (s3://bucket/prefix): a lease object `prefix/.mrag-write.lock`, created with a conditional PUT
(If-None-Match: *), so exactly one writer creates it. Its holder renews the lease every third of
`LEASE` seconds (a conditional PUT on its own ETag) and deletes it when done; a lease that expired
(its holder died) is taken over by a conditional PUT on the dead holder's ETag, which only one
waiter can win. A holder whose renewal fails has lost the lock and refuses to commit.

Either way the lock names its holder (pid, host, command, since when), so a writer that times out
can say who it waited for. Other object stores (gs://, az://) get no lock: one writer at a time.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mrag.errors import StoreError

LOCK_FILE = ".mrag-write.lock"
DEFAULT_TIMEOUT = 600.0  # seconds a writer waits for another one
POLL = 0.05
LEASE = 60.0  # seconds an object-store lock lives without renewal


class LockTimeout(TimeoutError):
    """Another writer held the index for longer than the timeout."""


def lock_timeout() -> float:
    """The wait before giving up: MRAG_LOCK_TIMEOUT seconds, default 600."""
    value = os.environ.get("MRAG_LOCK_TIMEOUT")
    try:
        seconds = float(value) if value else DEFAULT_TIMEOUT
    except ValueError:
        seconds = float("nan")
    if not seconds >= 0:  # negative or NaN
        raise ValueError(f"MRAG_LOCK_TIMEOUT must be a number of seconds, 0 or more, got {value!r}")
    return seconds


def is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def local_path(uri: str) -> Path:
    return Path(uri.removeprefix("file://")).expanduser()


def unwritable(uri: str, inside: tuple[str, ...] = ()) -> str | None:
    """Why a local index folder cannot be written (a read-only file system, no permission), else None: asked
    before embedding, so a run that could never commit says so before its long work. A write needs the lock
    file (opened for appending, as `write_lock` does) and the folders `inside` it (its tables). Other
    stores: None."""
    if not is_local(uri):
        return None
    folder = local_path(uri)
    try:
        with open(folder / LOCK_FILE, "a"):
            pass
    except OSError as e:
        return f"{folder / LOCK_FILE}: {e.strerror or e}"
    for path in (folder / name for name in inside):
        if path.is_dir() and not os.access(path, os.W_OK):
            reason = os.strerror(errno.EROFS) if _read_only(path) else os.strerror(errno.EACCES)
            return f"{path}: {reason}"
    return None


def cannot_write(uri: str, reason: str, nothing: str) -> StoreError:
    """The error of a write refused because the index cannot be written (`unwritable`'s reason); `nothing`:
    what was not done ("written", "embedded or written")."""
    return StoreError(f"{uri} cannot be written ({reason}): nothing was {nothing}; check the folder's "
                      "permissions, or that its file system is writable")


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def holder_note() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv)[:200],
            "since": time.strftime("%Y-%m-%dT%H:%M:%S")}


@contextmanager
def write_lock(uri: str, timeout: float | None = None, storage_options: dict[str, str] | None = None
               ) -> Iterator[Lease | None]:
    """Hold the index's write lock (blocking up to `timeout` seconds; None: `lock_timeout()`).
    Yields the S3 lease (check `lease.lost` before committing), else None."""
    timeout = lock_timeout() if timeout is None else timeout
    if uri.startswith("s3://"):
        with s3_lock(uri, timeout, storage_options or {}) as lease:
            yield lease
        return
    if not is_local(uri) or sys.platform == "win32":
        yield None
        return
    yield from _flock(uri, timeout)


def _flock(uri: str, timeout: float) -> Iterator[None]:
    import fcntl

    path = local_path(uri) / LOCK_FILE
    deadline = time.monotonic() + timeout
    try:
        handle = open(path, "a+")  # never truncated on open: the holder's note stays readable
    except OSError as e:  # a read-only file system, no permission: said as `mrag index` says it
        raise cannot_write(uri, f"{path}: {e.strerror or e}", "written") from e
    with handle:
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
            handle.write(json.dumps(holder_note()))
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
        return describe(json.loads(path.read_text() or "{}"))
    except (OSError, ValueError):
        return "holder unknown"


def describe(note: dict[str, Any]) -> str:
    if not note:
        return "holder unknown"
    return f"pid {note.get('pid')} on {note.get('host')}, since {note.get('since')}: {note.get('command')}"


class Lease:
    """A held S3 lock: its ETag, renewed by a background thread until `release`."""

    def __init__(self, client: Any, bucket: str, key: str, etag: str, note: dict[str, Any]) -> None:
        self.client, self.bucket, self.key, self.etag, self.note = client, bucket, key, etag, note
        self.lost = False
        self._stop = threading.Event()
        self._renewer = threading.Thread(target=self._renew_until_released, daemon=True)
        self._renewer.start()

    def _renew_until_released(self) -> None:
        while not self._stop.wait(LEASE / 3):
            try:
                self.etag = _put(self.client, self.bucket, self.key, self.note, IfMatch=self.etag)
            except Exception:  # taken over (412) or unreachable: either way, no longer ours to commit
                self.lost = True
                return

    def release(self) -> None:
        self._stop.set()
        self._renewer.join()
        if not self.lost:
            try:
                self.client.delete_object(Bucket=self.bucket, Key=self.key, IfMatch=self.etag)
            except Exception:
                pass  # expired and taken over meanwhile: the lease is the taker's now


def _put(client: Any, bucket: str, key: str, note: dict[str, Any], **condition: str) -> str:
    body = json.dumps(note | {"expires": time.time() + LEASE}).encode()
    return str(client.put_object(Bucket=bucket, Key=key, Body=body, **condition)["ETag"])


def s3_client(storage_options: dict[str, str]) -> Any:
    """A boto3 S3 client from Lance-style storage options (else the AWS_* environment)."""
    try:
        import boto3
    except ImportError:
        raise RuntimeError("writing to an s3:// index takes a lock through boto3: pip install 'mrag[s3]'") from None
    get = storage_options.get
    return boto3.client(
        "s3",
        endpoint_url=get("aws_endpoint") or get("endpoint") or os.environ.get("AWS_ENDPOINT"),
        aws_access_key_id=get("aws_access_key_id") or get("access_key_id"),
        aws_secret_access_key=get("aws_secret_access_key") or get("secret_access_key"),
        aws_session_token=get("aws_session_token") or get("session_token"),
        region_name=get("aws_region") or get("region") or os.environ.get("AWS_REGION"),
    )


@contextmanager
def s3_lock(uri: str, timeout: float, storage_options: dict[str, str]) -> Iterator[Lease]:
    from botocore.exceptions import ClientError

    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    key = f"{prefix.rstrip('/')}/{LOCK_FILE}".lstrip("/")
    client, note = s3_client(storage_options), holder_note()
    deadline = time.monotonic() + timeout
    while True:
        try:
            lease = Lease(client, bucket, key, _put(client, bucket, key, note, IfNoneMatch="*"), note)
            break
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("PreconditionFailed", "ConditionalRequestConflict"):
                raise
        try:
            held = client.get_object(Bucket=bucket, Key=key)
            current = json.loads(held["Body"].read() or b"{}")
            if current.get("expires", 0) < time.time():  # its holder died: take it over, one taker wins
                lease = Lease(client, bucket, key, _put(client, bucket, key, note, IfMatch=held["ETag"]), note)
                break
        except ClientError:
            current = {}  # released or taken meanwhile: try again
        if time.monotonic() >= deadline:
            raise LockTimeout(f"another writer holds {uri} ({describe(current)}); waited {timeout:g} s "
                              "(MRAG_LOCK_TIMEOUT sets the wait)")
        time.sleep(POLL * 4)
    try:
        yield lease
    finally:
        lease.release()
