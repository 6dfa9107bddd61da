"""The `mrag` command through click's CliRunner, with the real packaged MiniLM on tiny files."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from mrag.cli import cli
from mrag.embed.models import DEFAULT_MODEL
from mrag.scales import brute_force_scales
from mrag.settings import DEFAULT_STRATEGY

FILES = {
    "bees.txt": "Honeybees fan their wings to cool the hive on hot summer days.",
    "rome.txt": "Roman aqueducts carried water downhill into the city by gravity.",
    "chess.md": "Deep Blue, an IBM computer, beat Garry Kasparov at chess in 1997.",
    "tides.txt": "The Moon's gravity pulls the oceans and raises the tides twice a day.",
}
HIT_KEYS = {"id", "score", "text", "source", "title", "doc_id", "position", "metadata"}


def mrag(*args: str, ok: bool = True, **kwargs):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False, **kwargs)
    if ok:
        assert result.exit_code == 0, result.output
    return result


def lines(result) -> list:
    return [json.loads(line) for line in result.stdout.splitlines()]


@pytest.fixture
def corpus(tmp_path) -> Path:
    folder = tmp_path / "corpus"
    folder.mkdir()
    for name, text in FILES.items():
        (folder / name).write_text(text)
    return folder


@pytest.fixture
def db(tmp_path, corpus, reuse_minilm) -> Path:
    """An index of the corpus, built through the CLI."""
    path = tmp_path / "idx"
    assert lines(mrag("index", corpus, "--db", path)) == [
        {"added": 4, "updated": 0, "unchanged": 0, "removed": 0, "chunks": 4, "skipped": []}
    ]
    # MRAG_MODEL unset: the default model, last layer
    assert reuse_minilm == [{"model": None, "layer": -1, "device": "auto", "dtype": "float32"}]
    return path


def source(corpus: Path, name: str) -> str:
    return str((corpus / name).resolve())


def test_every_command_has_help_with_an_example():
    assert "Usage:" in mrag("-h").stdout
    assert set(cli.commands) >= {"index", "search", "heads", "info", "delete", "demo"}
    for name, command in cli.commands.items():
        for flag in ("-h", "--help"):
            out = mrag(name, flag).stdout
            assert out.startswith("Usage: ") and name in out.splitlines()[0]
        assert command.help and f"mrag {name}" in command.help, f"{name} has no example in its docstring"
        # each example stays a line of its own (click re-wraps a paragraph unless a \b line leads it)
        shown = {line.strip() for line in mrag(name, "--help").stdout.splitlines()}
        examples = [line.strip() for line in command.help.splitlines() if line.strip().startswith("mrag ")]
        assert set(examples) <= shown, (name, set(examples) - shown)


def test_every_command_that_prints_takes_json_and_plain():
    """One output convention (`cli_common.output_options`): JSON by default, --plain/-p for people."""
    for name, command in cli.commands.items():
        if name != "serve":  # prints nothing
            assert {"--json", "--plain", "-p"} <= {o for p in command.params for o in p.opts}, name


def test_index_and_search_with_the_real_model(tmp_path, corpus):
    """No shortcuts: the CLI loads MiniLM itself (MRAG_MODEL unset), twice."""
    path = tmp_path / "idx"
    assert lines(mrag("index", corpus, "--db", path)) == [
        {"added": 4, "updated": 0, "unchanged": 0, "removed": 0, "chunks": 4, "skipped": []}
    ]
    hits = lines(mrag("search", "Why do bees fan their wings?", "--db", path, "-k", "2"))
    assert len(hits) == 2 and all(set(h) == HIT_KEYS for h in hits)
    bees = source(corpus, "bees.txt")
    assert hits[0] == {
        "id": bees + "#0", "score": hits[0]["score"], "text": FILES["bees.txt"], "source": bees,
        "title": "bees", "doc_id": bees, "position": 0, "metadata": {},
    }
    assert hits[0]["score"] > hits[1]["score"] > 0


def test_a_bad_exact_precision_is_refused_and_fp32_finds_the_same(db, monkeypatch):
    question = "How did the Romans bring water, and how do bees cool the hive?"
    found = lines(mrag("search", question, "--db", db, "-k", "3", "-s", "mrag"))
    monkeypatch.setenv("MRAG_EXACT_PRECISION", "fp32")
    assert lines(mrag("search", question, "--db", db, "-k", "3", "-s", "mrag")) == found
    monkeypatch.setenv("MRAG_EXACT_PRECISION", "half")
    refused = mrag("search", question, "--db", db, ok=False)
    assert refused.exit_code != 0 and "MRAG_EXACT_PRECISION must be one of bf16, fp32" in refused.output


def test_search_strategies_explain_and_plain(db, corpus):
    for strategy in ("mrag", "standard", "split"):
        hits = lines(mrag("search", "How did the Romans bring water to the city?", "--db", db, "-k", "3",
                          "-s", strategy))
        assert [h["doc_id"] for h in hits][0] == source(corpus, "rome.txt"), strategy
        assert len(hits) == 3 and len({h["id"] for h in hits}) == 3
    two_questions = "Who built the chess computer, and how do bees cool the hive?"
    (hit,) = lines(mrag("search", two_questions, "--db", db, "-k", "1", "--explain"))
    assert set(hit) == HIT_KEYS | {"votes"}
    # the default strategy on two questions: per question, the standard and full-text spaces vote
    assert {v["space"] for v in hit["votes"]} <= {"standard", "bm25"}
    assert sum(v["weight"] for v in hit["votes"]) == pytest.approx(hit["score"])
    # `mrag-bm25`: the 12 heads vote too
    (hit,) = lines(mrag("search", two_questions, "--db", db, "-k", "1", "--explain", "-s", "mrag-bm25"))
    spaces = {v["space"] for v in hit["votes"]}
    assert spaces <= {f"head:{i}" for i in range(12)} | {"standard", "bm25"}
    assert len(spaces - {"standard", "bm25"}) >= 6
    assert sum(v["weight"] for v in hit["votes"]) == pytest.approx(hit["score"])
    # on one short query, the standard vector and the full-text space
    (hit,) = lines(mrag("search", "chess computer", "--db", db, "-k", "1", "--explain"))
    assert [v["space"] for v in hit["votes"]] == ["standard", "bm25"] and hit["doc_id"] == source(corpus, "chess.md")
    plain = mrag("search", "chess computer", "--db", db, "-k", "1", "--plain", "--explain",
                 "-s", "segment+mrag-std").stdout.splitlines()
    assert plain[0].startswith("1. [") and plain[0].endswith(f"chess  ({source(corpus, 'chess.md')}#0)")
    assert plain[1] == "   " + FILES["chess.md"] and plain[2].startswith("   votes: head:")


def test_db_from_the_environment(db):
    hits = lines(mrag("search", "tides and the Moon", "-k", "1", env={"MRAG_DB": str(db)}))
    assert hits[0]["title"] == "tides"


def test_reindexing_unchanged_files_does_nothing(db, corpus):
    assert lines(mrag("index", corpus, "--db", db)) == [
        {"added": 0, "updated": 0, "unchanged": 4, "removed": 0, "chunks": 0, "skipped": []}
    ]
    (corpus / "bees.txt").write_text("Bees dance to show where the flowers are.")
    assert lines(mrag("index", corpus, "--db", db)) == [
        {"added": 0, "updated": 1, "unchanged": 3, "removed": 0, "chunks": 1, "skipped": []}
    ]
    plain = mrag("index", corpus, "--db", db, "--plain").stdout
    assert plain == "added 0, updated 0, unchanged 4, removed 0 documents (0 chunks written)\n"


def test_unreadable_files_in_a_folder_are_listed(tmp_path, corpus, reuse_minilm):
    (corpus / "image.txt").write_bytes(b"\x89PNG\x00\x00\x00")
    (corpus / "empty.md").write_text("\n")
    out = lines(mrag("index", corpus, "--db", tmp_path / "idx"))
    assert out == [{
        "added": 4, "updated": 0, "unchanged": 0, "removed": 0, "chunks": 4,
        "skipped": [
            {"source": str(corpus / "empty.md"), "reason": "the file is empty"},
            {"source": str(corpus / "image.txt"), "reason": "a binary file, not text"},
        ],
    }]


def test_index_warns_of_chunks_the_model_cannot_read_whole(tmp_path, reuse_minilm):
    """MiniLM reads 256 tokens and English: a chunk past that, or in Thai, was embedded in silence (its vector
    saw the chunk's start, or nothing but unknown tokens)."""
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "long.txt").write_text(" ".join(f"Aqueduct number {i} carried water into the city." for i in range(60)))
    (folder / "thai.txt").write_text("มวยไทยเป็นศิลปะการต่อสู้ของประเทศไทย")
    (folder / "bees.txt").write_text("Honeybees fan their wings to cool the hive.")
    out = lines(mrag("index", folder, "--db", tmp_path / "idx", "--chunk-chars", 4000))[0]
    assert out["chunks"] == 3 and out["warnings"] == [
        "1 of 3 chunks are longer than the model reads (256 tokens): their vectors see only their start (a "
        "smaller --chunk-chars, or a model that reads more)",
        "1 of 3 chunks are mostly words the model cannot read (its unknown token): their vectors say little; "
        "index their language with a model that reads it (--model)"]
    (folder / "bees.txt").write_text("Honeybees fan their wings on hot days.")
    plain = mrag("index", folder, "--db", tmp_path / "idx", "--plain")
    assert "warning" not in plain.stderr and "1 chunks written" in plain.stdout  # of this write's chunks only


