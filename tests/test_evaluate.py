"""The evaluation harness: loaders in every format, metrics by hand, k indexing, caching, report."""

from __future__ import annotations

import bz2
import json
import math
import tarfile
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import FakeEmbedder

from mrag.cli import cli
from mrag.evaluate import harness
from mrag.evaluate.datasets import Aspect, clean_fusion, load
from mrag.evaluate.metrics import dedupe_units, ndcg, query_metrics
from mrag.evaluate.report import markdown_table, paired_gain, plot

ARTICLES = [
    {"title": "Aqueduct", "text": "Roman aqueducts carried water with gravity.", "label": "rome"},
    {"title": "Legion", "text": "Roman legions marched through Gaul.", "label": "rome"},
    {"title": "Honeybee", "text": "Honeybees fan their wings to cool the hive.", "label": "bees"},
    {"title": "Mercury", "text": "Mercury is the planet closest to the sun.", "label": "planets"},
    {"title": "Mercury", "text": "Mercury is a liquid metal used in thermometers.", "label": "metals"},
    {"title": "Volcano", "text": "Volcanoes erupt molten lava and ash.", "label": "volcanoes"},
]
QUERIES = [
    {"topics": ["Aqueduct", "Honeybee"], "text": "Roman aqueducts carried water. Honeybees cool the hive.",
     "fusion": ["1. \"roman aqueducts\"", "", "2) honeybee hive cooling"]},
    {"topics": ["Mercury", "Volcano"], "text": "Mercury in thermometers. Volcanoes erupt lava.", "fusion": []},
    {"topics": ["Atlantis"], "text": "Where is Atlantis?", "fusion": []},
]


def write_wikipedia(folder: Path, compressed: bool) -> tuple[Path, Path]:
    suffix = ".json.bz2" if compressed else ".json"
    opener = bz2.open if compressed else open
    paths = folder / f"articles{suffix}", folder / f"queries{suffix}"
    for path, data in zip(paths, (ARTICLES, QUERIES)):
        with opener(path, "wt", encoding="utf-8") as f:
            json.dump(data, f)
    return paths


@pytest.mark.parametrize("compressed", [False, True])
def test_wikipedia_loader_keeps_duplicate_titles_apart(tmp_path, compressed):
    bench = load(*write_wikipedia(tmp_path, compressed))
    assert len(bench.docs) == 6 and len({d.unit for d in bench.docs}) == 6
    assert [q.n for q in bench.queries] == [2, 2]
    assert bench.skipped == ["query 2: unknown document(s) ['Atlantis']"]
    mercury = bench.queries[1].aspects[0]
    # one aspect, two acceptable documents in two categories: never merged into one document
    assert mercury.units == {"d00003", "d00004"} and mercury.categories == {"planets", "metals"}
    assert bench.queries[0].fusion == ["roman aqueducts", "honeybee hive cooling"]


def test_clean_fusion_strips_numbering_quotes_and_blanks():
    assert clean_fusion(["1. \"a b\"", " ", "2) c", "- d", "", "e"]) == ["a b", "c", "d", "e"]
    assert clean_fusion(["1.5 degree warming targets", "3.14 digits"]) == ["1.5 degree warming targets", "3.14 digits"]


def write_topics(root: Path) -> None:
    for category, topic, passages in [
        ("chemistry", "acids", ["Acids donate protons.", "Vinegar is an acid."]),
        ("chemistry", "salts", ["Salts form from acids and bases."]),
        ("law", "contracts", ["A contract needs an offer and acceptance."]),
    ]:
        (root / category).mkdir(parents=True, exist_ok=True)
        data = [{"title": f"{topic} {i}", "text": t} for i, t in enumerate(passages)]
        (root / category / f"{topic}.json").write_text(json.dumps(data))


