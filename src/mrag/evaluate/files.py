"""Reading benchmark files: text (plain or compressed, UTF-8), JSON, JSON Lines records and qrels.

Every mistake in a file is a one-line ValueError naming the file, the line (or record) and what to do.
"""

from __future__ import annotations

import bz2
import codecs
import gzip
import json
import lzma
from pathlib import Path
from typing import Any

QRELS_FORMATS = ("'query-id<TAB>corpus-id<TAB>score' (BEIR, a header line allowed) "
                 "or 'query-id iteration doc-id grade' (TREC)")


def open_text(path: Path) -> str:
    """A text file, plain or compressed (.bz2, .gz, .xz), in UTF-8 (a byte-order mark dropped, CRLF read as LF)."""
    opener = {".bz2": bz2.open, ".gz": gzip.open, ".xz": lzma.open}.get(path.suffix, open)
    with opener(path, "rb") as f:  # type: ignore[operator]
        return decode(f.read(), str(path))


def parse_json(path: Path) -> Any:
    """A whole-file JSON document."""
    return loads(open_text(path), str(path))


def loads(text: str, where: str) -> Any:
    """JSON text, an error naming `where` (a file) and the line."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: invalid JSON at line {e.lineno} ({e.msg}): fix the file") from None


def decode(data: bytes, where: str) -> str:
    """UTF-8 bytes as text, a byte-order mark dropped and CRLF line ends read as LF."""
    data = data.removeprefix(codecs.BOM_UTF8)
    try:
        return data.decode("utf-8").replace("\r\n", "\n")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ValueError(f"{where}: not UTF-8 text (line {line}, byte {e.start}): save it as UTF-8") from None


def json_lines(text: str) -> list[str]:
    """The records of a JSON Lines text: its non-blank "\\n"-ended lines (str.splitlines would also cut at
    U+2028 and U+0085, which a JSON string written with ensure_ascii=False holds as they are)."""
    return [line for line in text.split("\n") if line.strip()]


def jsonl_records(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number in the file, record) for every non-blank line of a JSON Lines file."""
    records = []
    for number, line in enumerate(open_text(path).split("\n"), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: invalid JSON at line {number} ({e.msg}): fix or remove the line") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}: line {number} is not a JSON object: each line must be one record {{...}}")
        records.append((number, record))
    return records


def required(record: dict[str, Any], key: str, where: str) -> Any:
    """record[key], or an error saying where the field is missing (`where`: 'file: line 3')."""
    if key not in record:
        raise ValueError(f"{where} has no {key!r} field: every record needs one")
    return record[key]


def text_field(record: dict[str, Any], key: str, where: str) -> str:
    """A required text field; an empty one is returned as it is (the caller skips it)."""
    value = required(record, key, where)
    if not isinstance(value, str):
        raise ValueError(f"{where}: {key!r} is {type(value).__name__}, not text: write it as a JSON string")
    return value


def grade(field: str, where: str) -> int:
    """A relevance grade: an integer, written as one ("2") or as an integral float ("2.0")."""
    try:
        value = float(field)
    except ValueError:
        raise ValueError(f"{where}: grade {field!r} is not a number: qrels lines are {QRELS_FORMATS}") from None
    if not value.is_integer():
        raise ValueError(f"{where}: grade {field!r} is not a whole number: qrels grades are integers "
                         "(0 = not relevant)")
    return int(value)


def is_number(field: str) -> bool:
    try:
        float(field)
    except ValueError:
        return False
    return True


def read_qrels(path: Path) -> dict[str, dict[str, int]]:
    """query -> relevant document -> grade (> 0). Columns split at tabs, or at spaces in a file with no tab;
    3 columns are BEIR's (query, document, grade), 4 TREC's (query, iteration, document, grade); every line
    of a file has the same count."""
    lines = [(n, line) for n, line in enumerate(open_text(path).split("\n"), 1) if line.strip()]
    by_tab = any("\t" in line for _, line in lines)
    rows = [(n, [c.strip() for c in line.split("\t")] if by_tab else line.split()) for n, line in lines]
    if rows and not is_number(rows[0][1][-1]):
        rows = rows[1:]  # the header ("query-id corpus-id score")
    qrels: dict[str, dict[str, int]] = {}
    columns = len(rows[0][1]) if rows else 3
    for n, parts in rows:
        if len(parts) != columns or columns not in (3, 4):
            raise ValueError(f"{path}: line {n} has {len(parts)} columns (line {rows[0][0]}: {columns}): "
                             f"qrels lines are {QRELS_FORMATS}")
        query, document = parts[0], parts[1 if columns == 3 else 2]
        g = grade(parts[-1], f"{path}: line {n}")
        if g > 0:
            qrels.setdefault(query, {})[document] = g
    return qrels