def test_index_plain_prints_a_skipped_file_on_one_line(tmp_path):
    """A file name holding a line break split its `skipped` line in two (search --plain had one_line already)."""
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "bees.txt").write_text("Honeybees fan their wings to cool the hive.")
    (folder / "bad\nname.txt").write_bytes(b"bin\x00")
    plain = mrag("index", folder, "--db", tmp_path / "idx", "--plain").stdout.splitlines()
    assert plain[1:] == [f"skipped {folder}/bad name.txt: a binary file, not text"]


def test_index_prune_deletes_the_documents_of_deleted_files(db, corpus):
    gone = sorted(corpus.iterdir())[0]
    gone.unlink()
    assert lines(mrag("index", corpus, "--db", db))[0]["removed"] == 0  # kept without --prune
    assert lines(mrag("index", corpus, "--db", db, "--prune"))[0] == {
        "added": 0, "updated": 0, "unchanged": 3, "removed": 1, "chunks": 0, "skipped": []}
    assert json.loads(mrag("info", "--db", db).stdout)["documents"] == 3
    refused = mrag("index", corpus, "--db", db, "--prune", "--ray", ok=False)
    assert refused.exit_code == 2 and "--ray does not prune" in refused.stderr


def test_index_commits_a_long_run_in_parts(tmp_path, corpus, reuse_minilm):
    from mrag.index import Index

    assert lines(mrag("index", corpus, "--db", tmp_path / "parts", "--commit-every", 1))[0]["chunks"] == 4
    assert lines(mrag("index", corpus, "--db", tmp_path / "one", "--commit-every", 0))[0]["chunks"] == 4
    writes = [Index.open(tmp_path / n, create=False).store.manifest.maintenance["writes"] for n in ("parts", "one")]
    assert writes == [4, 1]  # a commit a chunk, and one in all
    assert mrag("index", corpus, "--db", tmp_path / "x", "--commit-every", -1, ok=False).exit_code == 2


