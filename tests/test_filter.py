"""Filtered search (`where`, mrag.retrieve.filtered): every space ranks only the rows a SQL filter keeps, as if
the others were struck out of its full ranking; on every path (exact in memory, both regimes; the in-memory and
LanceDB full-text engines; LanceDB's ANN indexes; HNSW graphs), through the library, the CLI and the server; bad
filters are clear errors that change nothing."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pytest
from click.testing import CliRunner
from conftest import FakeEmbedder
from test_ann import SeededEmbedder, docs
from test_server import TOKEN, ScriptedGenerator, serving

from mrag.cli import cli
from mrag.index import Index
from mrag.retrieve import ann, filter_sql, filtered, search
from mrag.retrieve.bm25 import Bm25
from mrag.retrieve.exact import Exact
from mrag.retrieve.rescore import RescoreRanker
from mrag.retrieve.types import QueryVectors, Voter
from mrag.server import Settings

QUERY = "Roman roads and topic 3. Chess engines and document number 12."
STRATEGIES = ["standard", "mrag", "mrag-paper", "mrag-std", "segment+standard", "segment-bm25", "bm25", "hybrid",
              "mrag-bm25", "split"]


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def struck_out(full, mask: np.ndarray, n: int):
    """The definition: each line's full ranking (all n rows) with the rows outside `mask` struck out."""

    def rank(chosen, queries, c):
        rows, sims = full(chosen, queries, n)
        out_rows = np.full((len(queries), len(chosen), c), -1, dtype=np.int64)
        out_sims = np.full((len(queries), len(chosen), c), -np.inf)
        for p in range(len(queries)):
            for s in range(len(chosen)):
                kept = [(r, v) for r, v in zip(rows[p, s], sims[p, s]) if r >= 0 and mask[r]][:c]
                out_rows[p, s, : len(kept)] = [r for r, _ in kept]
                out_sims[p, s, : len(kept)] = [v for _, v in kept]
        return out_rows, out_sims

    return rank


def test_a_hand_worked_filter():
    # five rows on the unit circle at 0, 10, 20, 30 and 40 degrees; the query at 0 degrees ranks them 0..4.
    # Keeping rows 1 and 3: the ranking is 1, 3, then nothing (c = 3)
    angles = np.radians([0, 10, 20, 30, 40])
    standard = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
    heads = np.zeros((1, 5, 0), np.float32)
    keep = filtered.Allowed(np.array([1, 3]), np.array([False, True, False, True, False]))
    ranker = filtered.Filtered(Exact(standard, heads, precision="fp32"), keep,
                               lambda rows: Exact(standard[rows], heads[:, rows], precision="fp32"))
    query = QueryVectors(np.array([1, 0], np.float32), np.zeros((1, 0), np.float32))
    rows, sims = ranker([Voter("standard", "standard", 1.0)], [query], 3)
    assert rows.tolist() == [[[1, 3, -1]]]
    assert np.allclose(sims[0, 0, :2], np.cos(np.radians([10, 30]))) and sims[0, 0, 2] == -np.inf


@pytest.mark.parametrize("share", [0.0, 1.0])  # the copy of the rows kept, or the whole matrix ranked deeper
@pytest.mark.parametrize("m", [0, 1, 9, 40, 250, 399, 400])
def test_the_filtered_ranking_is_the_full_one_with_other_rows_struck_out(monkeypatch, share, m):
    monkeypatch.setattr(filtered, "SUBSET_SHARE", share)
    rng = np.random.default_rng(m)
    n, h, d, dim = 400, 3, 4, 12
    standard = unit(rng.standard_normal((n, dim))).astype(np.float32)
    heads = unit(rng.standard_normal((h, n, d))).astype(np.float32)
    full = Exact(standard, heads, precision="fp32")
    rows = np.sort(rng.choice(n, m, replace=False))
    mask = np.zeros(n, bool)
    mask[rows] = True
    made = []

    def subset(kept):
        made.append(len(kept))
        return Exact(standard[kept], heads[:, kept], precision="fp32")

    ranker = filtered.Filtered(full, filtered.Allowed(rows, mask), subset)
    chosen = [Voter("standard", "standard", 1.0)] + [Voter(f"head:{i}", "heads", 1.0) for i in range(h)]
    queries = [QueryVectors(unit(rng.standard_normal(dim)).astype(np.float32),
                            unit(rng.standard_normal((h, d))).astype(np.float32)) for _ in range(3)]
    got_rows, got_sims = ranker(chosen, queries, 7)
    want_rows, want_sims = struck_out(full, mask, n)(chosen, queries, 7)
    assert got_rows.tolist() == want_rows.tolist()
    assert np.allclose(got_sims, want_sims, rtol=0, atol=1e-6)
    assert made == ([m] if share == 1.0 and 0 < m < n else [])  # one copy, only of few rows