@pytest.mark.parametrize("packed", [False, True])
def test_topic_layout_counts_passages_for_their_topic(tmp_path, packed):
    root = tmp_path / "topics"
    write_topics(root)
    corpus = root
    if packed:
        corpus = tmp_path / "topics.tar.bz2"
        with tarfile.open(corpus, "w:bz2") as tar:
            tar.add(root, arcname="topics")
    queries = tmp_path / "queries.json"
    queries.write_text(json.dumps({"2": [{"related": ["acids", "contracts"], "text": "Vinegar and contracts."},
                                         {"related": ["acids", "unicorns"], "text": "?"}]}))
    bench = load(corpus, queries)
    assert len(bench.docs) == 4
    acids = [d for d in bench.docs if d.unit.endswith("chemistry/acids")]
    assert len(acids) == 2 and {d.category for d in acids} == {"chemistry"}
    (query,) = bench.queries
    assert [sorted(a.categories) for a in query.aspects] == [["chemistry"], ["law"]]
    assert len(bench.skipped) == 1 and "unicorns" in bench.skipped[0]


def test_topics_without_passages_and_queries_without_topics_are_skipped(tmp_path):
    write_topics(tmp_path / "topics")
    (tmp_path / "topics" / "law" / "torts.json").write_text(json.dumps([{"title": "t", "text": "  "}]))
    queries = tmp_path / "queries.json"
    queries.write_text(json.dumps({"2": [{"related": ["acids", "torts"], "text": "Vinegar and torts."},
                                         {"related": [], "text": "Nothing at all."},
                                         {"related": ["salts", "contracts"], "text": "Salts and contracts."}]}))
    bench = load(tmp_path / "topics", queries)
    assert [q.text for q in bench.queries] == ["Salts and contracts."]
    assert bench.skipped == ["query 2/0: unknown topic(s) ['torts']", "query 2/1: no topics"]


def test_topic_files_named_category_underscore_topic_as_the_paper_releases_them(tmp_path):
    """The legal and chemical releases: "tax laws/tax laws_Self-Employment Contributions Act.json",
    queries naming "Self-Employment Contributions Act"; one topic name in two categories; a file
    whose name merely starts like its folder keeps its name."""
    root = tmp_path / "legal_documents_v1"
    for category, stem, text in [
        ("tax laws", "tax laws_Self-Employment Contributions Act", "Self-employed people pay their own tax."),
        ("tax laws", "tax laws_Privacy", "Tax records are private."),
        ("privacy laws", "privacy laws_Privacy", "Personal data may not be sold."),
        ("privacy laws", "privacy lawsuits", "A suit over leaked records."),
    ]:
        (root / category).mkdir(parents=True, exist_ok=True)
        (root / category / f"{stem}.json").write_text(json.dumps([{"title": stem, "text": text}]))
    corpus = tmp_path / "legal_documents_v1.tar.bz2"
    with tarfile.open(corpus, "w:bz2") as tar:
        tar.add(root, arcname="legal_documents_v1")
    queries = tmp_path / "generated_random.json"
    queries.write_text(json.dumps({"2": [
        {"related": ["Self-Employment Contributions Act", "Privacy"], "text": "Who pays tax and who sees it?"},
        {"related": ["privacy lawsuits", "Gone Act"], "text": "A topic missing from the release."},
    ]}))
    bench = load(corpus, queries)
    (query,) = bench.queries
    act, privacy = query.aspects
    assert act.categories == {"tax laws"} and len(act.units) == 1
    assert privacy.categories == {"tax laws", "privacy laws"} and len(privacy.units) == 2  # either counts
    assert bench.skipped == ["query 2/1: unknown topic(s) ['Gone Act']"]
    assert sorted({d.unit.rsplit("/", 1)[-1] for d in bench.docs}) == [
        "privacy laws_Privacy", "privacy lawsuits", "tax laws_Privacy", "tax laws_Self-Employment Contributions Act"]


