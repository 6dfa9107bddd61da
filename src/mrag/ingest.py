"""Turn files and folders into documents: .txt, .md, .html, .json/.jsonl records, and PDF.

Files named explicitly must be readable, or reading fails with a clear error before anything is
written. Files found while walking a folder are skipped with a reason when they cannot be read
(binary, not UTF-8, empty, unsupported), and the reasons are reported.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mrag.documents import (
    Document,
    check_utf8,
    clean_text,
    field_text,
    merged_metadata,
    not_an_id,
    shown,
)
from mrag.formats import front_matter, html_to_text

TEXT_SUFFIXES = {".txt", ".md", ".markdown", ".rst"}
MARKDOWN_SUFFIXES = {".md", ".markdown"}
HTML_SUFFIXES = {".html", ".htm"}
RECORD_SUFFIXES = {".json", ".jsonl"}
SUFFIXES = TEXT_SUFFIXES | HTML_SUFFIXES | RECORD_SUFFIXES | {".pdf"}


EMPTY, NO_RECORDS = "the file is empty", "no records"
NO_PDF_TEXT = "a PDF with no text to extract (a scan? give it a text layer first, with ocrmypdf for one)"
HOLDS_NOTHING = (EMPTY, NO_RECORDS, NO_PDF_TEXT)  # why a file holds no document (`mrag.sync`)
NOT_UTF8_NAME = "its name is not UTF-8 (bytes shown as U+FFFD): rename the file to index it"


class IngestError(ValueError):
    """A file that was asked for by name cannot be indexed."""


@dataclass
class Skipped:
    source: str
    reason: str


def read_paths(
    paths: Iterable[str | Path], text_field: str = "text", id_field: str = "id", title_field: str = "title",
    empty_ok: bool = False,
) -> tuple[list[Document], list[Skipped]]:
    """Documents from files and folders (recursively), and the folder files skipped with why. A file named
    that cannot be read is an error; one that is empty or holds no records too, unless `empty_ok` (a prune:
    its documents are then removed)."""
    docs: list[Document] = []
    skipped: list[Skipped] = []
    for file, explicit in list_files(paths):
        if shown(file) != file:  # a name that is not UTF-8: no id, source or filter could hold it
            if explicit:
                raise IngestError(f"{shown(file)}: {NOT_UTF8_NAME}")
            skipped.append(Skipped(shown(file), NOT_UTF8_NAME))
            continue
        try:
            docs.extend(read_file(Path(file), text_field, id_field, title_field))
        except IngestError as e:
            reason = unreadable_reason(e, Path(file))
            if explicit and not (empty_ok and reason in HOLDS_NOTHING):
                raise
            skipped.append(Skipped(file, reason))
    return docs, skipped


def list_files(paths: Iterable[str | Path]) -> list[tuple[str, bool]]:
    """(file, named explicitly) for every input file: the files named, and the readable kinds of file
    in the folders named (recursively, sorted, hidden ones left out). A file reached twice (a folder and a
    file in it, a folder and its sub-folder, a link to a file also listed) is listed once: its document
    id is its resolved path."""
    out: dict[Path, tuple[str, bool]] = {}  # resolved path -> (file, named explicitly)
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.exists():
            raise IngestError(f"no such file or folder: {raw}")
        if not path.is_file() and not path.is_dir():
            raise IngestError(f"not a file or folder (a pipe, a device?): {raw}")
        # a folder named that cannot be listed is an error, as a file named that cannot be read
        found = [(path, True)] if path.is_file() else [(f, f == path) for f in sorted(walk_files(path))]
        for file, explicit in found:
            resolved = Path(os.path.realpath(file))  # not Path.resolve: a link loop raises there (Python < 3.13)
            first = out.setdefault(resolved, (str(file), explicit))
            # read under the file's own name where it is reached by it (its kind and title then never depend
            # on whether a link to it sorts first), else under the first link's (git-annex keeps only links)
            out[resolved] = (str(file) if _is_itself(file, resolved) else first[0], first[1] or explicit)
    return list(out.values())


def _is_itself(file: Path, resolved: Path) -> bool:
    """Whether `file` names the file `resolved` itself, not a link to it (False where it cannot be looked at:
    its reading then says why)."""
    try:
        return not file.is_symlink() and Path(os.path.realpath(file.parent)) / file.name == resolved
    except OSError:
        return False


def unreadable_reason(error: IngestError, path: Path) -> str:
    """Why a file could not be read, without the "<path>: " its message starts with (the path may itself
    hold ": ")."""
    reason = str(error)
    for prefix in (f"{path}: ", f"{os.path.realpath(path)}: "):
        reason = reason.removeprefix(prefix)
    return reason


def walk_files(folder: Path) -> Iterator[Path]:
    """The entries under `folder` with a readable kind of file's suffix, folders aside, but for hidden ones
    and those inside a LanceDB table (`*.lance`) or an mrag index (a folder holding `manifest.lance`:
    `mrag index . --db idx` leaves `idx/` out); links to folders are not followed. A folder that cannot be
    listed is yielded itself, and a file that cannot be checked too: `read_file` refuses them, so they are
    listed as skipped (and their documents kept by a prune) instead of silently missing or failing the run."""
    if _is_index(folder):
        return
    try:
        with os.scandir(folder) as listing:
            entries = list(listing)  # `list_files` sorts what the walk finds
    except OSError:
        yield folder
        return
    for entry in entries:
        path = folder / entry.name
        if entry.name.startswith("."):
            continue
        try:
            is_folder, is_link = entry.is_dir(), entry.is_symlink()
        except OSError:
            is_folder = is_link = False
        if is_folder:
            if not is_link and not entry.name.endswith(".lance"):
                yield from walk_files(path)
        elif path.suffix.lower() in SUFFIXES:
            yield path  # a pipe or a link to nothing too: `read_paths` lists it as skipped


def _is_index(folder: Path) -> bool:
    try:
        return (folder / "manifest.lance").is_dir()
    except OSError:
        return False


def file_stamp(path: str | Path) -> tuple[int, int, int] | None:
    """(inode, size, mtime) of a file, None when it is gone: what tells that it changed since it was read."""
    try:
        found = os.stat(path)
    except OSError:
        return None
    return found.st_ino, found.st_size, found.st_mtime_ns


def read_file(path: Path, text_field: str = "text", id_field: str = "id", title_field: str = "title") -> list[Document]:
    """The documents of one file, each stamped with the file as it was before the read (`file_stamp`); a file
    that cannot be read (no permission, gone since it was listed) is an IngestError."""
    try:
        if path.is_symlink() and not path.exists():
            raise IngestError(f"{path}: a link to nothing (its target does not exist, or links back to it)")
        if path.is_dir():  # a folder `walk_files` could not list
            os.listdir(path)
        if path.exists() and not path.is_file():  # never opened: a pipe would block the run
            raise IngestError(f"{path}: not a regular file (a pipe, a socket, a device?)")
    except OSError as e:  # in a folder that cannot be searched, or a folder that cannot be listed
        raise IngestError(f"{path}: cannot be {'listed' if _is_folder(path) else 'read'} ({e.strerror or e})") from e
    stamp = file_stamp(path)
    try:
        docs = _read_file(path, text_field, id_field, title_field)
    except OSError as e:
        raise IngestError(f"{path}: cannot be read ({e.strerror or e})") from e
    except IngestError:
        raise
    except RecursionError:  # JSON nested some hundreds deep: the file's fault, not the run's
        raise IngestError(f"{path}: cannot be parsed (nested too deeply)") from None
    except ValueError as e:  # a number of over 4,300 digits in JSON, or in an HTML character reference
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise IngestError(f"{path}: cannot be parsed ({why})") from None
    for doc in docs:
        doc.stamp = stamp
    return docs


def _is_folder(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:
        return False


def _read_file(path: Path, text_field: str, id_field: str, title_field: str) -> list[Document]:
    suffix = path.suffix.lower()
    source = str(path.resolve())
    if suffix == ".pdf":
        text = _read_pdf(path)
        if not text.strip():  # pages of images: a scan ("the file is empty" said of a 5 MB file)
            raise IngestError(f"{source}: {NO_PDF_TEXT}")
        return [_document(source, text, path.stem)]
    text = _read_text(path)
    if suffix in HTML_SUFFIXES:
        try:
            title, body = html_to_text(text)
        except AssertionError as e:  # what Python's parser cannot read is this file's fault, not the run's
            raise IngestError(f"{path}: unreadable HTML ({e})") from None
        return [_document(source, body, title or path.stem)]
    if suffix in RECORD_SUFFIXES:
        return _records(path, source, text, text_field, id_field, title_field)
    if suffix in MARKDOWN_SUFFIXES:
        title, text, fields = front_matter(text)
        return [_document(source, text, title or path.stem, fields)]
    return [_document(source, text, path.stem)]


def _document(source: str, text: str, title: str, metadata: dict[str, Any] | None = None) -> Document:
    doc = Document(id=source, text=text, source=source, title=title, metadata=metadata or {})  # text cleaned
    if not doc.text.strip():  # invisible characters only: no text
        raise IngestError(f"{source}: {EMPTY}")
    return doc


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    # UTF-8 (a byte-order mark dropped), or UTF-16 / UTF-32 with their byte-order marks (Windows' "Unicode")
    if data[:4] in (b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff"):
        encoding = "utf-32"
    else:
        encoding = "utf-16" if data[:2] in (b"\xff\xfe", b"\xfe\xff") else "utf-8-sig"
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as e:
        if b"\x00" in data and encoding == "utf-8-sig":
            raise _not_text(path, data) from None
        hint = (": save it as UTF-8 (iconv -f ENCODING -t utf-8, the ENCODING it was written in: latin1, cp1252, "
                "shift_jis, gbk, ...)") if encoding == "utf-8-sig" else ""
        raise IngestError(f"{path}: not {encoding.upper().removesuffix('-SIG')} text (byte {e.start}){hint}") from None
    if "\x00" in text:  # anywhere: text has no NUL
        raise _not_text(path, data)
    if not text.strip():
        raise IngestError(f"{path}: {EMPTY}")
    return text


def _not_text(path: Path, data: bytes) -> IngestError:
    """A file holding NUL bytes: binary, or UTF-16 saved without its byte-order mark (`_bare_utf16`)."""
    for name in ("utf-16le", "utf-16be"):
        if _bare_utf16(data, name):
            return IngestError(f"{path}: UTF-16 text without a byte-order mark, it seems: save it as UTF-8 "
                               f"(iconv -f {name} -t utf-8)")
    return IngestError(f"{path}: a binary file, not text")


def _bare_utf16(data: bytes, name: str) -> bool:
    """Whether `data` reads as UTF-16 (`name`) of Latin script: a zero byte in each character ("a" is 61 00 in
    UTF-16LE), the other byte not, and printable text."""
    if len(data) < 8 or len(data) % 2:
        return False
    high, low = (data[1::2], data[0::2]) if name == "utf-16le" else (data[0::2], data[1::2])
    text = data.decode(name, "replace")
    return (high.count(0) >= 0.9 * len(high) and low.count(0) <= 0.1 * len(low)
            and sum(c.isprintable() or c.isspace() for c in text) >= 0.9 * len(text))


def _records(path: Path, source: str, text: str, text_field: str, id_field: str, title_field: str) -> list[Document]:
    jsonl = path.suffix.lower() == ".jsonl"
    # JSON Lines: a record a "\n"-ended line (str.splitlines would also cut at U+2028, which JSON strings may hold)
    pieces = text.split("\n") if jsonl else [text]
    rows: list[tuple[str, Any]] = []  # (where: the file's line or the array's record, from 1; the record)
    for number, piece in enumerate(pieces):
        if not piece.strip():
            continue
        try:
            loaded = json.loads(piece)
        except json.JSONDecodeError as e:  # a JSONL record is parsed alone: its line 1 is the file's number + 1
            raise IngestError(f"{path}: invalid JSON at line {number + e.lineno}, column {e.colno} "
                              f"({e.msg})") from None
        if jsonl:
            rows.append((f"line {number + 1}", loaded))
        else:
            rows.extend((f"record {i + 1}", r) for i, r in enumerate(loaded if isinstance(loaded, list) else [loaded]))
    docs = []
    for i, (where, row) in enumerate(rows):
        if not isinstance(row, dict):
            raise IngestError(f"{path}: {where} is not a JSON object (a record holds {text_field!r} and its fields)")
        if not isinstance(row.get(text_field), str):
            raise IngestError(f"{path}: {where} has no string field {text_field!r}")
        if not clean_text(row[text_field]).strip():
            raise IngestError(f"{path}: {where} has an empty {text_field!r}")
        given = row.get(id_field)
        if not_an_id(given) or given == "":
            raise IngestError(f"{path}: {where}: the id {id_field!r} must be a string or a number, "
                              f"not {json.dumps(given)}")
        try:
            check_utf8(row)
        except ValueError as e:
            raise IngestError(f"{path}: {where}: {e}") from None
        try:
            title = field_text(row.get(title_field))
        except ValueError as e:  # a list or an object
            raise IngestError(f"{path}: {where}: the title {title_field!r} {e}") from None
        doc_id = str(given) if given is not None else f"{source}#{i}"
        metadata = merged_metadata(row, (text_field, id_field, title_field), strict=False)
        docs.append(Document(doc_id, row[text_field], source, title, metadata))
    if not docs:
        raise IngestError(f"{path}: {NO_RECORDS}")
    return docs


def _read_pdf(path: Path) -> str:
    try:
        from pypdf import PdfReader
    except ImportError:
        raise IngestError(f"{path}: PDF support needs the pdf extra: pip install 'mrag[pdf]'") from None
    logger = logging.getLogger("pypdf")
    level = logger.level
    logger.setLevel(logging.ERROR)  # its warnings on a broken file went to stderr before our one line
    try:
        return "\n\n".join(page.extract_text() or "" for page in PdfReader(path).pages)
    except Exception as e:  # pypdf raises many types on broken files
        raise IngestError(f"{path}: unreadable PDF ({e})") from None
    finally:
        logger.setLevel(level)