def test_ray_options_read_as_a_user_meant_them(tmp_path, corpus):
    took = mrag("index", "--ray", corpus, "--db", tmp_path / "db", ok=False)  # --ray takes the next word
    assert took.exit_code == 2 and "as the cluster's address: put --ray after the paths" in took.stderr
    assert not (tmp_path / "db").exists()
    pytest.importorskip("ray", reason="needs Ray: pip install 'mrag[ray]'")
    (tmp_path / "empty").mkdir()
    plain = mrag("index", tmp_path / "empty", "--db", tmp_path / "db", "--ray", "--plain")  # no file: no Ray
    assert plain.stdout.startswith("added 0, updated 0, unchanged 0, removed 0 documents") and not (
        tmp_path / "db").exists()


def test_clear_errors_for_fusion_a_relative_path_and_tune_without_a_bench(db, corpus, monkeypatch):
    fused = mrag("search", "bees and aqueducts", "--db", db, "-s", "fusion", ok=False)
    assert fused.exit_code == 2 and "use `mrag ask`" in fused.stderr
    monkeypatch.chdir(corpus.parent)
    relative = mrag("delete", "corpus/bees.txt", "--db", db, ok=False)
    assert relative.exit_code == 1 and f"mrag delete {source(corpus, 'bees.txt')}" in relative.stderr
    gone = mrag("delete", "corpus/deleted-since.md", "--db", db, ok=False)  # a file deleted since: --prune too
    assert gone.exit_code == 1 and "absolute path" in gone.stderr and "--prune" in gone.stderr
    assert json.loads(mrag("info", "--db", db).stdout)["documents"] == 4  # nothing deleted
    reset = lines(mrag("tune", "--db", db, "--reset"))[0]
    assert reset == {"default_strategy": DEFAULT_STRATEGY, "source": "built-in"}
    missing = mrag("tune", "--db", db, ok=False)
    assert missing.exit_code == 2 and "Missing option '--bench'" in missing.stderr


