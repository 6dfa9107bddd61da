"""One writer at a time across processes and machines.

Local folders: an exclusive `flock` on a file in the index folder. The kernel drops it when its holder
exits, `kill -9` included, so a crashed writer never leaves the index locked.

S3 (s3://bucket/prefix): a lease object `prefix/.mrag-write.lock`, created with a conditional PUT
(If-None-Match: *), so exactly one writer creates it. Its holder renews the lease every third of
`LEASE` seconds (a conditional PUT on its own ETag) and deletes it when done; a lease not renewed for
`LEASE` seconds by the store's own clock (its Last-Modified against the Date of the answer, so clocks
of the machines need not agree) is taken over by a conditional PUT on the dead holder's ETag, which only
one waiter can win. A renewal that fails for want of an answer is tried again; a holder whose lease was
taken, or that could not renew it for most of `LEASE` (all but `MARGIN` of it), has lost the lock and refuses
to commit.

Either way the lock names its holder (pid, host, command, since when), so a writer that times out
can say who it waited for. Other object stores (gs://, az://) get no lock: one writer at a time.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

from mrag.errors import Unwritable

LOCK_FILE = ".mrag-write.lock"
DEFAULT_TIMEOUT = 600.0  # seconds a writer waits for another one
POLL = 0.05
log = logging.getLogger(__name__)
TELL_AFTER = 2.0  # seconds a writer waits for the lock before it says for whom
LEASE = 60.0  # seconds an object-store lock lives without renewal
MARGIN = 1 / 6  # a holder that could not renew for LEASE x (1 - MARGIN) seconds (50 of 60) gives the lease up


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


def normal_uri(uri: str) -> str:
    """The URI with its scheme in lower case: Lance takes `S3://` as `s3://`, and so must the lock and the
    checks for a local folder (an `S3://` writer took no lock). Paths without a scheme as they are."""
    scheme, sep, rest = uri.partition("://")
    return scheme.lower() + sep + rest if sep and re.fullmatch(r"[A-Za-z][A-Za-z0-9+.\-]*", scheme) else uri


def is_local(uri: str) -> bool:
    uri = normal_uri(uri)
    return "://" not in uri or uri.startswith("file://")


def local_path(uri: str) -> Path:
    return Path(normal_uri(uri).removeprefix("file://")).expanduser()


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


def cannot_write(uri: str, reason: str, nothing: str) -> Unwritable:
    """The error of a write refused because the index cannot be written (`unwritable`'s reason); `nothing`:
    what was not done ("written", "embedded or written")."""
    return Unwritable(f"{uri} cannot be written ({reason}): nothing was {nothing}; check the folder's "
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
    uri = normal_uri(uri)
    if uri.startswith("s3://"):
        with s3_lock(uri, timeout, storage_options or {}) as lease:
            yield lease
        return
    if not is_local(uri) or sys.platform == "win32":
        yield None
        return
    yield from _flock(uri, timeout)


def tell_waiting(uri: str, holder: str, deadline: float) -> bool:
    """Say that a writer waits for the lock and for whom (a log warning: on stderr where logging is not set
    up), so a run held up does not look hung; -> True. Once a wait, TELL_AFTER seconds into it."""
    log.warning("mrag: waiting for the write lock on %s, held by %s (up to %.0f s more; MRAG_LOCK_TIMEOUT sets the "
                "wait)", uri, holder, deadline - time.monotonic())
    return True


def _flock(uri: str, timeout: float) -> Iterator[None]:
    import fcntl

    path = local_path(uri) / LOCK_FILE
    started = time.monotonic()
    deadline, told = started + timeout, False
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
                if not told and time.monotonic() - started >= TELL_AFTER:
                    told = tell_waiting(uri, holder(path), deadline)
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

    def __init__(self, client: Any, bucket: str, key: str, etag: str, note: dict[str, Any],
                 sent: float | None = None) -> None:
        """`note` holds a `token` of this holder's own; `sent`: when the PUT that took the lease was sent."""
        self.client, self.bucket, self.key, self.etag, self.note = client, bucket, key, etag, note
        self._taken = False
        self._renewed = time.monotonic() if sent is None else sent  # when the last renewal that took was sent
        self._stop = threading.Event()
        self._renewer = threading.Thread(target=self._renew_until_released, daemon=True)
        self._renewer.start()

    @property
    def lost(self) -> bool:
        """Taken by another writer, or not renewed for most of LEASE (a renewal may hang without answer)."""
        return self._taken or time.monotonic() - self._renewed > LEASE * (1 - MARGIN)

    def _renew_until_released(self) -> None:
        wait = LEASE / 3
        while not self._stop.wait(wait):
            sent = time.monotonic()
            try:
                self.etag = _put(self.client, self.bucket, self.key, self.note, IfMatch=self.etag)
                self._renewed, wait = sent, LEASE / 3
            except Exception as e:
                if _code(e) in TAKEN and not self._still_ours():  # taken over, or gone: no longer ours to commit
                    self._taken = True
                    return
                if self.lost:
                    return
                wait = min(LEASE / 12, max(LEASE * (1 - MARGIN) - (time.monotonic() - self._renewed), 0.0))

    def _still_ours(self) -> bool:
        """Whether the lease object holds this holder's token (a renewal the store applied whose answer was
        lost leaves another ETag, with our note): then its ETag is adopted."""
        try:
            held = self.client.get_object(Bucket=self.bucket, Key=self.key)
            if json.loads(held["Body"].read() or b"{}").get("token") != self.note.get("token"):
                return False
        except Exception:
            return False
        self.etag = str(held["ETag"])
        return True

    def release(self) -> None:
        self._stop.set()
        self._renewer.join()
        if self._taken:
            return  # taken over meanwhile: the lease is the taker's now
        for attempt in range(3):  # a lease left behind holds the next writer up to LEASE seconds
            try:
                self.client.delete_object(Bucket=self.bucket, Key=self.key, IfMatch=self.etag)
                return
            except Exception as e:
                if _code(e) in TAKEN:
                    return
                time.sleep(0.5 * (attempt + 1))


REFUSED = ("AccessDenied", "AllAccessDisabled", "NoSuchBucket", "InvalidAccessKeyId", "SignatureDoesNotMatch",
           "InvalidBucketName", "AccountProblem")  # the lease cannot be written: the index cannot be either
TAKEN = ("PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey", "404")  # a lease that is not ours


def _code(error: Exception) -> str:
    """The S3 error code of a botocore ClientError, else ""."""
    response = getattr(error, "response", None)
    return str(response.get("Error", {}).get("Code", "")) if isinstance(response, dict) else ""


def _put(client: Any, bucket: str, key: str, note: dict[str, Any], **condition: str) -> str:
    body = json.dumps(note | {"expires": time.time() + LEASE}).encode()  # for people: takers go by the store's clock
    return str(client.put_object(Bucket=bucket, Key=key, Body=body, **condition)["ETag"])


def expired(held: dict[str, Any], note: dict[str, Any]) -> bool:
    """Whether a lease object (`get_object`'s answer) went LEASE seconds without renewal, by the store's
    clock: its Last-Modified against the answer's Date; by this machine's clock against the holder's
    `expires` where the store gave no date."""
    date = held.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    modified = held.get("LastModified")
    if date and modified is not None:
        try:
            return (parsedate_to_datetime(date) - modified).total_seconds() > LEASE
        except (TypeError, ValueError):
            pass
    return float(note.get("expires", 0)) < time.time()


def lock_key(uri: str) -> tuple[str, str]:
    """(bucket, key) of the lease object of an s3:// index, the path as the store resolves it: `a//b`,
    `a/./b`, `a/x/../b` and a trailing slash name the same index, so the same lease."""
    bucket, _, prefix = normal_uri(uri).removeprefix("s3://").partition("/")
    parts: list[str] = []
    for part in prefix.split("/"):
        if part == "..":
            parts = parts[:-1]
        elif part not in ("", "."):
            parts.append(part)
    return bucket, "/".join([*parts, LOCK_FILE])


def s3_client(storage_options: dict[str, str]) -> Any:
    """A boto3 S3 client from Lance-style storage options (else the AWS_* environment)."""
    try:
        import boto3
    except ImportError:
        raise RuntimeError("writing to an s3:// index takes a lock through boto3: pip install 'mrag[s3]'") from None
    from botocore.config import Config

    def get(*names: str) -> str | None:  # every spelling Lance (object_store) takes for the option
        return next((storage_options[n] for n in names if storage_options.get(n)), None)

    return boto3.client(
        "s3",
        endpoint_url=get("aws_endpoint", "endpoint", "aws_endpoint_url", "endpoint_url")
        or os.environ.get("AWS_ENDPOINT"),
        aws_access_key_id=get("aws_access_key_id", "access_key_id"),
        aws_secret_access_key=get("aws_secret_access_key", "secret_access_key"),
        aws_session_token=get("aws_session_token", "session_token", "aws_token", "token"),
        region_name=get("aws_region", "region", "aws_default_region", "default_region") or os.environ.get("AWS_REGION"),
        # a renewal that hangs must give up in time for the next try within the lease (botocore waits 60 s a read,
        # then tries again: one unanswered renewal lost the lease)
        config=Config(connect_timeout=5, read_timeout=max(5.0, LEASE / 8), retries={"total_max_attempts": 2}),
    )


@contextmanager
def s3_lock(uri: str, timeout: float, storage_options: dict[str, str]) -> Iterator[Lease]:
    from botocore.exceptions import ClientError, ConnectTimeoutError, ReadTimeoutError

    bucket, key = lock_key(uri)
    client, note = s3_client(storage_options), holder_note() | {"token": os.urandom(8).hex()}
    started = time.monotonic()
    deadline, told = started + timeout, False
    while True:
        sent = time.monotonic()
        try:
            lease = Lease(client, bucket, key, _put(client, bucket, key, note, IfNoneMatch="*"), note, sent)
            break
        except ClientError as exc:
            if _code(exc) in REFUSED:  # read-only keys, no bucket: said in one line
                raise Unwritable(f"{uri} cannot be written (s3://{bucket}/{key}: {_code(exc)}): nothing was "
                                 "written; check the bucket, and that the keys may put and delete objects") from None
            if _code(exc) not in ("PreconditionFailed", "ConditionalRequestConflict"):
                raise
        except (ReadTimeoutError, ConnectTimeoutError):  # a slow store: the PUT may have been applied, looked at below
            pass
        try:
            held = client.get_object(Bucket=bucket, Key=key)
            current = json.loads(held["Body"].read() or b"{}")
            if current.get("token") == note["token"] and not expired(held, current):  # ours: its answer came late
                sent = time.monotonic()  # renewed now, so its age is known
                lease = Lease(client, bucket, key, _put(client, bucket, key, note, IfMatch=held["ETag"]), note, sent)
                break
            if expired(held, current):  # its holder died: take it over, one taker wins
                sent = time.monotonic()
                lease = Lease(client, bucket, key, _put(client, bucket, key, note, IfMatch=held["ETag"]), note, sent)
                break
        except (ClientError, ReadTimeoutError, ConnectTimeoutError):
            current = {}  # released or taken meanwhile, or no answer in time: try again
        if not told and time.monotonic() - started >= TELL_AFTER:
            told = tell_waiting(uri, describe(current), deadline)
        if time.monotonic() >= deadline:
            raise LockTimeout(f"another writer holds {uri} ({describe(current)}); waited {timeout:g} s "
                              f"(MRAG_LOCK_TIMEOUT sets the wait; a lease its writer no longer renews frees "
                              f"itself {LEASE:g} s after its last renewal)")
        time.sleep(POLL * 4)
    try:
        yield lease
    finally:
        lease.release()
