"""Documents: what a document is (`Document`), how a record or a dict becomes one (`as_document`,
`merged_metadata`: its metadata as JSON holds it, `json_ready`), and its digest, which tells whether it
changed since it was written (`document_digest`). `mrag.ingest` reads them from files.
"""

from __future__ import annotations

import datetime
import decimal
import hashlib
import json
import math
import numbers
import unicodedata
from dataclasses import dataclass, field
from typing import Any

import numpy as np

NOT_IDS = (bool, list, dict)  # values whose text is no one's id (str(True), str([1])): refused as ids
# invisible characters that cut a word for the full-text space: soft hyphen, zero-width space, word joiner, and a
# byte-order mark inside the text (zero-width joiners stay: emoji sequences and some scripts' spelling need them)
INVISIBLE = dict.fromkeys(map(ord, "\u00ad\u200b\u2060\ufeff"))


def clean_text(text: str) -> str:
    """A document's or a query's text as it is indexed and searched: Unicode's composed form (NFC: macOS file
    names and PDFs often give "u" + a combining diaeresis for "ü", which the full-text space cut in two and no
    query typed as "ü" found) and no invisible characters that cut words (`INVISIBLE`)."""
    if text.isascii():
        return text
    text = text.translate(INVISIBLE)
    return text if unicodedata.is_normalized("NFC", text) else unicodedata.normalize("NFC", text)


def check_utf8(value: Any, where: str = "") -> Any:
    """`value` (text, or a JSON value holding text), refused where it holds text UTF-8 cannot hold: JSON's
    "\\ud800" decodes to a lone surrogate, and a file name or an argument that is not UTF-8 to surrogate
    escapes, which no file, model or table takes."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            code = ord(value[e.start])
            byte = (f" (the byte 0x{code - 0xDC00:02X}, not UTF-8: an argument or a name in another encoding?)"
                    if 0xDC80 <= code <= 0xDCFF else "")  # how Python keeps bytes it could not decode
            raise ValueError(f"{where or 'the text'} holds an unpaired surrogate (U+{code:04X}) at "
                             f"character {e.start}: not text UTF-8 can hold{byte}") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            check_utf8(key, f"the key {where + '.' if where else ''}{key!r}")
            check_utf8(item, f"{where + '.' if where else ''}{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            check_utf8(item, f"{where}[{i}]")
    return value


def shown(text: str) -> str:
    """Text as it can be printed: what UTF-8 cannot hold (a file name's bytes that are not UTF-8) as U+FFFD."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def field_text(value: Any) -> str:
    """A title's or a source's text: none for null, a boolean, NaN or infinity; a number as its text (0 -> "0").
    Anything else is refused (a list's Python repr was the title)."""
    if value is None or isinstance(value, (bool, np.bool_)):
        return ""
    if isinstance(value, numbers.Integral):  # numpy's too; any size
        return str(int(value))
    if isinstance(value, (numbers.Real, decimal.Decimal)):  # a database's NUMERIC is a Decimal
        finite = value.is_finite() if isinstance(value, decimal.Decimal) else _finite(value)
        return str(value) if finite else ""
    if not isinstance(value, str):
        raise ValueError(f"must be text or a number, not {repr(value)[:80]}")
    return str(value)


def _finite(value: numbers.Real) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # a Fraction past a float's range is a number all the same
        return True


def not_an_id(given: Any) -> bool:
    """A value whose text is no one's id: a boolean, list or object (str(True), str([1])), NaN or infinity."""
    return isinstance(given, NOT_IDS) or (isinstance(given, float) and not math.isfinite(given))


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

    # its text and title as given, where they changed form here (`clean_text`): an index written before this
    # cleaning holds their digest, and `Index.add` writes such a document again rather than refusing it as changed
    given: tuple[str, str] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:  # the text and title as indexed and searched (a file's path is left alone)
        given = (self.text, self.title)
        if isinstance(self.text, str):
            self.text = clean_text(self.text)
        if isinstance(self.title, str):
            self.title = clean_text(self.title)
        if self.given is None and given != (self.text, self.title):
            self.given = given


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
    their text; keys as text, as JSON writes them.  {"n": np.int64(3), "on": date(2026, 1, 2), "tags": {"b", "a"},
    1: None} -> {"n": 3, "on": "2026-01-02", "tags": ["a", "b"], "1": None}"""
    if isinstance(value, np.generic | np.ndarray) and value.dtype.kind in "mM":  # numpy dates (pandas'), durations
        value = (np.datetime_as_string(value) if value.dtype.kind == "M" else value.astype(str)).tolist()  # type: ignore[arg-type]
    if isinstance(value, np.generic | np.ndarray):
        value = value.tolist()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, str | int):
        return value
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            text = json_key(key)
            if text in out:  # {1: ..., "1": ...}: one would be lost in silence
                raise ValueError(f"two metadata keys are both {text!r} as JSON text ({key!r} and another): rename one")
            out[text] = json_ready(item)
        return out
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


def json_key(key: Any) -> str:
    """A mapping key as text, as `json.dumps` writes it (1 -> "1", None -> "null", True -> "true"); a date's or a
    time's in ISO 8601 (YAML's `2024-01-02:` key is a date)."""
    if isinstance(key, np.generic):
        key = key.item()
    if isinstance(key, str):
        return key
    if key is None or isinstance(key, bool | int | float):
        return json.dumps(key)
    if isinstance(key, datetime.date | datetime.time):
        return key.isoformat()
    return str(key)


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
        named = {}
        for field in ("source", "title"):
            try:
                named[field] = field_text(doc.get(field))
            except ValueError as e:
                raise ValueError(f"document {i}: its {field} {e}") from None
        source, title = named["source"], named["title"]
        d = Document(
            id=str(given) if given not in (None, "") else hashlib.sha256(doc["text"].encode()).hexdigest()[:16],
            text=doc["text"],
            source=source,
            title=title,
            metadata=metadata,
        )
    else:
        raise TypeError(f"document {i}: expected Document, dict or str, got {type(doc).__name__}")
    if not d.text.strip():
        raise ValueError(f"document {shown(d.id)!r} is empty")
    for name in ("id", "text", "title", "source", "metadata"):
        check_utf8(getattr(d, name), f"document {i}: its {name}")
    return d


# a document's digest (its rows' doc_hash) with this prefix: the library or the server wrote it, and it never
# follows a file whatever its source ...
ADDED = "added:"
# ... and this digest (after the prefix, if any) marks a document some of whose chunks were deleted: its next
# write, unchanged or not, writes it whole again
PARTIAL = "partial"


def document_digest(doc: Document, added: bool = False, as_given: bool = False) -> str:
    """What decides whether a document changed: its text, title, source and metadata; `added`: written by the
    library or the server, not by indexing files; `as_given`: of its text and title before `clean_text` (the
    digest an older mrag recorded)."""
    text, title = doc.given if as_given and doc.given is not None else (doc.text, doc.title)
    payload = json.dumps([text, title, doc.source, doc.metadata], sort_keys=True, default=str)
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