def test_heads(db, minilm):
    scales = lines(mrag("heads", "--db", db))[0]
    assert [s["head"] for s in scales] == list(range(12))
    assert all(set(s) == {"head", "scale"} for s in scales)
    expected = brute_force_scales(minilm.embed(list(FILES.values())).heads.astype(np.float64))
    np.testing.assert_allclose([s["scale"] for s in scales], expected, rtol=1e-4)
    plain = mrag("heads", "--db", db, "-p").stdout.splitlines()
    assert len(plain) == 12 and plain[0] == f"head   0  {scales[0]['scale']:.4f}"


def test_info(db, corpus):
    info = json.loads(mrag("info", "--db", db).stdout)
    assert (info["chunks"], info["documents"]) == (4, 4)
    assert {k: info["embedder"][k] for k in ("model", "n_heads", "head_dim", "layer", "pooling")} == {
        "model": DEFAULT_MODEL, "n_heads": 12, "head_dim": 32, "layer": 5, "pooling": "mean",
    }
    assert info["settings"] == {"chunk_chars": 1000, "overlap": 1}
    assert "mrag" in info["strategies"] and "standard" in info["strategies"]
    assert len(mrag("info", "--db", db).stdout.splitlines()) == 1  # JSON, one object per line
    plain = dict(line.split(": ", 1) for line in mrag("info", "--db", db, "--plain").stdout.splitlines())
    assert (plain["chunks"], plain["embedder.n_heads"], plain["settings.overlap"]) == ("4", "12", "1")
    assert plain["strategies"] == ", ".join(info["strategies"])  # a line a fact, for people


def test_delete(db, corpus):
    bees = source(corpus, "bees.txt")
    assert lines(mrag("delete", bees, "--db", db)) == [{"deleted_chunks": 1}]
    hits = lines(mrag("search", "bees", "--db", db, "-k", "4"))
    assert len(hits) == 3 and bees not in {h["doc_id"] for h in hits}
    assert mrag("delete", source(corpus, "rome.txt") + "#0", "--db", db, "-p").stdout == "deleted 1 chunk\n"
    assert json.loads(mrag("info", "--db", db).stdout)["chunks"] == 2


def test_optimize_and_verify(db, corpus):
    for name in ("bees.txt", "rome.txt"):
        mrag("delete", source(corpus, name), "--db", db)
    before = snapshot(db)
    report = lines(mrag("optimize", "--db", db, "--keep-versions", "0"))[0]
    assert report["bytes_after"] < report["bytes_before"]
    assert snapshot(db) == before  # compaction changes no result
    check = lines(mrag("verify", "--db", db))[0]
    assert check["chunks"] == 2 and check["duplicate_ids"] == 0 and check["sums_drift"] < 1e-9
    assert mrag("verify", "--db", db, "--plain").stdout.startswith("2 chunks, 0 duplicate ids, head-scale sums drift")


def test_verify_fails_on_sums_that_drifted(db):
    from mrag.store import Store

    store = Store.open(str(db))
    with store.writing():
        store.sums.heads.norm_sum = store.sums.heads.norm_sum * 1.01  # a lost update would leave sums like these
    result = mrag("verify", "--db", db, ok=False)
    assert result.exit_code == 1 and "fails the check" in result.output


def snapshot(db: Path) -> tuple:
    return (
        mrag("search", "bees and Roman water", "--db", db, "-k", "4", "--explain").stdout,
        mrag("heads", "--db", db).stdout,
        mrag("info", "--db", db).stdout,
    )