def test_beir_loader_reads_graded_qrels(tmp_path):
    (tmp_path / "qrels").mkdir()
    (tmp_path / "corpus.jsonl").write_text(
        "\n".join(json.dumps({"_id": i, "title": "", "text": t}) for i, t in [("a", "alpha"), ("b", "beta")])
    )
    (tmp_path / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "alpha?"}) + "\n")
    (tmp_path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\ta\t2\nq1\tb\t1\nq9\tz\t1\n")
    bench = load(tmp_path)
    (query,) = bench.queries
    assert [(sorted(a.units), a.grade) for a in query.aspects] == [(["a"], 2), (["b"], 1)]
    assert not bench.has_categories and bench.skipped == ["query q9: not in queries.jsonl"]


def test_beir_loader_reads_line_separators_in_text_and_title_only_documents(tmp_path):
    """A JSONL line holds U+2028 / U+0085 as they are (mrag bench writes ensure_ascii=False): one record, not
    a cut; a document with a title and no text is searched by its title, one with neither is skipped."""
    (tmp_path / "qrels").mkdir()
    rows = [{"_id": "a", "title": "", "text": "Bees fan\u2028their hive.\x85Cool air", "category": "x"},
            {"_id": "b", "title": "Roman aqueducts", "text": "", "category": "y"},
            {"_id": "c", "title": "", "text": "", "category": "y"}]
    (tmp_path / "corpus.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n",
                                          encoding="utf-8")
    (tmp_path / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "bees\u2028and water?"},
                                                       ensure_ascii=False) + "\n", encoding="utf-8")
    (tmp_path / "qrels" / "test.tsv").write_text("q1\ta\t1\nq1\tb\t1\nq2\tc\t1\n")
    bench = load(tmp_path)
    assert [(d.id, d.text) for d in bench.docs] == [("a", rows[0]["text"]), ("b", "Roman aqueducts")]
    assert bench.has_categories and [q.text for q in bench.queries] == ["bees\u2028and water?"]
    assert bench.skipped == ["document c: no text and no title", "query q2: not in queries.jsonl"]


def write_beir(folder: Path, qrels: str, queries: list[dict] | None = None, corpus: list[dict] | None = None) -> Path:
    """A BEIR folder: documents a, b, c (categories x, y, z), queries q1, q2 unless given, the qrels text."""
    corpus = corpus or [{"_id": i, "title": "", "text": t, "category": c}
                        for i, t, c in [("a", "alpha", "x"), ("b", "beta", "y"), ("c", "gamma", "z")]]
    queries = queries or [{"_id": "q1", "text": "alpha and beta?"}, {"_id": "q2", "text": "gamma?"}]
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    (folder / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in corpus))
    (folder / "queries.jsonl").write_text("".join(json.dumps(r) + "\n" for r in queries))
    (folder / "qrels" / "test.tsv").write_text(qrels)
    return folder


def test_beir_skips_a_query_naming_a_document_the_corpus_lacks(tmp_path):
    """q1 needs a, b and atlantis: scored as needing two documents before; now skipped, as the other layouts do."""
    bench = load(write_beir(tmp_path, "q1\ta\t1\nq1\tb\t1\nq1\tatlantis\t1\nq2\tc\t1\n"))
    assert [(q.id, q.n) for q in bench.queries] == [("q2", 1)]
    assert bench.skipped == ["query q1: unknown document(s) ['atlantis']"]


def test_beir_refuses_a_repeated_query_id_and_skips_empty_texts(tmp_path):
    twice = [{"_id": "q1", "text": "alpha and beta?"}, {"_id": "q2", "text": "gamma?"},
             {"_id": "q1", "text": "kimchi?"}]
    with pytest.raises(ValueError, match=r"queries.jsonl: line 3: query id 'q1' repeats line 1: give each query"):
        load(write_beir(tmp_path / "twice", "q1\ta\t1\n", twice))
    blank = [{"_id": "q1", "text": "  "}, {"_id": "q2", "text": "gamma?"}]
    bench = load(write_beir(tmp_path / "blank", "q1\ta\t1\nq2\tc\t1\n", blank))
    assert [q.id for q in bench.queries] == ["q2"] and bench.skipped == ["query q1: empty text"]
    repeated_doc = [{"_id": "a", "text": "alpha"}, {"_id": "a", "text": "knitting"}]
    with pytest.raises(ValueError, match=r"corpus.jsonl: line 2: document id 'a' repeats line 1"):
        load(write_beir(tmp_path / "doc", "q1\ta\t1\n", corpus=repeated_doc))