@pytest.mark.parametrize("m, again", [(150, ("copy", 1, ["standard"], 7)), (300, ("full", 1, ["standard"], 400))])
def test_lines_that_fall_short_are_ranked_again(m, again):
    # the rows kept are the m of 400 farthest from part 0 in the standard space (more than a quarter: ranked deeper,
    # 2 x c x ceil(n / m) rows, which hold none of them for that line); that part and voter are ranked again, over a
    # copy of the kept rows, or where the copy would hold more than half the matrix over every row
    rng = np.random.default_rng(7)
    n, h, d, dim = 400, 2, 4, 12
    standard = unit(rng.standard_normal((n, dim))).astype(np.float32)
    heads = unit(rng.standard_normal((h, n, d))).astype(np.float32)
    queries = [QueryVectors(unit(rng.standard_normal(dim)).astype(np.float32),
                            unit(rng.standard_normal((h, d))).astype(np.float32)) for _ in range(2)]
    rows = np.sort(np.argsort(standard @ queries[0].standard)[:m])
    mask = np.zeros(n, bool)
    mask[rows] = True
    full = Exact(standard, heads, precision="fp32")
    asked = []

    def spy(name):
        def rank(chosen, parts, c):
            asked.append((name, len(parts), [v.name for v in chosen], c))
            return (full if name == "full" else Exact(standard[rows], heads[:, rows], precision="fp32"))(
                chosen, parts, c)
        return rank

    ranker = filtered.Filtered(spy("full"), filtered.Allowed(rows, mask), lambda kept: spy("copy"))
    chosen = [Voter("standard", "standard", 1.0)] + [Voter(f"head:{i}", "heads", 1.0) for i in range(h)]
    got = ranker(chosen, queries, 7)
    want = struck_out(full, mask, n)(chosen, queries, 7)
    assert got[0].tolist() == want[0].tolist() and np.allclose(got[1], want[1], rtol=0, atol=1e-6)
    assert asked == [("full", 2, ["standard", "head:0", "head:1"], 2 * 7 * -(-n // m)), again]


def test_the_functions_a_filter_calls():
    # names before a bracket, outside strings, comments and quoted names, less SQL's words (IN, NOT, ...)
    where = ("""lower(source) LIKE 'repeat(%' AND "odd(name" = 1 AND id IN ('a') AND NOT (Length (text) > 3) """
             "/* note(1) */ OR lower(x) -- see abs(2)\n OR position IS DISTINCT FROM (1)")
    assert filter_sql.functions(where) == ["lower", "length"]
    filter_sql.check_served(where)
    for called in ["length(repeat(text, 4000)) > 0", "length(repeat/**/(text, 9)) > 0", 'length("repeat"(text, 9)) > 0',
                   "length(`repeat`(text, 9)) > 0", "source = 'a' -- it's\nOR length(repeat(text, 3)) > 0 -- '\n"]:
        with pytest.raises(ValueError, match=r"no repeat\(\) in a filter"):
            filter_sql.check_served(called)
    with pytest.raises(ValueError, match=r"no `\|\|`"):
        filter_sql.check_served("text || text || text = 'x'")


@pytest.mark.parametrize("where, told", [
    ("position" + " + 1" * 700 + " > 0", "701 operators; at most 400"),  # 700 crashed LanceDB (SIGSEGV)
    ("(" * 70 + "position > 0" + ")" * 70, "nests brackets 70 deep"),
    ("source = $$x$$", "`$` outside its strings"),  # LanceDB's planner panicked
    ("source = E'x'", "prefixed string"),
])
def test_filters_lancedb_cannot_take_safely_are_refused_first(where, told):
    with pytest.raises(ValueError, match=re.escape(told)):
        filter_sql.check_where(where)


def test_a_filter_may_end_with_a_comment_and_take_its_strings_as_they_are():
    assert filter_sql.check_where("source LIKE '%$%' -- it's 'quoted' (x)") is not None
    assert filter_sql.bare("a = 'it''s' AND \"we\"\"ird\" = /* x /* y */ z */ 1 -- t") == "a = '' AND we__ird =   1  "


def test_full_text_in_memory_ranks_only_the_rows_kept():
    texts = [f"bees {'roads ' * (i % 4)} tides {i % 3} chess {i % 5}" for i in range(200)]
    index = Bm25.build(pa.array(texts))
    mask = np.arange(200) % 3 == 1
    for query in ["bees roads", "tides chess", "nothing known"]:
        rows, scores = index.search([query], 10, mask)[0]
        every, all_scores = index.search([query], 200)[0]
        kept = mask[every]
        assert rows.tolist() == every[kept][:10].tolist()
        assert np.allclose(scores, all_scores[kept][:10])


@pytest.fixture
def seeded(tmp_path) -> Index:
    index = Index.open(tmp_path / "db", embedder=SeededEmbedder())
    index.add([{**d, "source": f"part{i % 4}/d{i}.txt", "metadata": {"tag": "odd" if i % 2 else "even"}}
               for i, d in enumerate(docs(150))])
    return index


def ids(hits) -> list[str]:
    return [h.id for h in hits]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_finds_only_rows_the_filter_keeps(seeded, strategy):
    hits = seeded.search(QUERY, k=8, strategy=strategy, where="source LIKE 'part1/%'")
    assert hits and all(h.source.startswith("part1/") for h in hits)
    if strategy in ("standard", "bm25"):  # one space: its order over the rows kept
        every = seeded.search(QUERY, k=150, strategy=strategy)
        assert ids(hits) == [h.id for h in every if h.source.startswith("part1/")][:8]


def test_both_regimes_and_both_full_text_engines_agree(seeded, monkeypatch):
    where = "source LIKE 'part2/%' AND position = 0"
    found = {}
    for share in (0.0, 1.0):
        monkeypatch.setattr(filtered, "SUBSET_SHARE", share)
        filtered._cache.clear()
        for engine in ("memory", "lancedb"):
            seeded.store.fulltext = engine
            found[(share, engine)] = {s: ids(seeded.search(QUERY, k=6, strategy=s, where=where)) for s in STRATEGIES}
    first = next(iter(found.values()))
    assert all(f == first for f in found.values()), found
    assert all(first.values())


def test_copies_of_the_rows_kept_stay_within_their_budget(seeded):
    filtered._cache.clear()
    # 37 rows of 150 each (a quarter is 37.5): each copied, but the three hold more than half of 150
    wheres = ["source LIKE 'part2/%'", "source LIKE 'part3/%'", "source LIKE 'part0/%' AND id != 'd0#0'"]
    for where in wheres:
        seeded.search(QUERY, k=3, strategy="mrag", where=where, exact=True)
    kept = {w: entry for (_, w), (_, entry) in filtered._cache.items()}
    assert [len(kept[w].rows) for w in wheres] == [37, 37, 37]
    assert [kept[w].subset is not None for w in wheres] == [False, True, True]
    assert all(h.source.startswith("part2/") for h in seeded.search(QUERY, k=3, where=wheres[0], exact=True))
    assert kept[wheres[0]].subset is not None and kept[wheres[1]].subset is None  # copied again; the oldest goes


def test_copies_are_budgeted_per_index(tmp_path):
    filtered._cache.clear()
    big = Index.open(tmp_path / "big", embedder=SeededEmbedder())
    big.add([{**d, "source": f"part{i % 4}/d{i}.txt"} for i, d in enumerate(docs(40))])
    small = Index.open(tmp_path / "small", embedder=SeededEmbedder())
    small.add(docs(8))
    big.search(QUERY, k=3, strategy="mrag", where="source LIKE 'part1/%'", exact=True)  # 10 of 40 rows: copied
    small.search(QUERY, k=3, strategy="mrag", where="id = 'd1#0'", exact=True)  # 1 of 8: copied, and half of 8 < 11
    assert sorted((len(entry.rows), entry.subset is not None) for _, entry in filtered._cache.values()) == [
        (1, True), (10, True)]


def test_metadata_is_json_text_a_filter_can_match(seeded):
    hits = seeded.search("topic three", k=10, strategy="standard", where="""metadata LIKE '%"tag": "odd"%'""")
    assert len(hits) == 10 and {h.metadata["tag"] for h in hits} == {"odd"}


def test_ann_indexes_and_graphs_filter_as_exact_search_does(seeded):
    where = "source LIKE 'part3/%'"
    exact = {s: ids(seeded.search(QUERY, k=6, strategy=s, where=where, exact=True))
             for s in ("standard", "mrag", "bm25")}
    seeded.build_ann("IVF_FLAT", nprobes=1000)  # every partition probed: LanceDB's prefilter is exact too
    for strategy, want in exact.items():
        assert ids(seeded.search(QUERY, k=6, strategy=strategy, where=where)) == want, strategy
        assert ids(seeded.search(QUERY, k=6, strategy=strategy, where=where, candidates=0)) == want, strategy
    seeded.build_ann("HNSW")  # a filtered search ranks the rows kept exactly, not through the graphs
    for strategy, want in exact.items():
        assert ids(seeded.search(QUERY, k=6, strategy=strategy, where=where)) == want, strategy


def test_ann_search_with_a_filter_finds_k_rows_however_few_partitions_it_probes(seeded, monkeypatch):
    where = "source LIKE 'part3/%'"  # 37 rows of 150, spread over the 12 partitions
    exact = {s: ids(seeded.search(QUERY, k=6, strategy=s, where=where, exact=True)) for s in ("standard", "mrag")}
    seeded.build_ann("IVF_FLAT", nprobes=1)  # one partition holds about 3 of the rows kept
    for strategy, want in exact.items():  # few rows kept: ranked exactly, no index asked
        assert ids(seeded.search(QUERY, k=6, strategy=strategy, where=where)) == want, strategy
        assert ids(seeded.search(QUERY, k=6, strategy=strategy, where=where, candidates=0)) == want, strategy
    monkeypatch.setattr(ann, "EXACT_KEPT", 10)  # more kept than that: the indexes probe on until c rows are found
    for strategy in exact:
        for candidates in (None, 0, 20):
            hits = seeded.search(QUERY, k=6, strategy=strategy, where=where, candidates=candidates)
            assert len(hits) == 6 and all(h.source.startswith("part3/") for h in hits), (strategy, candidates)
    # a depth c of at least the rows kept: ranked exactly too (the indexes would probe every partition for c)
    asked = []

    def spy(*args, **kwargs):
        asked.append(kwargs.get("rows"))
        return RescoreRanker(*args, **kwargs)

    monkeypatch.setattr(search, "RescoreRanker", spy)
    for strategy in exact:
        want = ids(seeded.search(QUERY, k=6, strategy=strategy, where=where, c=37, exact=True))
        assert ids(seeded.search(QUERY, k=6, strategy=strategy, where=where, c=37)) == want, strategy
    assert len(asked) == 2 and all(rows is not None and len(rows) == 37 for rows in asked)


def test_a_filter_sees_the_rows_written_after_it_was_first_used(seeded):
    where = "source LIKE 'fresh/%'"
    assert seeded.search(QUERY, where=where) == []
    seeded.add([{"id": "new", "text": "Roman roads and bees.", "source": "fresh/new.txt"}])
    assert ids(seeded.search(QUERY, where=where)) == ["new#0"]
    seeded.delete("new")
    assert seeded.search(QUERY, where=where) == []


@pytest.mark.parametrize("where, told", [
    ("nope = 1", "No field named nope"),
    ('title = "bees"', "No field named bees; a string takes single quotes: 'bees'"),  # SQL's "..." name a column
    ('title = "it\'s"', "a string takes single quotes: 'it''s'"),
    ("\"Title\" = 'x'", 'No field named "Title".)'),  # a column named in double quotes: no word on strings
    ("position > 'x'", "could not convert"),
    ("CAST(text AS INT) > 3", "Cannot cast"),  # fails while it runs
    ("metadata.tag = 'odd'", "Cannot access field"),  # metadata is text, not a struct: fails while it runs
    ("source = ", "sql parser error"),
    ("source LIKE 'part1/%' ANDposition = 0", "parser error"),  # LanceDB read `source LIKE 'part1/%'` alone
    ("source LIKE 'part1/%'; position = 0", "parser error"),
])
def test_a_bad_filter_is_a_clear_error_and_changes_nothing(seeded, where, told):
    before = ids(seeded.search(QUERY, k=5))
    for exact in (True, None):
        with pytest.raises(filtered.BadFilter, match="is not valid on the chunk table") as e:
            seeded.search(QUERY, where=where, exact=exact)
        assert told in str(e.value) and ".rs:" not in str(e.value) and "head_norms" not in str(e.value)
    seeded.build_ann("IVF_FLAT")
    with pytest.raises(filtered.BadFilter, match=re.escape(told)):
        seeded.search(QUERY, where=where)
    assert ids(seeded.search(QUERY, k=5, exact=True)) == before and seeded.store.count() == 150


def test_a_comment_at_the_end_and_row_text_that_sounds_like_storage(seeded):
    hits = seeded.search(QUERY, k=5, where="source LIKE 'part1/%' -- the first part")
    assert hits and all(h.source.startswith("part1/") for h in hits)
    seeded.add([{"id": "odd", "text": "the upload timed out after 30 s (os error 110)"}])
    with pytest.raises(filtered.BadFilter, match="Cannot cast"):
        seeded.search(QUERY, where="CAST(text AS INT) > 3", exact=True)


def test_a_filter_must_be_sql_text(index):
    index.add([{"id": "a", "text": "bees"}])
    with pytest.raises(ValueError, match="empty"):
        index.search("bees", where="  ")
    with pytest.raises(TypeError, match="SQL text"):
        index.search("bees", where={"source": "x"})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at most"):
        index.search("bees", where="id = 'a' OR " * 1000 + "true")


def test_a_filter_that_keeps_nothing_embeds_nothing(db_path):
    fake = FakeEmbedder()
    index = Index.open(db_path, embedder=fake)
    index.add([{"id": "a", "text": "bees", "source": "x"}])
    batches = fake.batches
    assert index.search("bees", where="source = 'y'") == []
    assert fake.batches == batches


def test_no_llm_writes_sub_queries_for_a_filter_that_keeps_nothing_or_is_refused(index):
    from mrag.generate import prepare

    index.add([{"id": "a", "text": "bees and honey", "source": "x"}])
    llm = ScriptedGenerator("bees\nhoney")
    empty = prepare(index, "bees?", strategy="mrag-fusion", generator=llm, where="source = 'y'")
    assert empty.context == [] and empty.subqueries == [] and llm.calls == 0
    for where in ("nope = 1", " "):
        with pytest.raises(ValueError):
            prepare(index, "bees?", strategy="mrag-fusion", generator=llm, where=where)
    assert llm.calls == 0
    kept = prepare(index, "bees?", strategy="mrag-fusion", generator=llm, where="source = 'x'")
    assert [c.id for c in kept.context] == ["a#0"] and llm.calls == 1


def test_cli_search_and_ask_take_a_filter(tmp_path, monkeypatch):
    import mrag.index

    db = tmp_path / "db"
    Index.open(db, embedder=FakeEmbedder()).add(
        [{"id": "rome", "text": "Roman aqueducts carried water.", "source": "history/rome.txt"},
         {"id": "bees", "text": "Bees fan their wings to cool the hive.", "source": "nature/bees.txt"}])
    monkeypatch.setattr(mrag.index, "_load_transformer", lambda *a: FakeEmbedder())
    runner = CliRunner()
    result = runner.invoke(cli, ["search", "water and bees", "--db", str(db), "--where", "source LIKE 'nature/%'"])
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["id"] for line in result.stdout.splitlines()] == ["bees#0"]
    result = runner.invoke(cli, ["ask", "water and bees", "--db", str(db), "--no-generate", "--json",
                                 "--where", "source LIKE 'history/%'"])
    assert result.exit_code == 0, result.output
    assert [c["id"] for c in json.loads(result.stdout)["context"]] == ["rome#0"]
    result = runner.invoke(cli, ["search", "bees", "--db", str(db), "--where", "sauce = 'x'"])
    assert result.exit_code == 1 and "the filter \"sauce = 'x'\" is not valid" in result.stderr
    assert "Traceback" not in result.output
    result = runner.invoke(cli, ["search", "bees", "--db", str(db), "--where", "source LIKE 'x/%'", "--plain"])
    assert result.exit_code == 0 and result.stdout.startswith("no hits (does the filter keep any chunk?")


def test_server_search_and_ask_take_a_filter(tmp_path):
    db = tmp_path / "db"
    Index.open(db, embedder=FakeEmbedder()).add(
        [{"id": "rome", "text": "Roman aqueducts carried water.", "source": "history/rome.txt"},
         {"id": "bees", "text": "Bees fan their wings to cool the hive.", "source": "nature/bees.txt"}])
    settings = Settings(db=str(db), token=TOKEN, embedder=FakeEmbedder(), llm=ScriptedGenerator("Water [1]."))
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with serving(settings) as base, httpx.Client(base_url=base, timeout=30, headers=auth) as client:
        r = client.get("/search", params={"query": "water and bees", "where": "source LIKE 'nature/%'"})
        assert r.status_code == 200 and [h["id"] for h in r.json()["hits"]] == ["bees#0"]
        r = client.post("/search", json={"query": "water and bees", "where": "source LIKE 'history/%'"})
        assert r.status_code == 200 and [h["id"] for h in r.json()["hits"]] == ["rome#0"]
        r = client.post("/ask", json={"question": "water and bees", "where": "source LIKE 'history/%'"})
        assert r.status_code == 200 and [c["id"] for c in r.json()["context"]] == ["rome#0"]
        r = client.post("/search", json={"query": "bees", "where": "sauce = 1"})
        assert r.status_code == 400 and "is not valid on the chunk table" in r.json()["detail"]
        r = client.post("/search", json={"query": "bees", "where": ""})
        assert r.status_code == 422
        r = client.get("/search", params={"query": "bees", "where": "length(repeat(text, 4000)) > 0"})
        assert r.status_code == 400 and "no repeat() in a filter" in r.json()["detail"]
        r = client.get("/search", params={"query": "bees", "where": "lower(source) LIKE 'nature/%'"})
        assert r.status_code == 200 and [h["id"] for h in r.json()["hits"]] == ["bees#0"]
        two = [("query", "water and bees"), ("where", "source LIKE 'nature/%'"), ("where", "position >= 0")]
        r = client.get("/search", params=two)  # the last one kept the rows the first would drop
        assert r.status_code == 422 and "more than once: where" in r.json()["detail"]
        r = client.get("/search", params=[("query", "bees"), ("spaces", "standard"), ("spaces", "bm25")])
        assert r.status_code == 200 and r.json()["hits"]


WRITER = """
import sys
from conftest import FakeEmbedder
from mrag.index import Index
index = Index.open(sys.argv[1], embedder=FakeEmbedder())
index.add([{"id": f"fresh{i}", "text": f"bees and honey {i}", "source": "fresh/notes.txt"} for i in range(3)])
index.delete("old1")
"""


def test_a_filter_follows_another_process_s_writes(tmp_path):
    db = tmp_path / "db"
    index = Index.open(db, embedder=FakeEmbedder())
    index.add([{"id": f"old{i}", "text": f"bees and honey {i}", "source": "old/notes.txt"} for i in range(3)])
    assert ids(index.search("bees honey", k=10, where="source LIKE 'fresh/%'")) == []
    assert ids(index.search("bees honey", k=10, where="source LIKE 'old/%'")) == ["old0#0", "old1#0", "old2#0"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, "-c", WRITER, str(db)], check=True, env=env, timeout=120)
    assert sorted(ids(index.search("bees honey", k=10, where="source LIKE 'fresh/%'"))) == [
        "fresh0#0", "fresh1#0", "fresh2#0"]
    assert sorted(ids(index.search("bees honey", k=10, where="source LIKE 'old/%'"))) == ["old0#0", "old2#0"]