BAD = {
    "missing path": (["index", "{tmp}/nowhere"], "Error: no such file or folder: {tmp}/nowhere"),
    "binary file": (["index", "{tmp}/blob.txt"], "Error: {tmp}/blob.txt: a binary file, not text"),
    "non-utf8 file": (["index", "{tmp}/latin.txt"], "Error: {tmp}/latin.txt: not UTF-8 text (byte 0)"),
    "empty query": (["search", ""], "Error: the query is empty"),
    "blank query": (["search", "  \n"], "Error: the query is empty"),
    "unknown id": (["delete", "nope"], "Error: unknown id(s), nothing deleted: nope"),
    "other model": (["index", "{tmp}/corpus", "-m", "some/other-model"],
                    f"Error: the index at {{db}} was built with {DEFAULT_MODEL}, not some/other-model"),
    "other layer": (["index", "{tmp}/corpus", "--layer", "2"], "Error: the index at {db} holds layer 5, not 2"),
    "other pooling": (["index", "{tmp}/corpus", "--pooling", "cls"],
                      "Error: the index at {db} was built with pooling='mean', not 'cls'"),
    "ann search without ann": (["search", "bees", "--ann"], "Error: this index has no ANN index: build one"),
}


@pytest.mark.parametrize("args", [["search", "bees", "-s", "best"], ["search", "bees", "-s", "fusion"],
                                  ["ask", "bees", "-s", "best"], ["ask", "bees", "-s", "fusion", "--no-generate"]])
def test_a_strategy_a_command_cannot_run_is_a_usage_error(db, args):
    """Exit 2, as a bad option is (an unknown one was 1, `search -s fusion` 2, `ask -s fusion --no-generate` 1)."""
    before = snapshot(db)
    result = mrag(*args, "--db", db, ok=False)
    assert result.exit_code == 2 and result.stdout == ""
    assert "Error: unknown strategy 'best'; choose one of" in result.stderr or "LLM" in result.stderr
    assert snapshot(db) == before


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_fails_with_one_line_and_changes_nothing(db, tmp_path, corpus, case):
    (tmp_path / "blob.txt").write_bytes(b"GIF89a\x00\x01")
    (tmp_path / "latin.txt").write_bytes("été".encode("latin-1"))
    (corpus / "new.txt").write_text("A new file that must not be indexed by a refused command.")
    before = snapshot(db)
    args, message = BAD[case]
    result = mrag(*[a.format(tmp=tmp_path) for a in args], "--db", db, ok=False)
    assert result.exit_code == 1
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith(message.format(tmp=tmp_path, db=db))
    assert snapshot(db) == before


@pytest.mark.parametrize("args", [["search", "bees", "-k", "0"], ["search", "bees", "-c", "0"],
                                  ["index", "{tmp}/corpus", "--chunk-chars", "0"],
                                  ["index", "{tmp}/corpus", "--overlap", "-1"]])
def test_option_values_out_of_range_are_usage_errors(db, tmp_path, corpus, args):
    (corpus / "new.txt").write_text("A new file that must not be indexed by a refused command.")
    before = snapshot(db)
    result = mrag(*[a.format(tmp=tmp_path) for a in args], "--db", db, ok=False)
    assert result.exit_code == 2 and "is not in the range" in result.stderr and result.stdout == ""
    assert snapshot(db) == before


def test_ann_indexes_from_the_command_line(db):
    query = ["search", "How do bees cool the hive? Who built aqueducts?", "--db", db, "-s", "mrag-std"]
    exact = [h["id"] for h in lines(mrag(*query, "--exact"))]
    built = lines(mrag("index", "--build-ann", "--db", db))[0]["ann"]
    assert built == {"index_type": "IVF_FLAT", "rows": 4, "nprobes": 60}
    assert json.loads(mrag("info", "--db", db).stdout)["ann"] == built
    assert [h["id"] for h in lines(mrag(*query, "--ann"))] == exact  # 2 partitions, both probed
    assert [h["id"] for h in lines(mrag(*query))] == exact  # ANN is the default once built