def test_wikipedia_and_topic_queries_with_empty_text_are_skipped(tmp_path):
    articles, queries = write_wikipedia(tmp_path, False)
    queries.write_text(json.dumps([QUERIES[0] | {"text": " "}, QUERIES[1]]))
    bench = load(articles, queries)
    assert [q.id for q in bench.queries] == ["q0001"] and bench.skipped == ["query 0: empty text"]
    write_topics(tmp_path / "topics")
    (tmp_path / "tq.json").write_text(json.dumps({"2": [{"related": ["acids", "salts"], "text": ""}]}))
    assert load(tmp_path / "topics", tmp_path / "tq.json").skipped == ["query 2/0: empty text"]


@pytest.mark.parametrize("name, content, message", [
    ("queries.jsonl", '{"_id": "q1"}\n', r"queries.jsonl: line 1 has no 'text' field: every record needs one"),
    ("corpus.jsonl", '{"text": "alpha"}\n', r"corpus.jsonl: line 1 has no '_id' field"),
    ("corpus.jsonl", '{"_id": "a", "text": "alpha"}\n\n{"_id": "b", "text": \n',
     r"corpus.jsonl: invalid JSON at line 3 \(Expecting value\): fix or remove the line"),
    ("queries.jsonl", '["q1", "alpha?"]\n', r"queries.jsonl: line 1 is not a JSON object"),
    ("qrels/test.tsv", "q1\ta\t1.5\n", r"test.tsv: line 1: grade '1.5' is not a whole number"),
    ("qrels/test.tsv", "q1\ta\t1\nq1\tb\tx\t0\t1\n", r"test.tsv: line 2 has 5 columns \(line 1: 3\): qrels lines are"),
])
def test_beir_mistakes_are_one_line_errors_naming_file_and_line(tmp_path, name, content, message):
    folder = write_beir(tmp_path, "q1\ta\t1\n")
    (folder / name).write_text(content)
    with pytest.raises(ValueError, match=message):
        load(folder)


def test_beir_text_must_be_utf8_and_may_start_with_a_byte_order_mark(tmp_path):
    folder = write_beir(tmp_path, "q1\ta\t1\n")
    (folder / "corpus.jsonl").write_bytes(b'{"_id": "a", "text": "alpha"}\n{"_id": "b", "text": "tr\xe8s"}\n')
    with pytest.raises(ValueError, match=r"corpus.jsonl: not UTF-8 text \(line 2, byte 54\): save it as UTF-8"):
        load(folder)
    (folder / "corpus.jsonl").write_bytes(b"\xef\xbb\xbf" + '{"_id": "a", "text": "très"}\r\n'.encode())
    assert [(d.id, d.text) for d in load(folder).docs] == [("a", "très")]


@pytest.mark.parametrize("qrels", [
    "query-id\tcorpus-id\tscore\nq1\ta\t1.0\nq1\tb\t2\nq2\tc\t0\n",  # a grade written 1.0
    "query-id corpus-id score\nq1 a 1\nq1  b 2\nq2 c 0\n",  # spaces
    "q1 0 a 1\nq1 0 b 2\nq2 0 c 0\n",  # TREC: query iteration document grade
    "query-id\tQ0\tcorpus-id\tscore\nq1\t0\ta\t1\nq1\t0\tb\t2\n",
])
def test_beir_qrels_in_trec_and_space_separated_forms(tmp_path, qrels):
    bench = load(write_beir(tmp_path, qrels))
    (query,) = bench.queries
    assert [(sorted(a.units), a.grade) for a in query.aspects] == [(["a"], 1), (["b"], 2)]


def test_folders_missing_a_file_say_what_the_layouts_need(tmp_path):
    folder = write_beir(tmp_path / "dev", "q1\ta\t1\n")
    (folder / "qrels" / "test.tsv").rename(folder / "qrels" / "dev.tsv")
    with pytest.raises(ValueError, match=r"has no qrels/test.tsv \(it has qrels/dev.tsv\): evaluation reads the test "):
        load(folder)
    folder = write_beir(tmp_path / "csv", "q1\ta\t1\n")
    (folder / "corpus.jsonl").rename(folder / "corpus.csv")
    with pytest.raises(ValueError, match=r"is no BEIR folder \(corpus.jsonl, queries.jsonl and qrels/test.tsv; "
                                         r"it holds corpus.csv, qrels/, queries.jsonl\)"):
        load(folder)


