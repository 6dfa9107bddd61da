"""External embedding spaces: spec parsing, storage, voting, selection, bad input, openai/ollama over HTTP."""

from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from lancedb.embeddings import TextEmbeddingFunction, register

from mrag.index import Index
from mrag.retrieve import exact
from mrag.retrieve import strategies as retrieve
from mrag.scales import brute_force_scales
from mrag.spaces import SpaceError, SpaceSpec, parse_space
from mrag.store import Store

DOCS = [
    {"id": "aqueduct", "text": "Roman aqueducts carried water over long distances using gravity."},
    {"id": "algae", "text": "Algae use light for photosynthesis inside chloroplasts."},
    {"id": "bees", "text": "Bees fan their wings to cool the hive in summer."},
    {"id": "volcano", "text": "Volcanoes erupt when magma rises through the crust."},
]
OVERRIDE: dict[str, int] = {}  # set "dim" to make the test function change its dimension


def words_vector(text: str, dim: int) -> list[float]:
    """Hashed bag of words (a different hash than the fake head embedder's)."""
    v = np.zeros(dim)
    for word in re.findall(r"[a-z]+", text.lower()):
        v[int(hashlib.sha1(word.encode()).hexdigest(), 16) % dim] += 1.0
    return (v * 3.0).tolist()  # norm 3 per word: a scale unlike the standard space's


@register("test-words")
class WordsFunction(TextEmbeddingFunction):
    dim: int = 16

    def ndims(self) -> int:
        return self.dim

    def generate_embeddings(self, texts, *args, **kwargs):
        return [words_vector(str(t), OVERRIDE.get("dim", self.dim)) for t in texts]


@pytest.fixture(autouse=True)
def _reset_override():
    OVERRIDE.clear()
    yield
    OVERRIDE.clear()


def test_parse_space_labels_options_and_weight():
    spec = parse_space("mpnet=sentence-transformers:name=/models/all-mpnet-base-v2,device=cpu,normalize=true")
    assert spec == SpaceSpec("mpnet", "sentence-transformers",
                             {"name": "/models/all-mpnet-base-v2", "device": "cpu", "normalize": True})
    assert parse_space("ollama:name=llama3").name == "ollama_llama3"
    assert parse_space("openai").name == "openai" and parse_space("openai").options == {}
    assert parse_space("w=test-words:dim=8,weight=0.5") == SpaceSpec("w", "test-words", {"dim": 8}, 0.5)
    assert SpaceSpec.from_json(parse_space("w=test-words:weight=2").to_json()).weight == 2.0
    # commas inside a JSON list, object or string belong to the value
    assert parse_space('w=test-words:dims=[256,512],tag="a,b",dim=8').options == {
        "dims": [256, 512], "tag": "a,b", "dim": 8}