def test_hnsw_graphs_from_the_command_line(db):
    query = ["search", "How do bees cool the hive? Who built aqueducts?", "--db", db]
    exact = [h["id"] for h in lines(mrag(*query, "--exact"))]
    built = lines(mrag("index", "--build-ann", "--ann-index", "HNSW", "--db", db))[0]["ann"]
    assert built == {"index_type": "HNSW", "rows": 4, "nprobes": 128}
    assert [h["id"] for h in lines(mrag(*query))] == exact  # 4 rows: the walk reaches them all
    assert [h["id"] for h in lines(mrag(*query, "--nprobes", "8"))] == exact
    assert (Path(db) / "graphs").is_dir()
    only = lines(mrag("index", "--build-ann", "--ann-index", "HNSW", "--ann-spaces", "standard", "--db", db))[0]
    assert only["ann"] == {**built, "spaces": ["standard"]}
    assert [h["id"] for h in lines(mrag(*query))] == exact
    refused = mrag("index", "--build-ann", "--ann-spaces", "standard", "--db", db, ok=False)
    assert refused.exit_code == 2 and "--ann-index HNSW" in refused.stderr


def test_ann_indexes_built_automatically_past_the_threshold(tmp_path, corpus, reuse_minilm):
    first = lines(mrag("index", corpus, "--db", tmp_path / "i", "--ann-threshold", "3"))[0]
    assert first["ann"]["rows"] == 4
    again = lines(mrag("index", corpus, "--db", tmp_path / "i", "--ann-threshold", "3"))[0]
    assert "ann" not in again  # nothing new: no rebuild
    assert "ann" not in lines(mrag("index", corpus, "--db", tmp_path / "j"))[0]  # 4 chunks: below the default


def test_bad_ann_options_are_refused_before_anything_is_written(tmp_path, corpus):
    for option in (["--ann-nprobes", "0"], ["--ann-threshold", "-1"]):
        result = mrag("index", corpus, "--db", tmp_path / "i", "--build-ann", *option, ok=False)
        assert result.exit_code == 2 and "Invalid value" in result.stderr
    assert not (tmp_path / "i").exists()
    assert mrag("search", "bees", "--db", tmp_path / "i", "--nprobes", "0", ok=False).exit_code == 2


def test_build_ann_needs_an_existing_index(tmp_path):
    result = mrag("index", "--build-ann", "--db", tmp_path / "typo", ok=False)
    assert result.exit_code == 1 and result.stderr.startswith(f"Error: no mrag index at {tmp_path / 'typo'}")
    assert not (tmp_path / "typo").exists()


def test_search_without_an_index(tmp_path):
    result = mrag("search", "bees", "--db", tmp_path / "typo", ok=False)
    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: no mrag index at {tmp_path / 'typo'}")
    assert not (tmp_path / "typo").exists()


def test_a_folder_that_is_no_index_is_told_so_even_with_a_link_loop_in_it(tmp_path):
    """--db given the documents' folder by mistake: LanceDB's listing walked it and failed on the loop, and
    the message said the index was damaged (restore it from a backup)."""
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "a").symlink_to("b")
    (folder / "b").symlink_to("a")
    for command in (["search", "bees"], ["info"]):
        result = mrag(*command, "--db", folder, ok=False)
        assert result.exit_code == 1 and result.stderr.startswith(f"Error: no mrag index at {folder}"), result.stderr


def test_missing_arguments_are_usage_errors(db):
    assert mrag("index", "--db", db, ok=False).exit_code == 2
    assert mrag("search", "bees", ok=False).exit_code == 2  # no --db and no MRAG_DB
    assert mrag("delete", "--db", db, ok=False).exit_code == 2


@pytest.mark.slow
def test_demo_json(tmp_path):
    from mrag.demo import demo_questions

    result = mrag("demo", "--json", "--db", tmp_path / "demo")
    rows = lines(result)
    questions = demo_questions()
    assert len(rows) == len(questions) == 5
    for row, q in zip(rows, questions):
        assert set(row) == {"question", "expected", "standard", DEFAULT_STRATEGY}
        assert (row["question"], row["expected"]) == (q["question"], q["expected"])
        for strategy in ("standard", DEFAULT_STRATEGY):
            assert len(row[strategy]) == 4 and all(set(h) == HIT_KEYS | {"votes"} for h in row[strategy])
    # the bundled corpus is easy: standard search finds most expected documents in its top 4
    found = sum(len(set(r["expected"]) & {h["doc_id"] for h in r["standard"]}) for r in rows)
    assert found >= 0.5 * sum(len(r["expected"]) for r in rows)
    # a second run on the same folder re-embeds nothing and answers the same
    assert lines(mrag("demo", "--json", "--db", tmp_path / "demo")) == rows