def test_loaders_name_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such corpus"):
        load(tmp_path / "nope.json", tmp_path / "q.json")
    articles, _ = write_wikipedia(tmp_path, False)
    with pytest.raises(ValueError, match="needs --queries"):
        load(articles)


def test_metrics_by_hand():
    # aspects a (category X) and b (category Y); fetched c(X), a(X), d(Z), b(Y)
    aspects = [Aspect(frozenset({"a"}), frozenset({"X"})), Aspect(frozenset({"b"}), frozenset({"Y"}))]
    category = {"a": "X", "b": "Y", "c": "X", "d": "Z"}
    records = query_metrics(["c", "a", "d", "b"], aspects, category, k_max=4)
    assert [r["k"] for r in records] == [1, 2, 3, 4]
    k1, k2, k3, k4 = records
    # k=1: no document found; category X (of aspect a) already found via c -> 1/2
    assert (k1["success"], k1["success_ratio"], k1["category_success"], k1["category_ratio"]) == (0, 0.0, 0, 0.5)
    assert k1["weighted_ratio"] == pytest.approx((2 * 0 + 0.5) / 3)
    assert (k2["success_ratio"], k2["category_ratio"], k3["success_ratio"]) == (0.5, 0.5, 0.5)
    assert k2["weighted_ratio"] == pytest.approx((2 * 0.5 + 0.5) / 3)
    assert (k4["success"], k4["success_ratio"], k4["category_success"], k4["weighted_ratio"]) == (1, 1.0, 1, 1.0)
    # nDCG@2: a at rank 2 -> (2^1-1)/log2(3); ideal: two hits at ranks 1, 2
    assert k2["ndcg"] == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)))


def test_aspects_of_one_category_count_it_once_and_a_topic_named_twice_is_one_aspect(tmp_path):
    # aspects tax/A, tax/B, env/C; fetched tax/D: one of the two categories {tax, env} -> 1/2 (was 2/3, per aspect)
    aspects = [Aspect(frozenset({u}), frozenset({c})) for u, c in (("A", "tax"), ("B", "tax"), ("C", "env"))]
    (k1,) = query_metrics(["D"], aspects, {"A": "tax", "B": "tax", "C": "env", "D": "tax"}, k_max=1)
    assert (k1["category_ratio"], k1["category_success"], k1["success_ratio"]) == (0.5, 0, 0.0)
    articles, queries = write_wikipedia(tmp_path, False)
    queries.write_text(json.dumps([{"topics": ["Aqueduct", "Aqueduct", "Honeybee"], "text": "Aqueducts and bees."}]))
    (query,) = load(articles, queries).queries
    assert query.n == 2 and [sorted(a.units) for a in query.aspects] == [["d00000"], ["d00002"]]


def test_a_query_of_more_aspects_than_k_max_is_scored_up_to_n_plus_10(tmp_path):
    # 26 articles of one query: records stopped at k = 32 (K_MAX), so n = 26 had no k = n + 10 (nor would n = 33)
    articles = [{"title": f"T{i}", "text": f"Topic {i} text number {i}.", "label": f"c{i}"} for i in range(40)]
    (tmp_path / "a.json").write_text(json.dumps(articles))
    (tmp_path / "q.json").write_text(json.dumps([{"topics": [f"T{i}" for i in range(26)], "text": "Topics."}]))
    bench = load(tmp_path / "a.json", tmp_path / "q.json")
    corpus = harness.embed_corpus(bench, FakeEmbedder(), tmp_path / "cache")
    records = harness.evaluate(bench, corpus, ["standard"])
    assert [r["k"] for r in records] == list(range(1, 37))


def test_recall_at_k_max_is_read_at_k_max_when_records_go_further():
    from mrag.evaluate.metrics import K_MAX, ranking_metrics

    # the relevant unit at place 34: records to k = 35 (n + 10 of a larger query) must not count it at 32
    fetched = [f"x{i}" for i in range(33)] + ["r"] + ["y"]
    records = [r | {"query": "q", "n": 1, "strategy": "s"}
               for r in query_metrics(fetched, [Aspect(frozenset({"r"}), frozenset())], {}, k_max=35)]
    assert ranking_metrics(records)["s"][f"recall@{K_MAX}"] == 0.0


