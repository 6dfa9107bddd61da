"""The library's own errors, raised from every floor (rows, store, index, spaces), and what to tell of the
storage's (`lance_message`), which the CLI and the server share."""

from __future__ import annotations

import errno
import os
import re


class StoreError(ValueError):
    """The store cannot do what was asked (wrong model, missing index, ...)."""


class Unwritable(StoreError):
    """The index cannot be written here (permissions, a read-only file system): nothing was done."""


class MadeAgain(StoreError):
    """Another process made the index again, with another embedder, while it was open here: its vectors are not
    this process's (a search would rank with the old model's query vectors, a write store them)."""


class Busy(StoreError):
    """Other writers committed every time a read looked: the same request goes through a moment later."""


STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS)  # `lance_message` tells them
RUST_SOURCE = re.compile(r",?\s*/\S+\.rs:\d+:\d+")


def no_space(message: str) -> bool:
    """Whether an error's text says the disk (or the quota) is full."""
    return os.strerror(errno.ENOSPC) in message or os.strerror(errno.EDQUOT) in message


# Lance's words for an object store that failed (S3, GCS, Azure: unreachable, timed out, refused)
OBJECT_STORE_TROUBLE = (r"Generic (S3|GCS|MicrosoftAzure|HTTP) error|error sending request|HTTP error|dns error|"
                        r"Connection refused|connection reset|timed out|store: \"(S3|GCS|MicrosoftAzure)\"")
LANCE_STORE = r'Generic (S3|GCS|MicrosoftAzure|HTTP) error|store: "(S3|GCS|MicrosoftAzure)"'  # Lance's, not a space's
STORE_CAUSES = (r"NoSuchBucket|InvalidAccessKeyId|SignatureDoesNotMatch|AccessDenied|Forbidden|Connection refused|"
                r"dns error|timed out|error sending request")  # the words that say why, in a long Rust dump


def lance_message(where: str) -> str:
    """What to tell of a Lance storage error, or faiss's writing the graphs (`where`: its first line): a full
    disk or a folder that cannot be written is not a damaged index (a write that fails commits nothing)."""
    where = RUST_SOURCE.sub("", where)  # less the line of Lance's source that raised it
    code = re.search(r"os error (\d+)|\[Errno (\d+)\]", where)
    number = int(code.group(1) or code.group(2)) if code else 0
    if number in (errno.ENOSPC, errno.EDQUOT) or no_space(where):
        return (f"no space left for the index's files ({where}): nothing was committed, the index is as it was; "
                "free some space and run again")
    if number in (errno.EACCES, errno.EPERM, errno.EROFS):
        return (f"the index's files cannot be written or read ({where}): nothing was committed; check the "
                "folder's permissions, or that its file system is writable")
    if re.search(OBJECT_STORE_TROUBLE, where, re.IGNORECASE):  # the store, not the index, failed
        cause = re.search(STORE_CAUSES, where, re.IGNORECASE)
        short = where if len(where) <= 240 else where[:240] + " ..."
        return (f"the object store did not answer or refused the request ({cause.group(0) + ': ' if cause else ''}"
                f"{short}): check its address, bucket, credentials and the network, then run again; a write cut "
                "off so is in the index whole or not at all (indexing again is incremental, and `mrag verify` "
                "checks the index)")
    return (f"the index's files could not be read ({where}): a file of the index is missing or damaged; "
            "restore the folder from a backup, or index the documents again into a new folder")
