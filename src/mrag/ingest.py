"""Turn files and folders into documents: .txt, .md, .html, .json/.jsonl records, and PDF.

Files named explicitly must be readable, or reading fails with a clear error before anything is
written. Files found while walking a folder are skipped with a reason when they cannot be read
(binary, not UTF-8, empty, unsupported), and the reasons are reported.
"""

from __future__ import annotations

import datetime
import hashlib
import html.parser
import json
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

TEXT_SUFFIXES = {".txt", ".md", ".markdown", ".rst"}
HTML_SUFFIXES = {".html", ".htm"}
RECORD_SUFFIXES = {".json", ".jsonl"}
SUFFIXES = TEXT_SUFFIXES | HTML_SUFFIXES | RECORD_SUFFIXES | {".pdf"}


NOT_IDS = (bool, list, dict)  # values whose text is no one's id (str(True), str([1])): refused as ids
EMPTY, NO_RECORDS = "the file is empty", "no records"  # why a file holds no document (`mrag.sync`)


def field_text(value: Any) -> str:
    """A title's or a source's text: none for null, false, NaN or infinity; a number as its text (0 -> "0")."""
    if value is None or value is False or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    return str(value)


def not_an_id(given: Any) -> bool:
    """A value whose text is no one's id: a boolean, list or object (str(True), str([1])), NaN or infinity."""
    return isinstance(given, NOT_IDS) or (isinstance(given, float) and not math.isfinite(given))


class IngestError(ValueError):
    """A file that was asked for by name cannot be indexed."""


@dataclass
class Document:
    id: str
    text: str
    source: str
    title: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    # its file as `read_file` found it before reading (`file_stamp`): a write leaves the file's documents
    # as committed when it changed since and another run wrote one of them meanwhile (`mrag.sync`)
    stamp: tuple[int, int, int] | None = field(default=None, compare=False, repr=False)


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
        try:
            docs.extend(read_file(Path(file), text_field, id_field, title_field))
        except IngestError as e:
            reason = unreadable_reason(e, Path(file))
            if explicit and not (empty_ok and reason in (EMPTY, NO_RECORDS)):
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
            out[resolved] = (first[0], first[1] or explicit)
    return list(out.values())


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
        return [_document(source, _read_pdf(path), path.stem)]
    text = _read_text(path)
    if suffix in HTML_SUFFIXES:
        title, body = html_to_text(text)
        return [_document(source, body, title or path.stem)]
    if suffix in RECORD_SUFFIXES:
        return _records(path, source, text, text_field, id_field, title_field)
    return [_document(source, text, path.stem)]


def _document(source: str, text: str, title: str) -> Document:
    if not text.strip():
        raise IngestError(f"{source}: {EMPTY}")
    return Document(id=source, text=text, source=source, title=title)


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
            raise IngestError(f"{path}: a binary file, not text") from None
        raise IngestError(f"{path}: not {encoding.upper().removesuffix('-SIG')} text (byte {e.start})") from None
    if "\x00" in text:  # anywhere: text has no NUL
        raise IngestError(f"{path}: a binary file, not text")
    if not text.strip():
        raise IngestError(f"{path}: {EMPTY}")
    return text


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
        if not row[text_field].strip():
            raise IngestError(f"{path}: {where} has an empty {text_field!r}")
        given = row.get(id_field)
        if not_an_id(given) or given == "":
            raise IngestError(f"{path}: {where}: the id {id_field!r} must be a string or a number, "
                              f"not {json.dumps(given)}")
        doc_id = str(given) if given is not None else f"{source}#{i}"
        metadata = merged_metadata(row, (text_field, id_field, title_field), strict=False)
        docs.append(Document(doc_id, row[text_field], source, field_text(row.get(title_field)), metadata))
    if not docs:
        raise IngestError(f"{path}: {NO_RECORDS}")
    return docs


def _read_pdf(path: Path) -> str:
    try:
        from pypdf import PdfReader
    except ImportError:
        raise IngestError(f"{path}: PDF support needs the pdf extra: pip install 'mrag[pdf]'") from None
    try:
        return "\n\n".join(page.extract_text() or "" for page in PdfReader(path).pages)
    except Exception as e:  # pypdf raises many types on broken files
        raise IngestError(f"{path}: unreadable PDF ({e})") from None