def test_the_gain_plot_pairs_each_strategy_with_the_baseline_on_its_own_queries():
    # fusion answered q0 alone: its gain is q0's, not its mean minus the baseline's over q0 and q1
    assert paired_gain({"q0": 0.5}, {"q0": 0.0, "q1": 1.0}) == 0.5
    assert paired_gain({"a": 0.5, "b": 1.0}, {"a": 0.0, "b": 1.0, "c": 0.0}) == 0.25


def test_ndcg_uses_grades_and_counts_each_aspect_once():
    aspects = [Aspect(frozenset({"a", "a2"}), frozenset(), grade=2), Aspect(frozenset({"b"}), frozenset(), grade=1)]
    # a2 satisfies the grade-2 aspect at rank 1; a at rank 2 earns nothing more; b at rank 3; gain = grade
    dcg = 2 / math.log2(2) + 1 / math.log2(4)
    ideal = 2 / math.log2(2) + 1 / math.log2(3)
    assert ndcg(["a2", "a", "b"], aspects) == pytest.approx(dcg / ideal)


def test_ndcg_of_a_short_list_is_cut_against_the_ideal_of_k_places():
    # three aspects, one unit fetched where k = 10 was asked: nDCG@10 = 1 / (1 + 1/log2 3 + 1/log2 4) = 0.4693,
    # as for the same first unit followed by nine that miss; never 1.0 (the ideal cut at the list's length)
    aspects = [Aspect(frozenset({u}), frozenset()) for u in ("r1", "r2", "r3")]
    short = query_metrics(["r1"], aspects, {}, k_max=10)[-1]["ndcg"]
    padded = query_metrics(["r1", *[f"x{i}" for i in range(9)]], aspects, {}, k_max=10)[-1]["ndcg"]
    assert short == pytest.approx(1 / (1 + 1 / math.log2(3) + 1 / math.log2(4)))
    assert round(short, 4) == 0.4693 and short == pytest.approx(padded)


def test_k_counts_distinct_units_without_off_by_one():
    # three chunks of unit u1 first, then the relevant u2: at k = 1 only u1 is fetched
    units = dedupe_units(["u1", "u1", "u1", "u2", "u3"], k=32)
    assert units == ["u1", "u2", "u3"]
    aspects = [Aspect(frozenset({"u2"}), frozenset({"c"}))]
    records = query_metrics(units, aspects, {"u1": "a", "u2": "c", "u3": "d"}, k_max=3)
    assert [(r["k"], r["success"]) for r in records] == [(1, 0), (2, 1), (3, 1)]


class CountingEmbedder(FakeEmbedder):
    def __init__(self) -> None:
        super().__init__()
        self.texts = 0

    def embed_batch(self, texts):
        self.texts += len(texts)
        return super().embed_batch(texts)


def test_harness_embeds_once_and_scores_every_strategy(tmp_path):
    bench = load(*write_wikipedia(tmp_path, True))
    embedder = CountingEmbedder()
    corpus = harness.embed_corpus(bench, embedder, tmp_path / "cache")
    strategies = ["standard", "mrag", "mrag-paper", "segment+standard", "fusion"]
    records = harness.evaluate(bench, corpus, strategies, k_max=4)
    first = embedder.texts
    assert first > len(bench.docs)
    # a second run (same model, corpus and queries) embeds nothing
    again = harness.embed_corpus(bench, embedder, tmp_path / "cache")
    assert harness.evaluate(bench, again, strategies, k_max=4) == records
    assert embedder.texts == first
    # fusion applies only to the query that has sub-queries
    assert {(r["strategy"], r["query"]) for r in records if r["strategy"] == "fusion"} == {("fusion", "q0000")}
    assert len([r for r in records if r["strategy"] == "standard"]) == 2 * 4
    summary = harness.summarize(records)
    at_n = [r["success_ratio"] for r in records if r["strategy"] == "standard" and r["k"] == r["n"]]
    assert summary["standard"]["doc"] == pytest.approx(sum(at_n) / len(at_n))
    table = markdown_table(records, summary, "tiny")
    assert "| n | standard | mrag |" in table and "| mean n>=2 (over queries) |" in table
    multi = {r["query"] for r in records if r["strategy"] == "standard" and r["n"] >= 2}
    fused = {r["query"] for r in records if r["strategy"] == "fusion" and r["n"] >= 2}
    assert fused < multi  # fusion ran on fewer queries: the table says so, its cells are not paired
    assert f"standard {len(multi)}, " in table and f"fusion {len(fused)}." in table
    assert {p.name for p in plot(records, tmp_path)} == {"gain_over_standard.png", "weighted_ratio_box.png"}