def test_demo_refuses_an_index_of_other_documents(tmp_path, reuse_minilm):
    db = tmp_path / "mine"
    (tmp_path / "note.txt").write_text("My own note on tides.")
    mrag("index", tmp_path / "note.txt", "--db", db)
    before = snapshot(db)
    result = mrag("demo", "--db", db, ok=False)
    assert result.exit_code == 1 and "holds documents other than the demo's (1, e.g. " in result.stderr
    assert snapshot(db) == before


@pytest.mark.slow
def test_demo_text_in_a_temporary_folder(reuse_minilm):
    out = mrag("demo", "-k", "3").stdout
    assert out.startswith("Indexed 75 chunks from 75 sample documents into ")
    assert out.count("\nQ: ") == 5 and out.count("(* = a document the question asks about)") == 5
    assert "Expected documents found in the top 3: standard " in out.splitlines()[-1]
    folder = out.split(" into ", 1)[1].split(" (", 1)[0]
    assert not Path(folder).exists()  # the temporary index is removed


def test_serve_passes_its_warm_up_choice_to_the_app(tmp_path, corpus, monkeypatch):
    import uvicorn

    from mrag import server

    mrag("index", corpus, "--db", tmp_path / "idx")
    given = []
    monkeypatch.setattr(server, "create_app", lambda settings: given.append(settings.warm))
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: None)
    mrag("serve", "--db", tmp_path / "idx")
    mrag("serve", "--db", tmp_path / "idx", "--no-warm")
    assert given == [True, False]


def test_drop_ann_goes_back_to_exact_search(tmp_path, corpus, reuse_minilm):
    db = tmp_path / "i"
    built = lines(mrag("index", corpus, "--db", db, "--build-ann"))[0]["ann"]
    query = ("search", "Why do bees fan their wings?", "--db", db, "-k", "3")
    exact = [h["id"] for h in lines(mrag(*query, "--exact"))]
    assert lines(mrag("index", "--drop-ann", "--db", db))[0]["ann_dropped"] == built
    assert [h["id"] for h in lines(mrag(*query))] == exact
    assert mrag("index", "--drop-ann", "--db", db, "-p").stdout.strip().endswith("no ANN indexes to drop")
    refused = mrag("index", "--drop-ann", "--build-ann", "--db", db, ok=False)
    assert refused.exit_code == 2 and "contradict" in refused.stderr
    missing = mrag("index", "--drop-ann", "--db", tmp_path / "typo", ok=False)
    assert missing.exit_code == 1 and "no mrag index" in missing.stderr and not (tmp_path / "typo").exists()


def test_output_to_a_closed_pipe_ends_quietly(db):
    """`mrag heads | head -0`: the reader is gone before mrag writes; no error message, no traceback."""
    import subprocess
    import sys

    command = [sys.executable, "-c", "from mrag.cli import main; main()", "heads", "--db", str(db)]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert child.stdout is not None and child.stderr is not None
    child.stdout.close()  # the reader leaves at once
    err = child.stderr.read().decode()
    assert child.wait(timeout=120) != 0
    assert "Traceback" not in err and "Broken pipe" not in err and "Error" not in err, err


def test_a_damaged_index_says_so_in_one_line(db):
    """A data file of the index gone (a disk, a sync tool): one clear message and exit 1, no Lance traceback."""
    next((db / "chunks.lance" / "data").glob("*.lance")).unlink()
    result = mrag("search", "Roman aqueducts", "--db", db, ok=False)
    assert result.exit_code == 1
    assert "the index's files could not be read (lance error: Not found:" in result.output
    assert "Traceback" not in result.output and ".rs:" not in result.output