class _HTMLText(html.parser.HTMLParser):
    SKIP = {"script", "style", "noscript", "template", "svg"}  # an icon's <title> is no page title
    # a paragraph break where one of these starts or ends (minified pages put no space between them)
    BLOCK = {"p", "div", "br", "hr", "li", "ul", "ol", "dl", "dt", "dd", "h1", "h2", "h3", "h4", "h5", "h6",
             "table", "thead", "tbody", "tfoot", "tr", "caption", "section", "article", "header", "footer", "nav",
             "main", "aside", "blockquote", "pre", "figure", "figcaption", "address", "details", "summary",
             "form", "fieldset"}
    CELL = {"td", "th"}  # a space between cells

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self.title = ""
        self._stack: list[str] = []

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        self._stack.append(tag)
        self._separate(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in self._stack:
            while self._stack and self._stack.pop() != tag:
                pass
        self._separate(tag)

    def _separate(self, tag: str) -> None:
        if tag in self.BLOCK:
            self.parts.append("\n\n")
        elif tag in self.CELL:
            self.parts.append(" ")

    def handle_data(self, data: str) -> None:
        if self.SKIP & set(self._stack):
            return
        if "title" in self._stack:
            self.title += data.strip()
        else:
            self.parts.append(data)


def html_to_text(markup: str) -> tuple[str, str]:
    """(title, visible text) of an HTML page."""
    parser = _HTMLText()
    parser.feed(markup)
    lines = [" ".join(line.split()) for line in "".join(parser.parts).split("\n\n")]
    return parser.title, "\n\n".join(line for line in lines if line)


def merged_metadata(record: dict[str, Any], named: tuple[str, ...], strict: bool = True) -> dict[str, Any]:
    """A record's metadata: the keys of its "metadata" object (none: null or absent) and its fields other than
    `named` and "metadata", a field winning over a key of the same name. Records files, `Index.add` and the
    server all keep metadata so. {"text": .., "metadata": {"a": 1}, "b": 2} -> {"a": 1, "b": 2}. A "metadata"
    that is not an object is an error (`strict`), or a field like the others (a records file's own data).
    Values are made JSON's (`json_ready`)."""
    given = record.get("metadata")
    if given is not None and not isinstance(given, dict):
        if strict:
            raise ValueError(f"metadata must be an object (a dict), got {type(given).__name__}")
        given = {"metadata": given}
    fields = {k: v for k, v in record.items() if k not in named and k != "metadata"}
    return json_ready({**(given or {}), **fields})  # type: ignore[no-any-return]


def json_ready(value: Any) -> Any:
    """A metadata value as JSON holds it, however deep in lists and dicts: NaN and infinities as null (pandas'
    missing values), numpy scalars and arrays as numbers and lists, tuples and sets as lists, dates and
    times in ISO 8601; bytes are refused (no text of their own); other objects (Decimal, UUID, Path) as
    their text.  {"n": np.int64(3), "on": date(2026, 1, 2), "tags": {"b", "a"}} -> {"n": 3, "on":
    "2026-01-02", "tags": ["a", "b"]}"""
    if isinstance(value, np.generic | np.ndarray):
        value = value.tolist()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, str | int):
        return value
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, set | frozenset):
        items = [json_ready(v) for v in value]
        try:
            return sorted(items)
        except TypeError:
            return sorted(items, key=lambda v: json.dumps(v, sort_keys=True))  # mixed kinds: a stable order
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        raise ValueError("a metadata value is bytes, which JSON cannot hold: decode it to text first")
    return str(value)


def as_document(doc: Document | dict[str, Any] | str, i: int) -> Document:
    if isinstance(doc, Document):
        d = doc
    elif isinstance(doc, str):
        d = Document(id=hashlib.sha256(doc.encode()).hexdigest()[:16], text=doc, source="")
    elif isinstance(doc, dict):
        if not isinstance(doc.get("text"), str):
            raise ValueError(f"document {i} has no string 'text'")
        try:
            metadata = merged_metadata(doc, ("id", "text", "source", "title"))
        except ValueError as e:
            raise ValueError(f"document {i}: {e}") from None
        given = doc.get("id")  # 0 is an id; None or "": a hash of the text
        if not_an_id(given):  # as in a records file
            raise ValueError(f"document {i}: the id must be a string or a number, not {json.dumps(given)}")
        d = Document(
            id=str(given) if given not in (None, "") else hashlib.sha256(doc["text"].encode()).hexdigest()[:16],
            text=doc["text"],
            source=field_text(doc.get("source")),
            title=field_text(doc.get("title")),
            metadata=metadata,
        )
    else:
        raise TypeError(f"document {i}: expected Document, dict or str, got {type(doc).__name__}")
    if not d.text.strip():
        raise ValueError(f"document {d.id!r} is empty")
    return d


# a document's digest (its rows' doc_hash) with this prefix: the library or the server wrote it, and it never
# follows a file whatever its source ...
ADDED = "added:"
# ... and this digest (after the prefix, if any) marks a document some of whose chunks were deleted: its next
# write, unchanged or not, writes it whole again
PARTIAL = "partial"


def document_digest(doc: Document, added: bool = False) -> str:
    """What decides whether a document changed: its text, title, source and metadata; `added`: written by the
    library or the server, not by indexing files."""
    payload = json.dumps([doc.text, doc.title, doc.source, doc.metadata], sort_keys=True, default=str)
    return (ADDED if added else "") + hashlib.sha256(payload.encode()).hexdigest()


def same_content(stored: str | None, digest: str) -> bool:
    """Whether a document whose digest is `digest` is unchanged against the stored one: the same digest, or the
    library's of a document indexing files wrote (or that an index written before `ADDED` holds). A file's
    record of a document the library added is written again, so that it follows its file from then on."""
    return stored == digest or (digest.startswith(ADDED) and stored == digest.removeprefix(ADDED))


def added(stored: str | None) -> bool:
    """Whether a stored digest says the library or the server wrote the document (`ADDED`)."""
    return (stored or "").startswith(ADDED)


def partial(stored: str | None) -> bool:
    """Whether a stored digest marks a document some of whose chunks were deleted (`PARTIAL`)."""
    return stored is not None and stored.removeprefix(ADDED) == PARTIAL


def made_partial(stored: str | None) -> str:
    """The digest of a document once some of its chunks are deleted: `PARTIAL`, the library's mark kept."""
    return (ADDED if added(stored) else "") + PARTIAL