def test_the_cache_follows_the_model_s_vectors_not_only_its_name(tmp_path):
    """A model folder whose files were replaced under its name kept serving the old model's cached vectors."""
    bench = load(*write_wikipedia(tmp_path, False))

    class Retrained(FakeEmbedder):  # the same name and sizes, other vectors
        def vectors(self, text):
            return super().vectors(text + " retrained")

    first = harness.embed_corpus(bench, FakeEmbedder(), tmp_path / "cache")
    assert harness.embed_corpus(bench, FakeEmbedder(), tmp_path / "cache").query_cache == first.query_cache
    assert harness.embed_corpus(bench, Retrained(), tmp_path / "cache").query_cache != first.query_cache


def test_a_query_cache_cut_by_a_crash_is_computed_again(tmp_path):
    """A cut .npz broke every later run with BadZipFile; it is now written whole or not at all, and one found
    unreadable is computed again and replaced."""
    bench = load(*write_wikipedia(tmp_path, False))
    embedder = CountingEmbedder()
    corpus = harness.embed_corpus(bench, embedder, tmp_path / "cache")
    texts = harness.query_texts(bench)
    first = harness.embed_queries(corpus, texts)
    (cached,) = corpus.query_cache.glob("queries-*.npz")
    assert [p.name for p in corpus.query_cache.iterdir() if p.suffix == ".tmp"] == []
    whole = cached.read_bytes()
    cached.write_bytes(whole[:len(whole) // 2])
    used = embedder.texts
    again = harness.embed_queries(corpus, texts)
    assert embedder.texts > used and cached.read_bytes() == whole  # embedded again, the file whole again
    assert all((again[t].standard == first[t].standard).all() for t in first)
    harness.embed_queries(corpus, texts)
    assert embedder.texts == used + len(set(texts))  # and read from then on


class LayeredFake(FakeEmbedder):
    """The fake embedder, reporting a layer and pooling as `mrag eval`'s title does."""

    def info(self):
        return super().info() | {"layer": -1, "pooling": "mean"}


@pytest.fixture
def fake_transformer(monkeypatch):
    """`run_eval`'s TransformerEmbedder(...) is the fake: no model is loaded."""
    import mrag.embed.transformer as transformer

    monkeypatch.setattr(transformer, "TransformerEmbedder", lambda *args, **kwargs: LayeredFake())


def test_a_strategy_named_twice_is_evaluated_once(tmp_path, fake_transformer):
    from mrag.evaluate.run import run_eval

    articles, queries = write_wikipedia(tmp_path, False)
    out = run_eval(str(articles), str(queries), strategies=["standard", "mrag", "standard"], cache=str(tmp_path / "c"))
    assert [r["strategy"] for r in out["records"] if r["k"] == 1] == ["standard", "mrag"] * 2
    assert out["summary"]["standard"]["queries"] == 2 and out["table"].count("| n | standard | mrag |") == 1


def test_a_set_without_categories_reports_no_category_numbers(tmp_path, fake_transformer):
    """BEIR without a "category" per document: the summary and the table left a column of 0.000 before."""
    from mrag.evaluate.run import run_eval

    plain = [{"_id": i, "title": "", "text": t} for i, t in [("a", "alpha"), ("b", "beta"), ("c", "gamma")]]
    folder = write_beir(tmp_path / "beir", "q1\ta\t1\nq1\tb\t1\nq2\tc\t1\n", corpus=plain)
    out = run_eval(str(folder), None, strategies=["standard"], cache=str(tmp_path / "c"))
    assert set(out["summary"]["standard"]) == {"doc", "ndcg", "queries"}
    doc = out["summary"]["standard"]["doc"]
    assert "documents; the set has no categories" in out["table"] and f"| **{doc:.3f}** |" in out["table"]
    assert " / " not in out["table"].split("Single-aspect")[0].split("All queries")[0]
    grouped = run_eval(str(write_beir(tmp_path / "grouped", "q1\ta\t1\nq1\tb\t1\n")), None,
                       strategies=["standard"], cache=str(tmp_path / "c"))
    assert "category" in grouped["summary"]["standard"] and "(documents / categories)" in grouped["table"]


def test_eval_command_writes_records_table_plots(tmp_path, reuse_minilm):
    articles, queries = write_wikipedia(tmp_path, False)
    args = ["eval", "--corpus", str(articles), "--queries", str(queries), "--strategies", "standard,mrag",
            "--cache", str(tmp_path / "cache"), "-o", str(tmp_path / "out"), "--json"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    out = json.loads(result.output.strip().splitlines()[-1])
    assert set(out["summary"]) == {"standard", "mrag"}
    assert 0 <= out["summary"]["mrag"]["doc"] <= 1 and out["skipped"] == ["query 2: unknown document(s) ['Atlantis']"]
    names = {Path(f).name for f in out["files"]}
    assert {"records.jsonl", "table.md", "summary.json", "gain_over_standard.png"} <= names
    records = [json.loads(line) for line in (tmp_path / "out" / "records.jsonl").read_text().splitlines()]
    assert {r["k"] for r in records} == set(range(1, 33))
    bad = CliRunner().invoke(cli, [*args[:5], "--strategies", "nonsense"])
    assert bad.exit_code == 2 and "unknown strategy" in bad.output  # a usage error
    bare = tmp_path / "bare.json"  # no query carries sub-queries: fusion is said to be left out, not missing
    bare.write_text(json.dumps([q | {"fusion": []} for q in QUERIES]))
    fused = CliRunner().invoke(cli, ["eval", "--corpus", str(articles), "--queries", str(bare), "--strategies",
                                     "standard,fusion", *args[7:9], "--json"])
    out = json.loads(fused.output.strip().splitlines()[-1])
    assert set(out["summary"]) == {"standard"} and out["skipped"][-1].startswith(
        "strategy fusion: no query carries the sub-queries it needs")


def test_ranking_metrics_by_hand():
    """q1 (n = 1) finds its document at rank 3, q2 (n = 1) at rank 1, q3 (n = 2) is not single-aspect."""
    from mrag.evaluate.metrics import ranking_metrics

    def rows(query, n, first, ndcg10):
        return [{"strategy": "s", "query": query, "n": n, "k": k, "success_ratio": float(k >= first),
                 "ndcg": ndcg10 if k == 10 else -1.0} for k in range(1, 13)]

    records = rows("q1", 1, 3, 0.5) + rows("q2", 1, 1, 1.0) + rows("q3", 2, 20, 0.0)
    single = ranking_metrics(records, only_n=1)["s"]
    assert single == {"hit@1": 0.5, "hit@5": 1.0, "mrr@10": pytest.approx((1 / 3 + 1) / 2), "ndcg@10": 0.75,
                      "recall@32": 1.0, "queries": 2}
    every = ranking_metrics(records)["s"]  # BEIR: all queries; q3 found nothing within 12
    assert every["queries"] == 3 and every["hit@5"] == pytest.approx(2 / 3) and every["mrr@10"] == pytest.approx(4 / 9)


def test_the_query_cache_is_written_with_the_umask_s_mode(tmp_path):
    """A cache shared between users stays readable: the temporary file was made by mkstemp, mode 0600."""
    import os

    import numpy as np

    from mrag.evaluate.harness import read_npz, write_npz

    old = os.umask(0o022)
    try:
        write_npz(tmp_path / "q.npz", standard=np.zeros((2, 3), np.float32))
    finally:
        os.umask(old)
    assert (tmp_path / "q.npz").stat().st_mode & 0o777 == 0o644 and list(tmp_path.iterdir()) == [tmp_path / "q.npz"]
    assert read_npz(tmp_path / "q.npz", 2)["standard"].shape == (2, 3)
