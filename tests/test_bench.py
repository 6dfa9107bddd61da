"""`mrag bench` and `mrag tune`: query writers (hand-worked), the benchmark folder, resuming, tuning."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from importlib import resources
from pathlib import Path
from random import Random

import numpy as np
import pytest
from click.testing import CliRunner

from mrag.cli import cli
from mrag.evaluate import bench as bench_mod
from mrag.evaluate.bench import build, cluster_count, folder_groups, kmeans, plan, read_jsonl, touched
from mrag.evaluate.datasets import load
from mrag.evaluate.querygen import (
    Extractive,
    Written,
    idf_table,
    join_parts,
    key_terms,
    parse_reply,
    prompt,
    quoted_words,
    salient_sentence,
)
from mrag.evaluate.tune import EXTRACTIVE_NOTE, paired_gain, per_query, tune
from mrag.generate.base import Generator, Message
from mrag.retrieve.strategies import uses_fulltext
from mrag.settings import DEFAULT_STRATEGY

DOCS = {
    "animals/bees.md": "Honeybees fan their wings to cool the hive. A queen lays eggs in wax cells all summer.",
    "animals/owls.md": "Owls hunt at night. Their soft feathers let them fly silently over meadows.",
    "history/rome.md": "Rome built aqueducts. Engineers kept a steady gradient so water flowed by gravity.",
    "history/egypt.md": "Egypt farmed the Nile floodplain. Annual floods left silt that fed the wheat fields.",
    "space/tides.md": "The Moon raises tides. Its gravity pulls the oceans into two bulges each day.",
    "space/mars.md": "Mars has dust storms. Red iron oxide covers its cold deserts and tall volcanoes.",
}


@pytest.fixture
def docs(tmp_path) -> Path:
    root = tmp_path / "docs"
    for name, text in DOCS.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


class Scripted(Generator):
    """Replies from a list, in order; records every prompt. `fail_after`: raise once that many are used."""

    name = "scripted"

    def __init__(self, replies: Sequence[str], fail_after: int | None = None):
        self.replies = list(replies)
        self.prompts: list[list[Message]] = []
        self.fail_after = fail_after

    def stream(self, messages: Sequence[Message], max_tokens: int = 256) -> Iterator[str]:
        if self.fail_after is not None and len(self.prompts) == self.fail_after:
            raise RuntimeError("the LLM went away")
        self.prompts.append(list(messages))
        yield self.replies[len(self.prompts) - 1]


# --- query writers, worked by hand ------------------------------------------------------------


def test_idf_counts_documents_not_occurrences():
    idf = idf_table(["roman roman roads", "roman bees"])
    # N = 2: "roman" in both (df 2) -> log(3/3) + 1 = 1; "roads" in one -> log(3/2) + 1
    assert idf["roman"] == pytest.approx(1.0)
    assert idf["roads"] == pytest.approx(np.log(1.5) + 1)
    assert "the" not in idf_table(["the roads"])  # stopwords are not content


def test_key_terms_keep_the_rarest_words_in_their_order():
    idf = {"aqueducts": 3.0, "water": 1.0, "gravity": 2.0, "city": 1.5}
    assert key_terms("Aqueducts carried water to the city by gravity", idf, m=2) == ["aqueducts", "gravity"]
    assert key_terms("water water city", idf, m=5) == ["water", "city"]  # each word once


def test_salient_sentence_prefers_rare_words_and_skips_the_opening():
    text = ("Rome is a city in Italy with many people. Its aqueducts used siphons and arcades. "
            "It is a city with many people in it. The city is in Italy.")
    idf = idf_table([text, "a city in Italy with people", "many people in a city"])
    assert salient_sentence(text, idf) == "Its aqueducts used siphons and arcades."


def test_quoted_words_is_the_longest_shared_run():
    doc = "the moon pulls the oceans into two bulges every day"
    assert quoted_words("why does the moon pull oceans", doc) == 2  # "the moon"
    assert quoted_words("the oceans into two bulges, and", doc) == 5
    assert quoted_words("nothing here", doc) == 0


def test_parse_reply_keeps_one_clean_line():
    assert parse_reply('Question: "How do bees and tides differ?"\nExtra') == "How do bees and tides differ?"
    assert parse_reply("\n\n1. Why do owls fly silently?") == "Why do owls fly silently?"
    assert parse_reply("**Query:** what is silt") == "what is silt"
    assert parse_reply("   \n") is None
    assert parse_reply("Bees?") is None  # under three words
    # a preamble is passed over; words that begin like a label or a number stay whole
    assert parse_reply("Here is a question that needs both:\nHow do bees cool hives?") == "How do bees cool hives?"
    assert parse_reply("Request-response patterns of web servers") == "Request-response patterns of web servers"
    assert parse_reply("1.5 degrees of warming and the bees") == "1.5 degrees of warming and the bees"


def test_prompt_names_the_documents_count_and_rules():
    messages = prompt([("Bees", "Honeybees fan their wings."), ("Tides", "The Moon raises tides.")])
    assert [m["role"] for m in messages] == ["system", "user"]
    user = messages[1]["content"]
    assert user.startswith("Document 1:\nHoneybees fan their wings.\n\nDocument 2:\nThe Moon raises tides.\n\n")
    assert "needs all 2 documents, one aspect from each" in user
    assert "do not copy their sentences" in user and user.endswith("on one line.")
    assert "needs this document" in prompt([("Bees", "Honeybees.")])[1]["content"]


def test_join_parts_forms():
    forms = {join_parts(["a b", "c d"], Random(seed))[1] for seed in range(20)}
    assert forms == {"joined", "separate"}
    text, form = join_parts(["bees wax"], Random(0))
    assert form == "single" and "bees wax" in text
    for seed in range(20):
        text, form = join_parts(["x1", "y2", "z3"], Random(seed))
        assert all(p in text for p in ("x1", "y2", "z3"))
        assert (text.count(".") + text.count("?") == 3) == (form == "separate")


# --- groups and plans -------------------------------------------------------------------------


def test_folder_groups_need_every_document_in_a_subfolder_and_two_folders():
    assert folder_groups(["a/x.md", "b/y.md"]) == ["a", "b"]
    assert folder_groups(["a/x.md", "y.md"]) is None
    assert folder_groups(["a/x.md", "a/y.md"]) is None


def test_plan_takes_n_distinct_groups_and_spreads_documents():
    groups = ["g1"] * 4 + ["g2"] * 4 + ["g3"] * 4
    planned = plan(groups, [1, 2, 3], per_n=8, seed=1)
    assert [p.id for p in planned[:2]] == ["n1-000", "n1-001"] and len(planned) == 24
    for p in planned:
        assert len({groups[i] for i in p.docs}) == p.n == len(p.docs)
    uses = np.bincount([i for p in planned for i in p.docs], minlength=12)
    assert uses.max() - uses.min() <= 3  # each group's documents taken in turn
    assert plan(groups, [1, 2, 3], 8, seed=1) == planned  # seeded
    with pytest.raises(ValueError, match="--n 4 needs 4 groups but the documents form 3"):
        plan(groups, [4], 1, 0)


def test_kmeans_separates_clear_clusters_and_cluster_count():
    rng = np.random.default_rng(0)
    centres = np.eye(3, 8)
    x = np.repeat(centres, 10, axis=0) + 0.05 * rng.normal(size=(30, 8))
    labels = kmeans(x, 3, seed=0)
    assert all(len(set(labels[i * 10:(i + 1) * 10])) == 1 for i in range(3)) and len(set(labels)) == 3
    assert cluster_count(1250, 6) == 25 and cluster_count(10, 6) == 6 and cluster_count(8, 1) == 2


# --- the benchmark folder ---------------------------------------------------------------------


def test_records_files_in_sub_folders_keep_the_folder_groups(docs, tmp_path):
    """Records keep their ids (no folder in them) but are grouped by their file's sub-folder; a record with
    no id is named by its file below the folder given and its place, as files are."""
    facts = ['{"id": "moon-facts", "text": "The Moon has no air. Its craters keep their shape for ages."}',
             '{"text": "Saturn has rings. They are made of ice and rock in thin bands."}']
    (docs / "space" / "facts.jsonl").write_text("\n".join(facts))
    texts = [*DOCS.values(), "The Moon has no air. Its craters keep their shape for ages.",
             "Saturn has rings. They are made of ice and rock in thin bands."]
    info = build([docs], tmp_path / "bench", Extractive(texts), ns=[1, 2], per_n=2, seed=0)
    assert info["groups"] == "sub-folders" and info["groups_found"] == 3
    corpus = {c["_id"]: c["category"] for c in read_jsonl(tmp_path / "bench" / "corpus.jsonl")}
    assert corpus["moon-facts"] == corpus["space/facts.jsonl#1"] == corpus["space/mars.md"] == "space"


def test_extractive_benchmark_reads_back_in_eval(docs, tmp_path):
    out = tmp_path / "bench"
    writer = Extractive(list(DOCS.values()))
    info = build([docs], out, writer, ns=[1, 2, 3], per_n=4, seed=3)
    assert info["groups"] == "sub-folders" and info["groups_found"] == 3 and info["complete"]
    assert info["queries"] + info["dropped"] == 12
    queries = read_jsonl(out / "queries.jsonl")
    assert {q["form"] for q in queries} <= {"single", "joined", "separate"}
    corpus = read_jsonl(out / "corpus.jsonl")
    assert {c["_id"] for c in corpus} == set(DOCS)
    assert {c["doc_id"] for c in corpus} == {str((docs / n).resolve()) for n in DOCS}
    loaded = load(out)
    assert loaded.has_categories and len(loaded.queries) == info["queries"]
    for q in loaded.queries:
        assert len({next(iter(a.categories)) for a in q.aspects}) == q.n  # n documents from n groups
    assert build([docs], out, writer, ns=[1, 2, 3], per_n=4, seed=3) == info  # done: nothing rewritten


def test_llm_queries_are_checked_and_the_run_resumes(docs, tmp_path):
    replies = [f"Question: what links {i}: honeybees, owls, aqueducts, the Nile, the Moon and Mars?" for i in range(6)]
    replies[1] = "Which one is the nicest of them all?"  # touches no document
    replies[2] = "\n"  # nothing written
    whole = tmp_path / "whole"
    build([docs], whole, Written(Scripted(replies)), ns=[1, 2], per_n=3, seed=0)
    part = tmp_path / "part"
    with pytest.raises(RuntimeError):
        build([docs], part, Written(Scripted(replies, fail_after=4)), ns=[1, 2], per_n=3, seed=0)
    assert len(read_jsonl(part / "queries.jsonl")) + len(read_jsonl(part / "dropped.jsonl")) == 4
    assert not json.loads((part / "bench.json").read_text())["complete"]
    rest = Scripted(replies[4:])
    info = build([docs], part, Written(rest), ns=[1, 2], per_n=3, seed=0)
    assert len(rest.prompts) == 2  # only what was missing
    for name in ("queries.jsonl", "dropped.jsonl", "corpus.jsonl", "qrels/test.tsv"):
        assert (part / name).read_text() == (whole / name).read_text(), name
    assert info["dropped_by_reason"] == {"no query written": 1, "touches no document": 1}
    kept = read_jsonl(part / "queries.jsonl")
    assert [q["_id"] for q in kept] == ["n1-000", "n2-000", "n2-001", "n2-002"]
    assert kept[0]["text"] == "what links 0: honeybees, owls, aqueducts, the Nile, the Moon and Mars?"
    assert all(q["touches"] == q["n"] for q in kept) and info["touching_every_document"] == 4


def test_a_run_cut_mid_line_resumes_into_a_whole_file(docs, tmp_path):
    """A crash while writing a line leaves part of it, cut inside a character: the resumed run writes that
    query again after the last whole line (it appended onto the partial one before: the file broke for good)."""
    replies = [f"Which of honeybees, owls, aqueducts, the Nile, the Moon and Mars is Ünïcode {i}?" for i in range(6)]
    whole = tmp_path / "whole"
    build([docs], whole, Written(Scripted(replies)), ns=[1, 2], per_n=3, seed=0)
    part = tmp_path / "part"
    with pytest.raises(RuntimeError):
        build([docs], part, Written(Scripted(replies, fail_after=4)), ns=[1, 2], per_n=3, seed=0)
    lines = (whole / "queries.jsonl").read_bytes().splitlines(keepends=True)
    (part / "queries.jsonl").write_bytes(b"".join(lines[:4]) + lines[4][:lines[4].index("Ü".encode()) + 1])
    info = build([docs], part, Written(Scripted(replies[4:])), ns=[1, 2], per_n=3, seed=0)
    assert (part / "queries.jsonl").read_bytes() == (whole / "queries.jsonl").read_bytes()
    assert info["queries"] == 6 and len(load(part).queries) == 6


def test_touched_counts_documents_sharing_a_content_word():
    relevant = ["Honeybees fan their wings.", "Owls hunt at night.", "The Moon raises tides."]
    assert touched("Why do owls and honeybees differ?", relevant) == 2
    assert touched("What is the one in the night?", relevant) == 1  # "night"; "the" and "one" are stopwords
    assert touched("", relevant) == 0


class Echo(Generator):
    """Replies with the first document of the prompt, cut to `words` words: a copying LLM."""

    name = "echo"

    def __init__(self, words: int):
        self.words = words

    def stream(self, messages: Sequence[Message], max_tokens: int = 256) -> Iterator[str]:
        first = messages[1]["content"].split("\n")[1]
        yield " ".join(first.split()[: self.words])


@pytest.mark.parametrize("words, dropped", [(8, 6), (7, 0)])
def test_a_reply_quoting_its_document_is_dropped(docs, tmp_path, words, dropped):
    info = build([docs], tmp_path / "b", Written(Echo(words)), ns=[1, 2], per_n=3, seed=0)
    quoting = [d for d in read_jsonl(tmp_path / "b" / "dropped.jsonl") if d["reason"] == "quotes a document"]
    assert len(quoting) == dropped and all(d["detail"].startswith("8 consecutive words") for d in quoting)
    # the echo of a document drawn first twice is one query, the other dropped as a duplicate
    assert set(info["dropped_by_reason"]) <= {"quotes a document", "duplicate"}
    kept = read_jsonl(tmp_path / "b" / "queries.jsonl")
    assert len({q["text"] for q in kept}) == len(kept) == info["queries"] == 6 - info["dropped"]


def test_a_query_written_twice_is_kept_once(docs, tmp_path):
    """A query written twice (few documents, the same ones drawn again) was kept twice, without a word (a
    reviewer's run: 7 documents, 125 queries, 14 of them copies)."""
    info = build([docs], tmp_path / "b", Extractive(list(DOCS.values())), ns=[1, 2], per_n=30, seed=0)
    kept = read_jsonl(tmp_path / "b" / "queries.jsonl")
    assert len({q["text"] for q in kept}) == len(kept) and info["dropped_by_reason"].get("duplicate", 0) > 0


def test_near_copies_are_dropped(docs, tmp_path):
    def embed(texts: list[str]) -> np.ndarray:  # every text the same vector: every query a near copy
        return np.ones((len(texts), 4))

    info = build([docs], tmp_path / "b", Extractive(list(DOCS.values())), embed=embed, ns=[1], per_n=2)
    assert info["queries"] == 0 and info["dropped_by_reason"] == {"near copy": 2}


def test_bad_requests_are_refused_and_change_nothing(docs, tmp_path):
    writer = Extractive(list(DOCS.values()))
    with pytest.raises(ValueError, match="--n 4 needs 4 groups"):
        build([docs], tmp_path / "b", writer, ns=[4], per_n=1)
    out = tmp_path / "ok"
    build([docs], out, writer, ns=[1], per_n=2)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    with pytest.raises(ValueError, match="other documents or settings"):
        build([docs], out, writer, ns=[1, 2], per_n=2)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a benchmark folder"):
        build([docs], tmp_path / "busy", writer, ns=[1], per_n=1)
    with pytest.raises(ValueError, match="no sub-folders"):
        build([docs / "animals"], tmp_path / "c", writer, ns=[1], per_n=1)


def test_the_bundled_corpus_grouped_by_its_topic_field(tmp_path):
    sample = resources.files("mrag") / "data" / "sample_corpus.jsonl"
    texts = [json.loads(line)["text"] for line in sample.read_text().splitlines()]
    info = build([str(sample)], tmp_path / "b", Extractive(texts), ns=[1, 2, 4], per_n=5, group_by="topic")
    assert info["groups_found"] == 15 and info["queries"] == 15 and info["dropped"] == 0
    first = read_jsonl(tmp_path / "b" / "queries.jsonl")[0]
    assert first["relevant"][0] in {json.loads(line)["id"] for line in sample.read_text().splitlines()}


# --- tune ----------------------------------------------------------------------------------------


def test_paired_gain_worked_by_hand():
    values = {"a": {"multi": {"q1": 1.0, "q2": 0.5}, "single": {"q3": 1.0}},
              "b": {"multi": {"q1": 0.5, "q2": 0.5}, "single": {"q3": 0.5}}}
    gain, error = paired_gain(values, "a", "b")
    # multi: d = (0.5, 0) -> mean 0.25, var 0.125 / 2; single: d = 0.5, one query -> no variance
    assert gain == pytest.approx(0.5 * 0.25 + 0.5 * 0.5)
    assert error == pytest.approx(np.sqrt(0.25 * 0.125 / 2))


def test_per_query_values_from_records():
    records = [{"strategy": "s", "query": "m", "n": 2, "k": 2, "success_ratio": 0.5},
               {"strategy": "s", "query": "m", "n": 2, "k": 3, "success_ratio": 1.0},
               {"strategy": "s", "query": "o", "n": 1, "k": 1, "success_ratio": 0.0},
               {"strategy": "s", "query": "o", "n": 1, "k": 2, "success_ratio": 0.0},
               {"strategy": "s", "query": "o", "n": 1, "k": 3, "success_ratio": 1.0}]
    assert per_query(records) == {"s": {"multi": {"m": 0.5}, "single": {"o": pytest.approx(1 / 3)}}}


def test_tune_records_a_default_that_search_and_info_use(docs, tmp_path, index):
    out = tmp_path / "bench"
    build([docs], out, Extractive(list(DOCS.values())), ns=[1, 2], per_n=6, seed=0)
    index.add_paths([docs])
    assert index.default_strategy == DEFAULT_STRATEGY == "segment-bm25"  # the index has its full-text index
    assert index.info()["default_strategy"] == {"strategy": DEFAULT_STRATEGY, "source": "built-in"}
    record = tune(index, out, ["mrag", "standard", "segment+standard"])
    assert record["documents_found"] == "6 of 6" and record["queries"]["single_aspect"] == 6
    # the built-in default competes whether named or not: a recorded winner beats it
    assert set(record["candidates"]) == {DEFAULT_STRATEGY, "mrag", "standard", "segment+standard"}
    assert record["strategy"] in record["candidates"]
    # the winner unless it is within noise of the built-in default
    best = max(record["candidates"], key=lambda s: record["candidates"][s]["score"])
    assert record["strategy"] == (best if record["default_kept"] is None else DEFAULT_STRATEGY)
    from mrag.index import Index

    again = Index.open(index.store.uri, embedder=index.embedder)
    assert again.info()["default_strategy"] == record
    index.set_default_strategy(record | {"strategy": "standard"})
    assert again.default_strategy == "standard"  # another open index follows the commit
    assert [h.id for h in again.search("wax cells queen")] == [h.id for h in again.search(
        "wax cells queen", strategy="standard")]
    index.set_default_strategy(None)
    assert again.default_strategy == DEFAULT_STRATEGY
    with pytest.raises(ValueError, match="needs an LLM"):
        tune(index, out, ["mrag-fusion"])


def test_tune_refuses_an_index_without_the_benchmarks_documents(docs, tmp_path, index):
    out = tmp_path / "bench"
    build([docs], out, Extractive(list(DOCS.values())), ns=[1], per_n=2)
    index.add([{"id": "other", "text": "nothing to do with it"}])
    with pytest.raises(ValueError, match="holds none of the benchmark's documents"):
        tune(index, out)
    # a BEIR folder's corpus.jsonl indexed as it is: its rows are 'corpus.jsonl#0', ...; the message says how
    with pytest.raises(ValueError, match=re.escape(f"mrag index {out / 'corpus.jsonl'} --id-field _id --db")):
        tune(index, out)
    assert index.default_strategy == DEFAULT_STRATEGY


def test_tune_on_a_beir_folder_whose_ids_are_the_indexed_documents(docs, tmp_path, index):
    """A BEIR folder (no `doc_id` field) of documents indexed under its `_id`s, as `mrag tune --help` says."""
    out = tmp_path / "bench"
    build([docs], out, Extractive(list(DOCS.values())), ns=[1, 2], per_n=6, seed=0)
    rows = read_jsonl(out / "corpus.jsonl")
    (out / "corpus.jsonl").write_text("".join(json.dumps({k: v for k, v in r.items() if k != "doc_id"}) + "\n"
                                              for r in rows))
    index.add([{"id": r["_id"], "text": r["text"], "title": r["title"]} for r in rows])
    record = tune(index, out, ["standard"])
    assert record["documents_found"] == "6 of 6"


def test_why_a_tuned_strategy_won_names_ties_and_the_built_in_default():
    from mrag.cli_bench import why_chosen

    table = {"segment-bm25": {"score": 0.595}, "mrag": {"score": 1.0}, "standard": {"score": 1.0},
             "bm25": {"score": 0.9}}
    record = {"strategy": "mrag", "score": 1.0, "margin": 0.0, "default_kept": None, "candidates": table}
    assert why_chosen(record) == ("score 1.000; tied with standard, first in the order asked; "
                                  "0.405 above the built-in segment-bm25")
    table["standard"]["score"] = 0.95
    assert why_chosen(record | {"margin": 0.05}) == ("score 1.000; ahead of the next by 0.050; "
                                                      "0.405 above the built-in segment-bm25")
    table["bm25"]["score"] = table["segment-bm25"]["score"]  # the built-in default, not asked for, tied
    assert why_chosen(record | {"strategy": "segment-bm25", "score": 0.595}).startswith(
        "score 0.595; tied with bm25, the built-in default first")
    kept = record | {"strategy": "segment-bm25", "default_kept": "the best (mrag) is ahead by 0.010, ..."}
    assert why_chosen(kept) == "kept: the best (mrag) is ahead by 0.010, ..."


def test_bench_and_tune_commands(docs, tmp_path, reuse_minilm):
    runner = CliRunner()
    out, db = tmp_path / "bench", tmp_path / "idx"
    made = runner.invoke(cli, ["bench", str(docs), "-o", str(out), "--n", "1,2", "--per-n", "3"])
    assert made.exit_code == 0, made.output
    assert json.loads(made.stdout)["groups_found"] == 3
    too_many = runner.invoke(cli, ["bench", str(docs), "-o", str(tmp_path / "x"), "--n", "5"])
    assert too_many.exit_code == 1 and "--n 5 needs 5 groups" in too_many.output
    assert not (tmp_path / "x").exists()
    assert runner.invoke(cli, ["index", str(docs), "--db", str(db)]).exit_code == 0
    tuned = runner.invoke(cli, ["tune", "--db", str(db), "--bench", str(out), "--strategies", "standard,mrag"])
    assert tuned.exit_code == 0, tuned.output
    record = json.loads(tuned.stdout)
    info = json.loads(runner.invoke(cli, ["info", "--db", str(db)]).stdout)
    assert info["default_strategy"]["strategy"] == record["strategy"] and record["saved"]
    both = runner.invoke(cli, ["tune", "--db", str(db), "--bench", str(out), "--reset"])  # the help: not both
    assert both.exit_code == 2 and "--reset forgets the recorded default: it takes no --bench" in both.output
    assert json.loads(runner.invoke(cli, ["info", "--db", str(db)]).stdout)["default_strategy"] == info[
        "default_strategy"]  # nothing forgotten
    reset = runner.invoke(cli, ["tune", "--db", str(db), "--reset"])
    assert json.loads(reset.stdout)["default_strategy"] == DEFAULT_STRATEGY
    plain = runner.invoke(cli, ["tune", "--db", str(db), "--reset", "--plain"])  # --plain was ignored here
    assert plain.stdout == f"default strategy: {DEFAULT_STRATEGY} (built-in)\n"


def test_extractive_is_deterministic(docs, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        build([docs], out, Extractive(list(DOCS.values())), ns=[1, 2, 3], per_n=3, seed=7)
    assert (a / "queries.jsonl").read_text() == (b / "queries.jsonl").read_text()
    assert bench_mod.DEFAULT_NS == (1, 2, 3, 4, 6)


def test_uses_fulltext():
    full_text = ("bm25", "hybrid", "segment+hybrid", "mrag-bm25", "segment-bm25")
    assert [uses_fulltext(s, None) for s in full_text] == [True] * 5
    assert [uses_fulltext(s, None) for s in ("mrag", "standard", "segment+standard", "mrag-paper")] == [False] * 4


def test_tune_on_an_extractive_benchmark_leaves_full_text_rivals_out(docs, tmp_path, index):
    out = tmp_path / "bench"
    build([docs], out, Extractive(list(DOCS.values())), ns=[1, 2], per_n=4, seed=0)
    index.add_paths([docs])
    record = tune(index, out, save=False)
    default = index.built_in_default()
    assert default == DEFAULT_STRATEGY and default in record["candidates"]
    assert not [s for s in record["candidates"] if s != default and uses_fulltext(s, None)]
    assert "mrag" in record["candidates"] and "bm25" not in record["candidates"]
    assert record["note"] == EXTRACTIVE_NOTE
    chosen = tune(index, out, ["bm25", "mrag"], save=False)  # named candidates are compared as asked
    assert set(chosen["candidates"]) == {default, "bm25", "mrag"}  # with the default, favoured here: said so
    assert chosen["note"].endswith("the built-in default, which searches the full text too, is favoured")


def test_read_jsonl_keeps_line_separators_skips_a_cut_last_line_and_refuses_a_broken_one(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"text": "one\u2028two"}\n{"text": "three"}\n{"text": "cut sh', encoding="utf-8")
    assert read_jsonl(path) == [{"text": "one\u2028two"}, {"text": "three"}]  # a crash's last line: ignored
    path.write_text('{"text": "one"}\n{"text": "bro\n{"text": "three"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="rows.jsonl: invalid JSON at line 2"):
        read_jsonl(path)


def test_tune_maps_rows_by_the_longest_path_below_the_benchmark_folder(tmp_path):
    """A folder indexed elsewhere: a row of /data/docs/a/b.txt is the benchmark's `a/b.txt`, never its `b.txt`
    (a set's order decided it before, so the mapping changed with PYTHONHASHSEED)."""
    from types import SimpleNamespace

    from mrag.evaluate.tune import row_units

    (tmp_path / "corpus.jsonl").write_text("")
    ids = ["/data/docs/a/b.txt#0", "/data/docs/b.txt#0", "/data/docs/a/b.txt#1", "/elsewhere/c.txt#0"]
    matrix = SimpleNamespace(ids=np.array(ids, dtype=object))
    index = SimpleNamespace(store=SimpleNamespace(matrix=lambda: matrix))
    got = row_units(index, tmp_path, {"b.txt", "a/b.txt", "docs/z.txt"})
    assert list(got) == ["a/b.txt", "b.txt", "a/b.txt", "other:/elsewhere/c.txt"]