def test_a_full_disk_or_a_read_only_folder_is_not_called_a_damaged_index():
    from mrag.cli_common import lance_message

    full = lance_message("lance error: IO error: No space left on device (os error 28)")
    assert full.startswith("no space left") and "nothing was committed" in full and "damaged" not in full
    locked = lance_message("lance error: IO error: Permission denied (os error 13)")
    assert "permissions" in locked and "damaged" not in locked
    assert "missing or damaged" in lance_message("lance error: Not found: /db/chunks.lance/data/x.lance")
    graphs = lance_message("Error in faiss::FileIOWriter: write error in db/graphs/.staging-x/5.faiss "
                           "(No space left on device)")  # faiss, writing the HNSW graphs
    assert graphs.startswith("no space left") and "damaged" not in graphs
    # an S3 server that went away (a reviewer's run: the write had committed): the store failed, not the index
    outage = lance_message("lance error: LanceError(IO): Generic S3 error: Error performing list request: Error "
                           "performing GET http://127.0.0.1:44485/mrag-test?list-type=2 in 444.2ms, after 3 "
                           "retries, max_retries: 3, retry_timeout: 180s - HTTP error: error sending request)")
    assert outage.startswith("the object store did not answer") and "damaged" not in outage
    assert "whole or not at all" in outage
    bucket = lance_message('Invalid input, Failed to connect to namespace: IO { source: Generic { store: "S3", '
                           'source: ListRequest { source: RetryError(RetryErrorImpl { method: GET, ' + "x" * 600 +
                           ' code: NoSuchBucket } } } }')
    assert bucket.startswith("the object store did not answer or refused the request (NoSuchBucket: Invalid")
    assert len(bucket) < 600
    # Python's own errors (the graphs' folder, the lock file) and Lance's source lines (a reviewer's full disk)
    assert "permissions" in lance_message("[Errno 30] Read-only file system: '/ro/idx/graphs'")
    cut = lance_message("lance error: IO error: No space left on device (os error 28), /root/.cargo/registry/src/"
                        "index.crates.io-1/lance-file-13.0.0/src/writer/structural.rs:258:9")
    assert cut.startswith("no space left") and ".rs" not in cut and ".cargo" not in cut


def test_os_errors_of_a_full_disk_or_a_read_only_folder_say_what_to_do(db, monkeypatch):
    """`--build-ann HNSW` on a full disk, or the lock file there: "Error: [Errno 28] No space left on device"."""
    from mrag.index import Index

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Index, "open", full)
    result = mrag("info", "--db", db, ok=False)
    assert result.exit_code == 1 and "no space left for the index's files" in result.stderr
    assert "free some space and run again" in result.stderr


def test_only_lances_object_store_errors_are_told_as_the_store_failing():
    """Lance's ValueError on connecting to a bucket is the store's; an external space's service that refused
    a connection is the space's own error, as it was (a review found it told as an object store's)."""
    import click

    from mrag.cli_common import user_errors
    from mrag.spaces import SpaceError

    def failing(error: Exception):
        @user_errors
        def run() -> None:
            raise error
        with pytest.raises(click.ClickException) as caught:
            run()
        return caught.value.message

    space = failing(SpaceError("space 'w' (ollama): cannot compute embeddings: Connection refused"))
    assert space == "space 'w' (ollama): cannot compute embeddings: Connection refused"
    bucket = failing(ValueError('Invalid input, Failed to connect to namespace: IO { source: Generic { store: "S3", '
                                'source: Connection refused } }'))
    assert bucket.startswith("the object store did not answer or refused the request (Connection refused")


def test_the_packaged_model_by_its_folder_is_the_same_model(db):
    """An index built with the default model searches with --model naming the packaged weights' folder (it was
    refused as another model), and still refuses another model."""
    from conftest import MINILM_DIR

    hits = lines(mrag("search", "honeybees", "--db", db, "--model", MINILM_DIR, "-k", "1"))
    assert [h["doc_id"] for h in hits] == [source(db.parent / "corpus", "bees.txt")]
    refused = mrag("search", "honeybees", "--db", db, "--model", "smollm2", ok=False)
    assert refused.exit_code == 1 and "was built with" in refused.output


def test_comma_separated_names_as_every_option_takes_them():
    from mrag.settings import names

    assert names("standard, bm25,") == ["standard", "bm25"] and names(["head:0,standard", "bm25"]) == [
        "head:0", "standard", "bm25"] and names(" , ") == []