def test_a_relative_model_path_is_recorded_as_the_folder_it_names_now(tmp_path, monkeypatch):
    """A space added from one working directory and searched or written from another used another folder of
    that relative name (another model's vectors in the space), or none."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "b").mkdir(parents=True)
    spec = parse_space("b=sentence-transformers:name=models/b,device=cpu")
    assert spec.options == {"name": str((tmp_path / "models" / "b").resolve()), "device": "cpu"}  # no folder "cpu"
    assert parse_space("o=ollama:name=llama3").options == {"name": "llama3"}  # no such folder: a model's name
    recorded = SpaceSpec("b", "sentence-transformers", {"name": "models/b", "device": "cpu"})  # an older index's
    assert recorded.same_space(spec)
    (tmp_path / "cpu").mkdir()  # a folder that is not a model option's, and a file named as a hosted model
    (tmp_path / "text-embedding-3-small").write_text("")
    assert parse_space("b=sentence-transformers:name=models/b,device=cpu").options["device"] == "cpu"
    assert parse_space("o=openai:name=text-embedding-3-small").options == {"name": "text-embedding-3-small"}


@pytest.mark.parametrize(
    "text, message",
    [(":name=x", "no embedding function"), ("test-words:dim", "not key=value"), ("standard=test-words", "reserved"),
     ("bm25=test-words", "reserved"),
     ("Bad Label=test-words", "a-z, 0-9"), ("w=test-words:weight=-1", "weight"),
     ("w=test-words:weight=NaN", "finite"), ("w=test-words:weight=Infinity", "finite")],
)
def test_parse_space_refuses_bad_specs(text, message):
    with pytest.raises(SpaceError, match=message):
        parse_space(text)


def test_extra_spaces_vote_with_their_weights():
    # 3 rows; the standard space prefers row 0, the extra space row 2 with a larger weight
    standard = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    heads = np.zeros((1, 3, 2))  # (H, N, d)
    extra = {"other": np.array([[0.0, 1.0], [0.6, 0.8], [1.0, 0.0]])}
    query = retrieve.QueryVectors(np.array([1.0, 0.0]), np.zeros((1, 2)), {"other": np.array([1.0, 0.0])})
    scales = {"heads": np.ones(1), "split": np.ones(2), "standard": np.array([1.0]), "space:other": np.array([3.0])}
    chosen = retrieve.voters("spaces", 1, scales, ["other"])
    assert [(v.name, v.weight) for v in chosen] == [("standard", 1.0), ("other", 3.0)]
    ranking, _ = exact.Exact(standard, heads, extra)(chosen, [query], 3)  # (P=1, S=2, c=3)
    assert ranking.tolist() == [[[0, 1, 2], [2, 1, 0]]]
    # row 2: 3*1 + 1*0.25 = 3.25; row 1: 3*0.5 + 0.5 = 2.0; row 0: 3*0.25 + 1 = 1.75
    result = exact.run("spaces", standard, heads, query, 3, 3, scales, extra=extra)
    assert result.rows.tolist() == [2, 1, 0] and result.scores.tolist() == [3.25, 2.0, 1.75]
    only = exact.run("spaces", standard, heads, query, 3, 3, scales, extra=extra, select=["standard"])
    assert only.rows.tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="unknown space 'nope'"):
        exact.run("spaces", standard, heads, query, 3, 3, scales, extra=extra, select=["nope"])
    with pytest.raises(ValueError, match="votes with none of the selected spaces"):
        exact.run("mrag-paper", standard, heads, query, 3, 3, scales, extra=extra, select=["other"])


def test_without_extra_spaces_strategies_vote_as_before(db_path, tmp_path, fake):
    plain = Index.open(db_path, embedder=fake)
    plain.add(DOCS)
    spaced = Index.open(tmp_path / "spaced", embedder=fake, spaces=["w=test-words"])
    spaced.add(DOCS)
    query = "How did Romans move water? How do bees cool their hive?"
    for strategy in ("mrag", "mrag-std", "mrag-paper", "standard", "split", "interleave+mrag-paper"):
        before = [(h.id, h.score) for h in plain.search(query, k=4, strategy=strategy)]
        selected = [(h.id, h.score) for h in spaced.search(query, k=4, strategy=strategy,
                                                           spaces=["heads", "standard", "split"])]
        assert before == selected, strategy
    voters = {v["space"] for h in spaced.search(query, k=4, strategy="mrag-std") for v in h.votes}
    assert "w" in voters and "standard" in voters


def test_space_is_stored_with_stats_weight_and_selection(db_path, fake):
    index = Index.open(db_path, embedder=fake, spaces=["w=test-words:dim=8", "fixed=test-words:dim=4,weight=0.25"])
    index.add(DOCS)
    info = {s["name"]: s for s in index.info()["spaces"]}
    assert info["w"]["dim"] == 8 and info["w"]["weight"] == "auto" and info["fixed"]["scale"] == 0.25
    raw = np.array([words_vector(d["text"], 8) for d in DOCS])
    assert info["w"]["scale"] == pytest.approx(brute_force_scales(raw[:, None, :])[0])
    hits = index.search("bees cool the hive", k=2, strategy="spaces", spaces=["w"])
    assert hits[0].id == "bees#0" and {v["space"] for h in hits for v in h.votes} == {"w"}
    index.delete(["bees"])
    left = np.array([words_vector(d["text"], 8) for d in DOCS if d["id"] != "bees"])
    scale = {s["name"]: s for s in index.info()["spaces"]}["w"]["scale"]
    assert scale == pytest.approx(brute_force_scales(left[:, None, :])[0])
    with pytest.raises(ValueError, match="unknown space 'nope'; this index has: .*bm25, fixed, w"):
        index.search("bees", spaces=["nope"])
    for strategy in ("standard", "bm25", "mrag-paper", "split"):  # a space of the index they do not vote with
        with pytest.raises(ValueError, match=f"strategy '{strategy}' votes with none of the selected spaces \\['w'\\]"):
            index.search("bees", strategy=strategy, spaces=["w"])


def test_adding_a_space_backfills_every_row_in_one_commit(db_path, fake):
    index = Index.open(db_path, embedder=fake)
    index.add(DOCS)
    version = index.store.committed_version
    index = Index.open(db_path, embedder=fake, spaces=["w=test-words"])
    # one write: the rewritten table (one version) and its full-text index rebuilt (another)
    assert index.store.committed_version == version + 2
    assert index.store.count() == len(DOCS)
    assert index.store.matrix().extra["w"].shape == (len(DOCS), 16)
    assert Index.open(db_path, embedder=fake, spaces=["w=test-words"]).store.committed_version == version + 2
    with pytest.raises(SpaceError, match="space 'w'"):
        Index.open(db_path, embedder=fake, spaces=["w=test-words:dim=8"])
    index.add([{"id": "new", "text": "Glaciers carve valleys."}])
    assert index.store.matrix().extra["w"].shape == (len(DOCS) + 1, 16)


def test_dropping_a_space_removes_its_column_scale_and_record(db_path, fake):
    from mrag.settings import AnnPolicy
    from mrag.store import StoreError

    index = Index.open(db_path, embedder=fake, spaces=["w=test-words:dim=8", "v=test-words:dim=4"])
    index.ann_policy = AnnPolicy(threshold=2, index_type="IVF_FLAT", nprobes=4)
    index.add(DOCS)
    before = {h.id for h in index.search("bees cool the hive", k=2, strategy="spaces", spaces=["v"], exact=True)}
    version = index.store.committed_version
    with pytest.raises(StoreError, match="has no space 'nope'; it has: w, v"):
        index.drop_spaces(["w", "nope"])
    assert index.store.committed_version == version and "space_w" in index.store.chunks.schema.names
    assert index.drop_spaces(["w"]) == ["w"]
    again = Index.open(db_path, embedder=fake, create=False)  # as another process sees it
    assert [s["name"] for s in again.info()["spaces"]] == ["v"] and "space_w" not in again.store.chunks.schema.names
    assert "space:w" not in again.store.committed_scales() and again.verify()["sums_drift"] < 1e-9
    assert {i.name for i in again.store.chunks.list_indices()} >= {"space_v_idx", "vector_idx", "text_idx"}
    for exact_search in (True, False):  # the other space, exactly and through its ANN index
        hits = again.search("bees cool the hive", k=2, strategy="spaces", spaces=["v"], exact=exact_search)
        assert {h.id for h in hits} == before
    with pytest.raises(ValueError, match="unknown space 'w'"):
        again.search("bees", strategy="spaces", spaces=["w"])
    again.add([{"id": "new", "text": "Glaciers carve valleys."}])  # writes go on without it
    assert again.store.matrix().extra.keys() == {"v"} and again.add_spaces(["w=test-words:dim=16"]) == ["w"]


def test_another_process_dropping_or_re_adding_a_space(db_path, fake):
    """Two `Index` objects on one folder stand for two processes: one that searched and writes, one that drops
    the space `w` and adds it back under the same label with another dimension."""
    reader = Index.open(db_path, embedder=fake, spaces=["w=test-words:dim=8"])
    reader.add(DOCS)
    reader.search("bees", strategy="spaces", spaces=["w"])  # its space `w` (8 dims) made
    other = Index.open(db_path, embedder=fake, create=False)
    other.drop_spaces(["w"])
    reader.search("bees")  # it follows the commit
    reader.add([{"id": "late", "text": "Glaciers carve valleys."}])  # its rows without `w`, as committed
    assert "space_w" not in reader.store.chunks.schema.names and reader.verify()["sums_drift"] < 1e-9
    other.add_spaces(["w=test-words:dim=16"])
    want = [h.id for h in other.search("bees cool the hive", strategy="spaces", spaces=["w"])]
    assert [h.id for h in reader.search("bees cool the hive", strategy="spaces", spaces=["w"])] == want
    reader.add([{"id": "later", "text": "Comets have tails."}])  # its `w` vectors from the 16-dim space
    assert reader.store.matrix().extra["w"].shape == (len(DOCS) + 2, 16) and reader.verify()["sums_drift"] < 1e-9


def test_the_same_space_asked_for_by_two_writers_at_once_is_added_once(db_path, fake, monkeypatch):
    """Two workers of an app starting up with the same `spaces=[...]`: the one that took the lock second
    failed ("already holds a space") where an index that has the space passes it over."""
    index = Index.open(db_path, embedder=fake)
    index.add(DOCS)
    other = Index.open(db_path, embedder=fake, create=False)
    writing = index.store.writing

    def after_the_other(*args, **kwargs):
        other.add_spaces(["w=test-words:dim=8"])
        return writing(*args, **kwargs)

    monkeypatch.setattr(index.store, "writing", after_the_other)
    assert index.add_spaces(["w=test-words:dim=8", "v=test-words:dim=4"]) == ["v"]
    monkeypatch.setattr(index.store, "writing", writing)
    assert index.add_spaces(["w=test-words:dim=8"]) == []
    assert sorted(index.store.matrix().extra) == ["v", "w"] and index.verify()["sums_drift"] < 1e-9

    def all_by_the_other(*args, **kwargs):  # every space asked for: nothing left, nothing committed
        other.add_spaces(["u=test-words:dim=4"])
        return writing(*args, **kwargs)

    monkeypatch.setattr(index.store, "writing", all_by_the_other)
    assert index.add_spaces(["u=test-words:dim=4"]) == []
    assert index.store.manifest.maintenance == other.store.manifest.maintenance  # the other's commit the last


def test_a_space_added_while_documents_are_embedded_fails_the_write_cleanly(db_path, fake, monkeypatch):
    from mrag import writing
    from mrag.store import StoreError

    index = Index.open(db_path, embedder=fake)
    index.add(DOCS)
    other = Index.open(db_path, embedder=fake, create=False)
    real = writing._embedded

    def racing(*args, **kwargs):  # another process adds a space after the rows were embedded, before the lock
        yield from real(*args, **kwargs)
        other.add_spaces(["v=test-words:dim=4"])

    monkeypatch.setattr(writing, "_embedded", racing)
    with pytest.raises(StoreError, match="spaces changed while these documents were embedded"):
        index.add([{"id": "late", "text": "Glaciers carve valleys."}])
    monkeypatch.setattr(writing, "_embedded", real)
    assert index.store.count() == len(DOCS) and index.verify()["sums_drift"] < 1e-9
    index.add([{"id": "late", "text": "Glaciers carve valleys."}])  # again: with the new space
    assert index.store.matrix().extra["v"].shape == (len(DOCS) + 1, 4)

    def relabelled(*args, **kwargs):  # ... the same label for a space of another width: the same column name
        yield from real(*args, **kwargs)
        other.drop_spaces(["v"])
        other.add_spaces(["v=test-words:dim=6"])

    monkeypatch.setattr(writing, "_embedded", relabelled)
    with pytest.raises(StoreError, match="spaces changed while these documents were embedded"):
        index.add([{"id": "later", "text": "Comets have tails."}])
    assert index.store.count() == len(DOCS) + 1 and index.verify()["sums_drift"] < 1e-9


def test_dropping_a_graphed_space_rebuilds_the_graphs_without_it(db_path, fake):
    pytest.importorskip("faiss")
    index = Index.open(db_path, embedder=fake, spaces=["w=test-words:dim=8"])
    index.add(DOCS)
    index.build_ann("HNSW", spaces=["standard", "w"])
    index.drop_spaces(["w"])
    assert index.store.manifest.ann["spaces"] == ["standard"]
    from mrag.retrieve import graph

    built = graph.latest(graph.folder(index.store.uri), index.store.matrix())
    assert built is not None and set(built.files) == {"standard"}
    assert {h.id for h in index.search("bees cool the hive", k=2, strategy="standard")} >= {"bees#0"}


def test_adding_a_space_rebuilds_the_dropped_ann_indexes_by_policy(db_path, fake):
    """The table rewrite drops LanceDB's indexes; the library's ANN policy builds them again at once."""
    from mrag.settings import AnnPolicy

    index = Index.open(db_path, embedder=fake)
    index.ann_policy = AnnPolicy(threshold=2, index_type="IVF_FLAT", nprobes=4)
    index.add(DOCS)
    assert index.store.manifest.ann == {"index_type": "IVF_FLAT", "rows": len(DOCS), "nprobes": 4}
    index.add_spaces(["w=test-words:dim=8"])
    assert index.store.manifest.ann == {"index_type": "IVF_FLAT", "rows": len(DOCS), "nprobes": 4}
    # the new space's column too, and the full-text index the rewrite rebuilt
    assert len(index.store.chunks.list_indices()) == 1 + fake.n_heads + 1 + 1


def test_adding_a_space_rebuilds_indexes_built_below_the_threshold(db_path, fake):
    """Indexes built by hand (or under an older, lower threshold) are kept up at any size, a rewrite too."""
    index = Index.open(db_path, embedder=fake)
    index.add(DOCS)
    index.build_ann("IVF_FLAT", nprobes=4)  # far below the default threshold
    index.add_spaces(["w=test-words:dim=8"])
    assert index.store.manifest.ann == {"index_type": "IVF_FLAT", "rows": len(DOCS), "nprobes": 4}
    assert len(index.store.chunks.list_indices()) == 1 + fake.n_heads + 1 + 1
    version = index.store.committed_version  # the same space again: nothing to do; another under its label: refused
    assert index.add_spaces(["w=test-words:dim=8"]) == [] and index.store.committed_version == version
    with pytest.raises(SpaceError, match="space 'w' of the index at .* is .*, not .*: use another label"):
        index.add_spaces(["w=test-words:dim=4"])
    with pytest.raises(SpaceError, match="space 'v' is given twice"):
        index.add_spaces(["v=test-words:dim=4", "v=test-words:dim=4"])
    assert index.store.committed_version == version


def test_unknown_function_names_the_space_and_writes_nothing(db_path, tmp_path, fake):
    with pytest.raises(SpaceError, match="space 'x'.*unknown embedding function 'no-such-fn'"):
        Index.open(tmp_path / "new", embedder=fake, spaces=["x=no-such-fn"])
    assert not (tmp_path / "new").exists()
    index = Index.open(db_path, embedder=fake)
    index.add(DOCS)
    manifest = json.dumps(index.store.manifest.to_json(), sort_keys=True)
    with pytest.raises(SpaceError, match="space 'x'"):
        Index.open(db_path, embedder=fake, spaces=["x=no-such-fn"])
    with pytest.raises(SpaceError, match="space 'y'.*bad options"):
        Index.open(db_path, embedder=fake, spaces=["y=test-words:dim=notanumber"])
    assert json.dumps(Store.open(str(db_path)).manifest.to_json(), sort_keys=True) == manifest


def test_a_space_whose_dimension_changes_is_refused_and_nothing_is_written(db_path, fake):
    index = Index.open(db_path, embedder=fake, spaces=["w=test-words"])
    index.add(DOCS[:2])
    version = index.store.committed_version
    OVERRIDE["dim"] = 12
    reopened = Index.open(db_path, embedder=fake)
    with pytest.raises(SpaceError, match="space 'w'.*dimension changed from 16 to 12"):
        reopened.add(DOCS[2:])
    with pytest.raises(SpaceError, match="space 'w'"):
        reopened.search("bees")
    OVERRIDE.clear()
    assert reopened.store.committed_version == version and reopened.store.count() == 2
    reopened.add(DOCS[2:])  # the same index still works once the model is back
    assert reopened.store.count() == 4


class _EmbeddingServer(BaseHTTPRequestHandler):
    """Speaks OpenAI's POST /v1/embeddings and Ollama's POST /api/embed and /api/embeddings."""

    requests: list[str] = []

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        type(self).requests.append(self.path)
        if self.path.endswith("/v1/embeddings"):
            texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
            out = {"object": "list", "model": body["model"], "usage": {"prompt_tokens": 1, "total_tokens": 1},
                   "data": [{"object": "embedding", "index": i, "embedding": words_vector(t, 24)}
                            for i, t in enumerate(texts)]}
        elif self.path == "/api/embed":
            texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
            out = {"model": body["model"], "embeddings": [words_vector(t, 20) for t in texts]}
        elif self.path == "/api/embeddings":
            out = {"embedding": words_vector(body["prompt"], 20)}
        else:
            self.send_error(404)
            return
        data = json.dumps(out).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _EmbeddingServer)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_openai_and_ollama_spaces_over_their_http_protocols(db_path, fake, server, monkeypatch):
    pytest.importorskip("openai")
    pytest.importorskip("ollama")
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    index = Index.open(db_path, embedder=fake, spaces=[
        f"oa=openai:name=text-embedding-3-small,base_url={server}/v1",
        f"ol=ollama:name=nomic-embed-text,host={server}",
    ])
    index.add(DOCS)
    assert {s["name"]: s["dim"] for s in index.info()["spaces"]} == {"oa": 24, "ol": 20}
    hits = index.search("bees cool the hive", k=1, strategy="spaces", spaces=["oa", "ol"])
    assert hits[0].id == "bees#0" and {v["space"] for v in hits[0].votes} == {"oa", "ol"}
    assert "/v1/embeddings" in _EmbeddingServer.requests and "/api/embed" in _EmbeddingServer.requests


def test_ollama_down_names_the_space_and_writes_nothing(db_path, tmp_path, fake):
    down = "ol=ollama:name=llama3,host=http://127.0.0.1:9"  # nothing listens on port 9
    with pytest.raises(SpaceError, match="space 'ol' \\(ollama\\): cannot compute embeddings"):
        Index.open(tmp_path / "new", embedder=fake, spaces=[down])
    assert not (tmp_path / "new").exists()
    index = Index.open(db_path, embedder=fake)
    index.add(DOCS)
    version = index.store.committed_version
    with pytest.raises(SpaceError, match="space 'ol'"):
        Index.open(db_path, embedder=fake, spaces=[down])
    assert Store.open(str(db_path)).committed_version == version
    assert not Store.open(str(db_path)).manifest.spaces


def test_sentence_transformers_space_with_the_packaged_minilm(db_path, fake):
    pytest.importorskip("sentence_transformers")
    from tests.conftest import MINILM_DIR

    index = Index.open(db_path, embedder=fake, spaces=[f"minilm=sentence-transformers:name={MINILM_DIR}"])
    index.add(DOCS)
    assert index.info()["spaces"][0]["dim"] == 384
    hits = index.search("How do plants turn sunlight into energy?", k=1, strategy="spaces", spaces=["minilm"])
    assert hits[0].id == "algae#0"


def test_cli_index_and_search_with_spaces(tmp_path, reuse_minilm):
    from click.testing import CliRunner

    from mrag.cli import cli

    docs = tmp_path / "docs"
    docs.mkdir()
    for d in DOCS:
        (docs / f"{d['id']}.txt").write_text(d["text"])
    db = str(tmp_path / "db")
    runner = CliRunner()
    bad = runner.invoke(cli, ["index", str(docs), "--db", db, "--space", "x=nope-fn"])
    assert bad.exit_code == 1 and "space 'x'" in bad.output and not Path(db).exists()
    ok = runner.invoke(cli, ["index", str(docs), "--db", db, "--space", "w=test-words"])
    assert ok.exit_code == 0, ok.output
    out = runner.invoke(cli, ["search", "bees cool the hive", "--db", db, "-k", "1", "--strategy", "spaces",
                              "--spaces", "w", "--explain"])
    assert out.exit_code == 0, out.output
    hit = json.loads(out.output.splitlines()[0])
    assert hit["id"].endswith("bees.txt#0") and {v["space"] for v in hit["votes"]} == {"w"}
    unknown = runner.invoke(cli, ["search", "bees", "--db", db, "--spaces", "nope"])
    assert unknown.exit_code == 1 and "unknown space 'nope'" in unknown.output
    for others in (["--space", "w=test-words:dim=8"], [str(docs)], ["--ray"]):  # a drop runs on its own
        both = runner.invoke(cli, ["index", "--db", db, "--drop-space", "w", *others])
        assert both.exit_code == 2 and "--drop-space runs on its own" in both.output, others
    missing = runner.invoke(cli, ["index", "--db", db, "--drop-space", "v"])
    assert missing.exit_code == 1 and "has no space 'v'; it has: w" in missing.output
    dropped = runner.invoke(cli, ["index", "--db", db, "--drop-space", "w"])
    assert dropped.exit_code == 0 and json.loads(dropped.output)["spaces_dropped"] == ["w"]
    assert json.loads(runner.invoke(cli, ["info", "--db", db]).output)["spaces"] == []


def test_options_a_space_function_does_not_take_are_refused(db_path, fake):
    with pytest.raises(SpaceError, match=r"space 'w' \(test-words\): unknown option\(s\) 'dimm'; it takes .*dim"):
        Index.open(db_path, embedder=fake, spaces=["w=test-words:dimm=8"])
    assert not (db_path / "manifest.lance").exists()  # no index made
    index = Index.open(db_path, embedder=fake)
    index.add(DOCS)
    version = index.store.committed_version
    with pytest.raises(SpaceError, match="unknown option"):
        index.add_spaces(["w=test-words:dim=8,outptu=3"])
    assert index.store.committed_version == version and index.info()["spaces"] == []


def test_eval_labels_select_spaces():
    from mrag.evaluate.harness import split_label

    with pytest.raises(ValueError, match=r"unknown space 'head:12'; this index has: standard, heads \(head:0..head:11"):
        split_label("mrag@head:12", [], 12, 12)
    with pytest.raises(ValueError, match=r"unknown space 'nosuch'; this index has: standard, heads \(head:I\)"):
        split_label("mrag@nosuch")  # the index's heads not known yet
    assert split_label("mrag@head:40+split:3") == ("mrag", ["head:40", "split:3"])
    for name in ("head:01", "head:\u00b2", "split:-1"):  # no voter is named so
        with pytest.raises(ValueError, match=f"unknown space '{name}'"):
            split_label(f"mrag@{name}")
    assert split_label("mrag") == ("mrag", None)
    assert split_label("mrag@heads+standard+mpnet", ["mpnet"]) == ("mrag", ["heads", "standard", "mpnet"])
    with pytest.raises(ValueError, match="unknown space 'mpnet'"):
        split_label("spaces@mpnet", [])
    with pytest.raises(ValueError, match="unknown strategy"):
        split_label("nonsense@heads")


def test_an_external_space_ranks_by_cosine_on_every_path(db_path, fake):
    """test-words stores 3 per word, so a longer text has a longer vector. "comet" matches the query
    "comet" at cosine 1; the longer text at about 0.89 but 4x its dot product. The ANN path that ranks
    candidates exactly (a filter keeping few rows, `candidates=`) took the stored vectors as they are and
    ranked the longer text first; the exact scan and LanceDB's index rank by cosine."""
    index = Index.open(db_path, embedder=fake, spaces=["w=test-words"])
    index.add([{"id": "one", "text": "comet"}, {"id": "many", "text": "comet comet comet comet ice river stone arch"}]
              + [{"id": f"f{i}", "text": f"filler{i} queen flower"} for i in range(60)])
    index.build_ann("IVF_FLAT", nprobes=1000)
    for options in ({"exact": True}, {"exact": False}, {"exact": False, "where": "id != 'x'"},
                    {"exact": False, "candidates": 50}):
        hits = index.search("comet", k=2, strategy="spaces", spaces=["w"], **options)
        assert [h.id for h in hits] == ["one#0", "many#0"], options
        assert hits[0].votes[0]["space"] == "w"
