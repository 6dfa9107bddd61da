"""Input that no file, model or table takes: a file name or an argument that is not UTF-8, a record holding a
lone surrogate, NaN or an infinity where a number is asked for. A clear error (or the file skipped and listed),
and nothing written."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner
from conftest import FakeEmbedder

from mrag.cli import cli
from mrag.cli_common import json_line, one_line
from mrag.index import Index
from mrag.ingest import NOT_UTF8_NAME, IngestError, read_paths


def bad_name(folder) -> str:
    """A file in `folder` whose name is the bytes b"bad\\xff.txt" (not UTF-8), as Python names it."""
    path = os.path.join(os.fsencode(folder), b"bad\xff.txt")
    with open(path, "wb") as handle:
        handle.write(b"A note about glaciers.")
    return os.fsdecode(path)


def test_a_file_name_that_is_not_utf8_is_skipped_in_a_folder_and_refused_named(tmp_path):
    """It failed the whole folder's run with "'utf-8' codec can't encode character '\\udcff'", naming no file."""
    (tmp_path / "good.txt").write_text("A note about bees.")
    named = bad_name(tmp_path)
    docs, skipped = read_paths([tmp_path])
    assert [d.text for d in docs] == ["A note about bees."]
    assert [(s.source, s.reason) for s in skipped] == [(f"{tmp_path}/bad\ufffd.txt", NOT_UTF8_NAME)]
    with pytest.raises(IngestError, match="bad\ufffd.txt: its name is not UTF-8"):
        read_paths([named])
    index = Index.open(tmp_path / "db", embedder=FakeEmbedder())
    report = index.add_paths([tmp_path])
    assert report.chunks == 1 and [s.reason for s in report.skipped] == [NOT_UTF8_NAME]


def test_a_record_holding_a_lone_surrogate_is_refused_naming_its_line(tmp_path):
    (tmp_path / "good.txt").write_text("A note about bees.")
    records = tmp_path / "recs.jsonl"
    records.write_text('{"id": "a", "text": "fine"}\n{"id": "b", "text": "bad \\ud800 text"}\n')
    _, skipped = read_paths([tmp_path])  # in a folder: skipped, and the folder's other files indexed
    assert [s.reason for s in skipped] == ["line 2: text holds an unpaired surrogate (U+D800) at character 4: "
                                           "not text UTF-8 can hold"]
    with pytest.raises(IngestError, match="recs.jsonl: line 2: text holds an unpaired surrogate"):
        read_paths([records])
    records.write_text('{"id": "c", "text": "fine", "tags": {"\\udfff": 1}}\n')
    with pytest.raises(IngestError, match="line 1: the key tags.'.udfff' holds an unpaired surrogate"):
        read_paths([records])


def test_queries_and_ids_that_are_not_utf8_are_refused(index):
    index.add([{"id": "bees", "text": "Honeybees fan their wings."}])
    with pytest.raises(ValueError, match=r"the query holds an unpaired surrogate .* \(the byte 0xFF, not UTF-8"):
        index.search("\udcff roman", k=1)  # an argument's byte 0xff, as Python decodes it
    with pytest.raises(ValueError, match="holds an unpaired surrogate"):
        index.delete(["/x/\udcff"])
    with pytest.raises(ValueError, match="document 0: its metadata"):
        index.add([{"id": "m", "text": "fine", "metadata": {"lang": "\ud800"}}])
    assert [r["doc_id"] for r in index.store.rows().to_pylist()] == ["bees"]


@pytest.mark.parametrize("args", [["optimize", "--keep-versions", "inf", "--db", "db"],
                                  ["optimize", "--keep-versions", "nan", "--db", "db"],
                                  ["optimize", "--keep-versions", "1e400", "--db", "db"],
                                  ["bench", "docs", "--max-similarity", "nan"]])
def test_non_finite_numbers_are_a_usage_error(args):
    """`--keep-versions inf` printed an OverflowError's traceback; `--max-similarity nan` turned the check off
    and wrote NaN into bench.json."""
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2 and "is not a finite number" in result.output, result.output


def test_demo_refuses_its_strategy_before_indexing(tmp_path):
    for strategy, message in (("bogus", "unknown strategy 'bogus'"), ("fusion", "fuses sub-queries")):
        result = CliRunner().invoke(cli, ["demo", "-s", strategy, "--db", str(tmp_path / "db")])
        assert result.exit_code != 0 and message in result.output
    assert not (tmp_path / "db").exists()


def test_plain_names_stay_on_one_line():
    assert one_line("/notes/a\nb.txt#0") == "/notes/a b.txt#0" and one_line("plain") == "plain"
    assert json.loads(json.dumps(one_line("x\r\ny"))) == "x y"
    # a document's carriage returns overwrote the line on a terminal; its escape sequences reached the terminal
    assert one_line("list\r apples\r pears") == "list  apples  pears" and one_line("a\x1b[31mred\x07") == "a [31mred "


def test_json_lines_split_by_unicode_line_rules_stay_whole():
    """U+2028, U+2029 and U+0085 from a document came out raw: a reader splitting by `str.splitlines` cut one
    hit's line in two, neither part JSON."""
    line = json_line({"text": "one\u2028two\u2029three\x85four", "title": "Zürich"})
    assert line.splitlines() == [line] and json.loads(line)["text"] == "one\u2028two\u2029three\x85four"
    assert "Zürich" in line  # non-ASCII text stays as it is


def test_a_question_that_is_not_utf8_is_refused_before_an_llm_is_asked(index):
    from mrag.generate import prepare

    class Unasked:
        def complete(self, *args, **kwargs):
            raise AssertionError("the LLM was asked")

        stream = complete

    index.add([{"id": "bees", "text": "Honeybees fan their wings."}])
    with pytest.raises(ValueError, match="the question holds an unpaired surrogate"):
        prepare(index, "\udcff bees", k=1, strategy="fusion", generator=Unasked())


def test_ctrl_c_exits_with_the_shells_status_130(tmp_path):
    """A real SIGINT while a command runs: click's "Aborted!" exited 1, the status of an error; shells and
    schedulers read 130 as interrupted."""
    Index.open(tmp_path / "db", embedder=FakeEmbedder()).add(["bees"])
    script = ("import os, signal, sys\n"
              "import mrag.index\n"
              "mrag.index.Index.open = lambda *a, **k: os.kill(os.getpid(), signal.SIGINT)\n"
              "from mrag.cli import main\n"
              f"sys.argv = ['mrag', 'info', '--db', {str(tmp_path / 'db')!r}]\n"
              "main()\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 130, done.stderr
    assert "interrupted" in done.stderr and "Traceback" not in done.stderr
