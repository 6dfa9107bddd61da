"""The HTTP API over real HTTP: uvicorn in a thread on a free loopback port, a real LanceDB index in
tmp_path, the fake embedder and a scripted generator. Auth, size limit, validation, streaming, and a
bounded load test of searches running while documents are added."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import uvicorn
from conftest import FakeEmbedder, free_port

from mrag.generate import Generator
from mrag.index import Index
from mrag.locking import LOCK_FILE
from mrag.server import Settings, create_app
from mrag.settings import DEFAULT_STRATEGY
from mrag.store import Store

PROCS = str(Path(__file__).with_name("procs.py"))
TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
DOCS = [
    {"id": "aqueduct", "text": "Roman aqueducts carried water by gravity into cities.", "title": "Aqueducts"},
    {"id": "bees", "text": "Honeybees fan their wings to cool the hive.", "title": "Bees"},
    {"id": "chess", "text": "Deep Blue beat Kasparov at chess.", "title": "Chess"},
    {"id": "tides", "text": "The moon raises the tides of the oceans.", "title": "Tides"},
]


class ScriptedGenerator(Generator):
    """Replies with the given texts in turn (the last one repeats), word by word."""

    name = "scripted"

    def __init__(self, *replies: str) -> None:
        self.replies = list(replies)
        self.calls = 0

    def stream(self, messages, max_tokens=256) -> Iterator[str]:
        self.calls += 1
        reply = self.replies[min(self.calls, len(self.replies)) - 1]
        for i, word in enumerate(reply.split(" ")):
            yield word if i == 0 else " " + word



@contextmanager
def serving(settings: Settings, root_path: str = "") -> Iterator[str]:
    """Run the app under uvicorn on a free loopback port (`root_path`: behind a proxy that strips that
    prefix); yield its base URL."""
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=free_port(), log_level="warning",
                            root_path=root_path)
    server = uvicorn.Server(config)

    def run() -> None:
        try:
            server.run()
        except SystemExit:  # uvicorn exits when the app fails to start
            pass

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{config.port}"
    finally:
        server.should_exit = True
        thread.join(10)


def make_index(path: Path, docs: list[dict]) -> None:
    Index.open(path, embedder=FakeEmbedder()).add(docs)


@pytest.fixture
def url(tmp_path) -> Iterator[str]:
    make_index(tmp_path / "db", DOCS)
    settings = Settings(db=str(tmp_path / "db"), token=TOKEN, max_request_bytes=4000, embedder=FakeEmbedder(),
                        llm=ScriptedGenerator("Bees fan their wings [1]. Water flows [2]."))
    with serving(settings) as base:
        yield base


@pytest.fixture
def client(url) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url, timeout=30) as c:
        yield c


def test_openapi_lists_the_endpoints(client):
    spec = client.get("/openapi.json").json()
    assert {"/search", "/ask", "/documents", "/documents/{doc_id}", "/heads", "/info"} <= spec["paths"].keys()
    assert client.get("/docs").status_code == 200


def test_search_get_and_post(client):
    r = client.get("/search", params={"query": "honeybees hive", "k": 2, "strategy": "standard"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["strategy"] == "standard" and len(body["hits"]) == 2
    assert body["hits"][0]["doc_id"] == "bees" and "votes" not in body["hits"][0]
    r = client.post("/search", json={"query": "honeybees hive", "k": 3, "explain": True})
    hits = r.json()["hits"]
    assert r.status_code == 200 and len(hits) == 3
    assert all(h["votes"] and {"space", "rank", "weight"} <= h["votes"][0].keys() for h in hits)


def test_search_selects_spaces_as_the_cli_does(client):
    r = client.get("/search", params={"query": "honeybees hive", "strategy": "mrag-std", "explain": True,
                                      "spaces": ["head:0", "standard"]})
    assert r.status_code == 200, r.text
    assert r.json()["hits"] and {v["space"] for h in r.json()["hits"] for v in h["votes"]} <= {"head:0", "standard"}
    r = client.post("/search", json={"query": "bees", "strategy": "mrag-paper", "spaces": ["bm25"]})
    assert r.status_code == 400 and "votes with none of the selected spaces" in r.json()["detail"]


def test_search_uses_the_index_default_strategy(client, tmp_path):
    assert client.post("/search", json={"query": "honeybees hive"}).json()["strategy"] == DEFAULT_STRATEGY
    assert client.get("/info").json()["default_strategy"] == {"strategy": DEFAULT_STRATEGY, "source": "built-in"}
    Index.open(tmp_path / "db", embedder=FakeEmbedder()).set_default_strategy({"strategy": "split", "score": 0.5})
    assert client.post("/search", json={"query": "honeybees hive"}).json()["strategy"] == "split"
    assert client.get("/info").json()["default_strategy"]["strategy"] == "split"
    asked = client.post("/search", json={"query": "honeybees hive", "strategy": "standard"}).json()
    assert asked["strategy"] == "standard"  # a named strategy still wins


def test_search_exact_or_through_the_ann_indexes(client, tmp_path):
    query = {"query": "honeybees hive and Roman water", "k": 3, "strategy": "mrag-std"}
    exact = client.post("/search", json=query | {"exact": True}).json()["hits"]
    r = client.post("/search", json=query | {"exact": False})
    assert r.status_code == 400 and "no ANN index" in r.json()["detail"]
    Index.open(tmp_path / "db", embedder=FakeEmbedder()).build_ann()  # the server sees the new commit
    approx = client.post("/search", json=query | {"exact": False, "nprobes": 4}).json()["hits"]
    assert [h["id"] for h in approx] == [h["id"] for h in exact]  # a handful of rows: one partition each
    assert client.post("/search", json=query | {"nprobes": 0}).status_code == 422


def test_fusion_search_with_given_or_written_subqueries(client):
    r = client.post("/search", json={"query": "nature", "k": 2, "strategy": "fusion", "subqueries": ["moon tides"]})
    assert r.status_code == 200 and r.json()["subqueries"] == ["moon tides"]
    assert r.json()["hits"][0]["doc_id"] == "tides"
    r = client.get("/search", params={"query": "nature", "strategy": "mrag-fusion"})  # the generator writes them
    assert r.status_code == 200 and r.json()["subqueries"][0] == "nature"


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status"),
    [
        ("get", "/search", {"params": {"query": "x", "k": 0}}, 422),
        ("get", "/search", {"params": {"k": 3}}, 422),
        ("post", "/search", {"json": {"query": ""}}, 422),
        ("post", "/search", {"content": b"{not json", "headers": {"content-type": "application/json"}}, 422),
        ("post", "/search", {"json": {"query": "x", "strategy": "nonsense"}}, 400),
        ("get", "/search", {"params": {"query": "x", "strategey": "standard"}}, 422),  # misspelt: not ignored
        ("post", "/search", {"json": {"query": "x", "top_k": 3}}, 422),
        ("post", "/ask", {"json": {"question": "x", "strategey": "standard"}}, 422),
        ("post", "/documents/delete", {"json": {"ids": ["bees"], "missing_ok": True}, "headers": AUTH}, 422),
        ("post", "/ask", {"json": {"question": "x", "max_tokens": 0}}, 422),
        ("post", "/search", {"json": {"query": "x", "k": True}}, 422),  # not a count of 1
        ("post", "/ask", {"json": {"question": "x", "max_tokens": False}}, 422),
        ("post", "/documents", {"json": {}, "headers": AUTH}, 422),
        ("delete", "/documents/bees?dryrun=1", {"headers": AUTH}, 422),  # an option it lacks: nothing deleted
        ("post", "/documents/delete?dryrun=1", {"json": {"ids": ["bees"]}, "headers": AUTH}, 422),
        ("post", "/search?k=3", {"json": {"query": "x"}}, 422),
        ("post", "/documents", {"json": {"documents": [{"text": "x"}], "mdoe": "add"}, "headers": AUTH}, 422),
        ("post", "/documents", {"json": {"documents": [{"id": True, "text": "x"}]}, "headers": AUTH}, 422),
        ("post", "/documents", {"json": {"documents": [{"text": ""}]}, "headers": AUTH}, 422),
        ("post", "/documents", {"json": {"documents": [{"id": "a", "text": "x"}, {"id": "a", "text": "y"}]},
                                "headers": AUTH}, 400),
        ("post", "/documents", {"json": {"documents": [{"id": "bees", "text": "new"}], "mode": "add"},
                                "headers": AUTH}, 400),
    ],
)
def test_bad_requests_get_a_4xx_with_a_detail_and_change_nothing(client, method, path, kwargs, status):
    before = client.get("/info").json()
    r = getattr(client, method)(path, **kwargs) if method == "get" else client.request(method, path, **kwargs)
    assert r.status_code == status, r.text
    assert r.json()["detail"]
    assert client.get("/info").json() == before


@pytest.mark.parametrize("body", [b"{}", b"{broken", b""])
def test_writes_need_the_token_before_the_body_is_read(client, body):
    for path in ("/documents", "/documents/delete"):
        r = client.post(path, content=body, headers={"content-type": "application/json"})
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        r = client.post(path, content=body, headers={"content-type": "application/json", "Authorization": "Bearer no"})
        assert r.status_code == 403
    assert client.delete("/documents/bees").status_code == 401
    assert client.delete("/documents/bees", headers={"Authorization": "Basic abc"}).status_code == 401
    assert client.get("/info").json()["documents"] == len(DOCS)


def test_add_update_and_delete_documents(client):
    doc = {"id": "owls", "text": "Owls hunt mice at night using silent flight.", "title": "Owls", "metadata": {"a": 1}}
    r = client.post("/documents", json={"documents": [doc]}, headers=AUTH)
    assert r.status_code == 200, r.text
    assert r.json()["added"] == 1 and r.json()["ids"]["added"] == ["owls"]
    hit = client.get("/search", params={"query": "owls hunt mice", "k": 1}).json()["hits"][0]
    assert hit["doc_id"] == "owls" and hit["metadata"] == {"a": 1} and hit["title"] == "Owls"
    r = client.post("/documents", json={"documents": [doc | {"text": "Owls sleep by day."}]}, headers=AUTH)
    assert r.json()["updated"] == 1
    r = client.post("/documents", json={"documents": [{"text": "An anonymous note about owls."}]}, headers=AUTH)
    new_id = r.json()["ids"]["added"][0]
    assert client.get("/info").json()["documents"] == len(DOCS) + 2
    assert client.delete("/documents/owls", headers=AUTH).json() == {"deleted_chunks": 1}
    assert client.delete("/documents/owls", headers=AUTH).status_code == 404
    r = client.post("/documents/delete", json={"ids": [new_id, "missing"]}, headers=AUTH)
    assert r.status_code == 404 and "missing" in r.json()["detail"]
    assert client.post("/documents/delete", json={"ids": [new_id]}, headers=AUTH).json() == {"deleted_chunks": 1}
    assert client.get("/info").json()["documents"] == len(DOCS)


def test_a_document_s_other_fields_are_its_metadata_and_a_number_is_an_id(client):
    """As `Index.add` keeps them: a field the document model lacks is metadata, not dropped."""
    r = client.post("/documents", json={"documents": [{"id": 5, "text": "Red owls.", "colour": "red",
                                                       "metadata": {"a": 1}}]}, headers=AUTH)
    assert r.status_code == 200 and r.json()["ids"]["added"] == ["5"]
    hit = client.get("/search", params={"query": "red owls", "k": 1}).json()["hits"][0]
    assert hit["doc_id"] == "5" and hit["metadata"] == {"a": 1, "colour": "red"}
    r = client.post("/documents", json={"documents": [{"id": 1.5, "text": "A float id."}]}, headers=AUTH)
    assert r.json()["ids"]["added"] == ["1.5"]  # as a records file's


def test_documents_take_what_index_add_takes(client):
    """A number as a title or an id to delete, and null metadata, title or source, as `Index.add` and the
    records files take them; NaN in metadata is null (as JSON has it), a NaN id refused."""
    docs = [{"id": 42, "text": "Number titles.", "title": 7, "metadata": None}, {"text": "Nulls.", "source": None}]
    r = client.post("/documents", json={"documents": docs}, headers=AUTH)
    assert r.status_code == 200, r.text
    hit = client.get("/search", params={"query": "number titles", "k": 1}).json()["hits"][0]
    assert (hit["doc_id"], hit["title"], hit["metadata"]) == ("42", "7", {})
    r = client.post("/documents/delete", json={"ids": [42]}, headers=AUTH)
    assert r.status_code == 200 and r.json()["deleted_chunks"] == 1
    nan = {"content-type": "application/json"}
    r = client.post("/documents", content='{"documents": [{"text": "Missing scores.", "score": NaN}]}',
                    headers=AUTH | nan)
    assert r.status_code == 200, r.text
    hit = client.get("/search", params={"query": "missing scores", "k": 1}).json()["hits"][0]
    assert hit["metadata"] == {"score": None}
    r = client.post("/documents", content='{"documents": [{"id": NaN, "text": "x"}]}', headers=AUTH | nan)
    assert r.status_code in (400, 422) and "NaN" in r.text


def test_post_search_takes_spaces_as_a_string_too(client):
    r = client.post("/search", json={"query": "honeybees hive", "strategy": "mrag-std", "explain": True,
                                     "spaces": "head:0, standard"})
    assert r.status_code == 200, r.text
    assert {v["space"] for h in r.json()["hits"] for v in h["votes"]} == {"head:0", "standard"}
    r = client.get("/search", params={"query": "honeybees hive", "strategy": "mrag-std", "explain": True,
                                      "spaces": ["head:0", "standard"]})  # repeated in a GET, as before
    assert {v["space"] for h in r.json()["hits"] for v in h["votes"]} == {"head:0", "standard"}


def test_subqueries_for_a_strategy_that_uses_none_are_refused(client):
    r = client.get("/search", params={"query": "bees", "strategy": "standard", "subqueries": "hives"})
    assert r.status_code == 400 and "sub-queries are for the fusion strategies" in r.json()["detail"]


def test_search_spaces_comma_separated_as_the_cli_takes_them(client):
    r = client.get("/search", params={"query": "honeybees hive", "strategy": "mrag-std", "explain": True,
                                      "spaces": "head:0,standard"})
    assert r.status_code == 200, r.text
    assert {v["space"] for h in r.json()["hits"] for v in h["votes"]} == {"head:0", "standard"}


def test_ids_with_slashes_can_be_deleted(client):
    client.post("/documents", json={"documents": [{"id": "/home/me/a.md", "text": "slash id"}]}, headers=AUTH)
    assert client.delete("/documents//home/me/a.md", headers=AUTH).json() == {"deleted_chunks": 1}


def test_ids_with_line_breaks_can_be_deleted_by_url(client):
    """Starlette's `path` stops at a line break: such an id was a 404, though POST /documents/delete took it."""
    client.post("/documents", json={"documents": [{"id": "two\nlines", "text": "a record id with a break"}]},
                headers=AUTH)
    assert client.delete("/documents/two%0Alines", headers=AUTH).json() == {"deleted_chunks": 1}
    assert client.delete("/documents/two%0Alines", headers=AUTH).status_code == 404  # gone now


def test_an_index_that_cannot_be_written_is_503_and_a_full_disk_507(tmp_path, monkeypatch):
    """A read-only index answered DELETE with a 404 (as if the id were unknown) and POST with a 400; a full disk
    was a bare 500 "see its log", with two tracebacks a request there."""
    make_index(tmp_path / "db", DOCS)
    lock = tmp_path / "db" / LOCK_FILE
    with serving(Settings(db=str(tmp_path / "db"), token=TOKEN, embedder=FakeEmbedder())) as base, httpx.Client(
            base_url=base, timeout=30) as client:
        lock.unlink(missing_ok=True)
        lock.mkdir()  # a lock file that cannot be opened for writing: the index cannot be written
        for r in (client.delete("/documents/bees", headers=AUTH),
                  client.post("/documents", json={"documents": [{"text": "new"}]}, headers=AUTH)):
            assert r.status_code == 503 and "cannot be written" in r.json()["detail"]
        lock.rmdir()

        def full(self: Store, rows: object) -> None:
            raise RuntimeError("lance error: IO error: Unable to copy data to file: No space left on device (os "
                               "error 28), /root/.cargo/registry/src/lance-13.0.0/src/io/commit.rs:1663:50")

        monkeypatch.setattr(Store, "add", full)
        r = client.post("/documents", json={"documents": [{"text": "new"}]}, headers=AUTH)
        assert r.status_code == 507 and r.json()["detail"].startswith("no space left for the index's files")
        assert ".rs:" not in r.json()["detail"] and "nothing was committed" in r.json()["detail"]
        r = client.post("/search", json={"query": "honeybees", "k": 1, "strategy": "standard"})
        assert r.status_code == 200 and r.json()["hits"][0]["doc_id"] == "bees"  # searches go on


def test_large_bodies_are_refused_with_413(client):
    big = {"query": "x" * 5000}
    assert client.post("/search", json=big).status_code == 413
    r = client.post("/documents", json={"documents": [{"text": "y" * 5000}]}, headers=AUTH)
    assert r.status_code == 413 and "4000 bytes" in r.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the server counts as it reads
        yield b'{"query": "'
        for _ in range(10):
            yield b"z" * 500
        yield b'"}'

    assert client.post("/search", content=chunks(), headers={"content-type": "application/json"}).status_code == 413
    small = iter([b'{"query": "honeybees", "k": 1, "strategy": "standard"}'])
    r = client.post("/search", content=small, headers={"content-type": "application/json"})
    assert r.status_code == 200 and r.json()["hits"][0]["doc_id"] == "bees"
    assert client.get("/info").json()["documents"] == len(DOCS)


def test_heads_and_info(client):
    heads = client.get("/heads").json()
    assert [h["head"] for h in heads] == [0, 1, 2, 3] and all(h["scale"] > 0 for h in heads)
    info = client.get("/info").json()
    assert info["documents"] == 4 and info["chunks"] == 4 and info["auth"] is True


def test_ask_answers_with_citations(client):
    r = client.post("/ask", json={"question": "honeybees hive and aqueducts water", "k": 3, "strategy": "standard"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["answer"] == "Bees fan their wings [1]. Water flows [2]."
    assert [c["number"] for c in body["cited"]] == [1, 2] and len(body["context"]) == 3
    assert body["context"][0]["id"] == "bees#0"


def sse_events(text: str) -> list[tuple[str, dict]]:
    out = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        out.append((fields["event"], json.loads(fields["data"])))
    return out


def test_ask_streams_server_sent_events(client):
    with client.stream("POST", "/ask", json={"question": "honeybees hive", "k": 2, "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r.read().decode())
    names = [e for e, _ in events]
    assert names[0] == "context" and names[-1] == "answer" and set(names[1:-1]) == {"token"}
    assert "".join(d["text"] for e, d in events if e == "token") == events[-1][1]["answer"]
    assert len(events[0][1]["context"]) == 2 and events[-1][1]["cited"][0]["number"] == 1


def test_ask_streams_a_reasoning_model_s_answer_without_its_thoughts(tmp_path):
    """The token events carried the raw reply, its <think> block included; only the answer event left it out."""
    make_index(tmp_path / "db", DOCS)
    llm = ScriptedGenerator("<think>Private thoughts about [2].</think> Bees fan their wings [1].")
    with serving(Settings(db=str(tmp_path / "db"), embedder=FakeEmbedder(), llm=llm)) as base:
        with httpx.stream("POST", base + "/ask", json={"question": "honeybees hive", "k": 2, "stream": True},
                          timeout=30) as r:
            events = sse_events(r.read().decode())
    tokens = [d["text"] for e, d in events if e == "token"]
    assert "".join(tokens) == events[-1][1]["answer"] == "Bees fan their wings [1]."
    assert not any("think" in t for t in tokens)


def test_ask_with_nothing_retrieved_says_so_without_the_llm(tmp_path):
    make_index(tmp_path / "db", DOCS)
    llm = ScriptedGenerator("Made up.")
    settings = Settings(db=str(tmp_path / "db"), embedder=FakeEmbedder(), llm=llm)
    question = {"question": "zzzqqq xylophone", "strategy": "bm25"}
    with serving(settings) as base:
        body = httpx.post(base + "/ask", json=question, timeout=30).json()
        with httpx.stream("POST", base + "/ask", json=question | {"stream": True}, timeout=30) as r:
            events = sse_events(r.read().decode())
    assert body["answer"].startswith("Nothing in the index matches") and body["context"] == body["cited"] == []
    assert [e for e, _ in events] == ["context", "token", "answer"] and events[2][1]["answer"] == body["answer"]
    assert llm.calls == 0


def test_an_unreachable_generator_is_a_502_naming_the_host(tmp_path, monkeypatch):
    make_index(tmp_path / "db", DOCS)
    host = f"127.0.0.1:{free_port()}"
    monkeypatch.setenv("OLLAMA_HOST", host)
    settings = Settings(db=str(tmp_path / "db"), generator="ollama", embedder=FakeEmbedder())
    with serving(settings) as base:
        r = httpx.post(base + "/ask", json={"question": "bees"}, timeout=30)
        assert r.status_code == 502 and f"http://{host}" in r.json()["detail"]
        r = httpx.post(base + "/documents", json={"documents": [{"text": "open without a token"}]}, timeout=30)
        assert r.status_code == 200  # no token configured: writes are open


def test_a_missing_index_stops_the_server_from_starting(tmp_path):
    with pytest.raises(RuntimeError, match="did not start"):
        with serving(Settings(db=str(tmp_path / "nothing"), embedder=FakeEmbedder())):
            pass


# --- load: searches while documents are added --------------------------------------------------

BATCHES, PER_BATCH, LEDGER, READERS = 6, 4, 3, 8
GEN = re.compile(r"ledger generation (\d+)")
BATCH_DOC = re.compile(r"b(\d+)-\d+")


def batch_request(g: int) -> dict:
    """Batch g: PER_BATCH new documents sharing the word `batch{g}`, and a new version of every ledger
    document saying `generation g` (an update: delete the old rows, then add, in one write)."""
    new = [{"id": f"b{g}-{j}", "text": f"batch{g} note {j} about owls and rivers"} for j in range(PER_BATCH)]
    ledger = [{"id": f"ledger-{i}", "text": f"ledger generation {g} entry {i}"} for i in range(LEDGER)]
    return {"documents": new + ledger}


def check_snapshot(hits: list[dict]) -> int:
    """Every committed state holds batches 1..g in full and the ledger at generation g; returns g."""
    ids = [h["id"] for h in hits]
    assert len(ids) == len(set(ids)), "a chunk was returned twice"
    ledger = [h for h in hits if h["doc_id"].startswith("ledger-")]
    assert len(ledger) == LEDGER, f"{len(ledger)} ledger documents visible (a half-done update)"
    generations = {int(GEN.search(h["text"]).group(1)) for h in ledger}
    assert len(generations) == 1, f"ledger documents from several writes: {generations}"
    g = generations.pop()
    seen: dict[int, int] = {}
    for h in hits:
        if m := BATCH_DOC.fullmatch(h["doc_id"]):
            seen[int(m.group(1))] = seen.get(int(m.group(1)), 0) + 1
    assert seen == {b: PER_BATCH for b in range(1, g + 1)}, f"generation {g} but batches {seen}"
    return g


def test_searches_during_writes_see_only_whole_batches(tmp_path):
    base_docs = DOCS + [{"id": f"ledger-{i}", "text": f"ledger generation 0 entry {i}"} for i in range(LEDGER)]
    make_index(tmp_path / "db", base_docs)
    settings = Settings(db=str(tmp_path / "db"), token=TOKEN, embedder=FakeEmbedder(), llm=ScriptedGenerator("x"))
    everything = {"query": "owls rivers ledger", "k": 500, "strategy": "standard"}  # k > rows: every row
    errors: list[str] = []
    checked = [0] * READERS
    writer_done = threading.Event()

    with serving(settings) as base:

        def read(n: int) -> None:
            last, deadline = 0, time.monotonic() + 120
            with httpx.Client(base_url=base, timeout=60) as c:
                for i in range(400):  # bounded; stops after the writer and one more look
                    final = writer_done.is_set()
                    try:
                        if i % 3 == 2:  # the default strategy too, for errors only
                            r = c.get("/search", params={"query": "owls and rivers", "k": 5})
                            assert r.status_code == 200, r.text
                        r = c.post("/search", json=everything)
                        assert r.status_code == 200, r.text
                        g = check_snapshot(r.json()["hits"])
                        assert g >= last, f"went back from generation {last} to {g}"
                        last = g
                        checked[n] += 1
                    except Exception as e:  # noqa: BLE001 - every failure counts
                        errors.append(f"reader {n}: {type(e).__name__}: {e}")
                        return
                    if final or time.monotonic() > deadline:
                        return

        def write() -> None:
            try:
                with httpx.Client(base_url=base, timeout=60, headers=AUTH) as c:
                    for g in range(1, BATCHES + 1):
                        r = c.post("/documents", json=batch_request(g))
                        assert r.status_code == 200, r.text
                        assert (r.json()["added"], r.json()["updated"]) == (PER_BATCH, LEDGER), r.text
            except Exception as e:  # noqa: BLE001
                errors.append(f"writer: {type(e).__name__}: {e}")
            finally:
                writer_done.set()

        threads = [threading.Thread(target=read, args=(n,)) for n in range(READERS)]
        threads.append(threading.Thread(target=write))
        for t in threads:
            t.start()
        for t in threads:
            t.join(180)
        assert not errors, errors[:3]
        assert all(checked), f"a reader never completed a search: {checked}"
        final = httpx.post(base + "/search", json=everything, timeout=30).json()["hits"]
        assert check_snapshot(final) == BATCHES
        assert len(final) == len(base_docs) + BATCHES * PER_BATCH
        assert httpx.get(base + "/info").json()["documents"] == len(base_docs) + BATCHES * PER_BATCH


def test_bm25_and_hybrid_strategies(client):
    r = client.get("/search", params={"query": "Kasparov", "k": 3, "strategy": "bm25", "explain": True})
    assert r.status_code == 200, r.text
    assert [h["doc_id"] for h in r.json()["hits"]] == ["chess"] and r.json()["hits"][0]["votes"][0]["space"] == "bm25"
    r = client.post("/search", json={"query": "Kasparov chess", "k": 2, "strategy": "hybrid"})
    assert r.status_code == 200 and len(r.json()["hits"]) == 2
    # a document added through the server is found by its words at once
    assert client.post("/documents", json={"documents": [{"id": "go", "text": "AlphaGo beat Lee Sedol."}]},
                       headers=AUTH).status_code == 200
    r = client.get("/search", params={"query": "Sedol", "strategy": "mrag-bm25", "k": 1})
    assert [h["doc_id"] for h in r.json()["hits"]] == ["go"]


def counting_loads(monkeypatch) -> list[tuple[int, bool]]:
    """Every exact-path matrix read from now on: (rows, with the heads)."""
    from mrag import store

    loads: list[tuple[int, bool]] = []
    real = store.load_matrix

    def load(snapshot, columns, n, *args, **kwargs):
        loads.append((n, kwargs["with_heads"]))
        return real(snapshot, columns, n, *args, **kwargs)

    monkeypatch.setattr(store, "load_matrix", load)
    return loads


TWO_PARTS = {"query": "Honeybees cool the hive. Water flows downhill."}


def test_startup_searches_once_so_the_first_request_loads_nothing(tmp_path, monkeypatch):
    from mrag.retrieve import bm25

    make_index(tmp_path / "db", DOCS)
    loads = counting_loads(monkeypatch)
    builds = []
    real = bm25.Bm25.build
    monkeypatch.setattr(bm25.Bm25, "build", lambda *args, **kwargs: (builds.append(1), real(*args, **kwargs))[1])
    llm = ScriptedGenerator("unused")
    with serving(Settings(db=str(tmp_path / "db"), embedder=FakeEmbedder(), llm=llm)) as base:
        # the default's matrix and its in-memory full-text index, before listening
        assert loads == [(4, False)] and builds == [1]
        r = httpx.post(f"{base}/search", json=TWO_PARTS)
        assert r.status_code == 200 and r.json()["hits"]
        assert loads == [(4, False)] and builds == [1] and llm.calls == 0
    with serving(Settings(db=str(tmp_path / "db"), embedder=FakeEmbedder(), warm=False)) as base:
        assert loads == [(4, False)]  # no warm-up: the first request reads it
        assert httpx.post(f"{base}/search", json={"query": "honeybees hive"}).status_code == 200
        assert loads == [(4, False), (4, False)]


def test_startup_warms_the_index_s_own_default(tmp_path, monkeypatch, caplog):
    make_index(tmp_path / "db", DOCS)
    writer = Index.open(tmp_path / "db", embedder=FakeEmbedder())
    writer.set_default_strategy({"strategy": "mrag"})  # a tuned default that votes with the heads
    loads = counting_loads(monkeypatch)
    with serving(Settings(db=str(tmp_path / "db"), embedder=FakeEmbedder())) as base:
        assert loads == [(4, True)]
        assert httpx.post(f"{base}/search", json=TWO_PARTS).json()["strategy"] == "mrag"
        assert loads == [(4, True)]
    writer.set_default_strategy({"strategy": "mrag-fusion"})  # fused sub-queries, each voted on by the heads
    llm = ScriptedGenerator("unused")
    with serving(Settings(db=str(tmp_path / "db"), embedder=FakeEmbedder(), llm=llm)):
        assert loads == [(4, True), (4, True)] and llm.calls == 0  # searched, with its own sub-query
    assert "warm-up" not in caplog.text


def test_a_failed_or_stalled_warm_up_is_logged_and_the_server_starts(tmp_path, monkeypatch, caplog):
    make_index(tmp_path / "db", DOCS)

    def broken(self):
        raise RuntimeError("manifest unreadable")

    with monkeypatch.context() as patch:
        patch.setattr(Index, "default_strategy", property(broken))
        with serving(Settings(db=str(tmp_path / "db"), embedder=FakeEmbedder())) as base:
            assert httpx.get(f"{base}/health").status_code == 200
    assert "warm-up search failed: manifest unreadable" in caplog.text
    release = threading.Event()
    real = Index.search_many

    def stalled(self, *args, **kwargs):  # an external space's service that does not answer
        release.wait(30)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Index, "search_many", stalled)
    try:
        with serving(Settings(db=str(tmp_path / "db"), embedder=FakeEmbedder(), warm_timeout_s=0.2)) as base:
            assert httpx.get(f"{base}/health").status_code == 200  # started while the warm-up waits
            assert "still running after 0.2 s" in caplog.text
    finally:
        release.set()


def test_startup_on_an_index_with_ann_indexes_reads_no_matrix(tmp_path, monkeypatch):
    make_index(tmp_path / "db", DOCS)
    Index.open(tmp_path / "db", embedder=FakeEmbedder()).build_ann()
    loads = counting_loads(monkeypatch)
    with serving(Settings(db=str(tmp_path / "db"), embedder=FakeEmbedder())) as base:
        r = httpx.post(f"{base}/search", json=TWO_PARTS)
        assert r.status_code == 200 and r.json()["hits"]
    assert loads == []  # the ANN path: nothing to load, at start-up or after


def test_shutdown_waits_for_a_warm_up_still_running(tmp_path, monkeypatch, caplog):
    """A process that exits while the warm-up reads LanceDB may abort: the app's shutdown joins it first
    (for at most warm_timeout_s again)."""
    make_index(tmp_path / "db", DOCS)
    release = threading.Event()
    real = Index.search_many

    def slow(self, *args, **kwargs):
        release.wait(30)
        time.sleep(1.0)  # still at it when the server is asked to stop
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Index, "search_many", slow)
    try:
        with serving(Settings(db=str(tmp_path / "db"), embedder=FakeEmbedder(), warm_timeout_s=3.0)):
            assert "still running after 3.0 s" in caplog.text
            release.set()
    finally:
        release.set()
    assert not [t for t in threading.enumerate() if t.name == "mrag-warm-up" and t.is_alive()]


def test_writes_need_the_token_under_a_path_prefix_and_the_token_is_compared_as_sent(tmp_path):
    """Behind a proxy with a root path (`uvicorn --root-path`), writes went through without the token; a
    token read from a file with its newline, or one of UTF-8 letters, matched no header."""
    make_index(tmp_path / "db", DOCS)
    settings = Settings(db=str(tmp_path / "db"), embedder=FakeEmbedder(), token="clé-secrète\n")
    doc = {"documents": [{"id": "evil", "text": "Written without the token."}]}
    with serving(settings, root_path="/mrag") as base:
        assert httpx.post(base + "/documents", json=doc, timeout=30).status_code == 401
        assert httpx.delete(base + "/documents/roads", timeout=30).status_code == 401
        wrong = {"Authorization": "Bearer clé".encode()}
        assert httpx.post(base + "/documents", json=doc, headers=wrong, timeout=30).status_code == 403
        right = {"Authorization": "Bearer clé-secrète".encode()}
        assert httpx.post(base + "/documents", json=doc, headers=right, timeout=30).status_code == 200
        assert httpx.get(base + "/search", params={"query": "bees"}, timeout=30).status_code == 200  # reads open


class FailingGenerator(Generator):
    """An LLM server that fails: with an error answer (`UpstreamError`), or with anything else mid-stream."""

    name = "failing"

    def __init__(self, error: Exception) -> None:
        self.error = error

    def stream(self, messages, max_tokens=256) -> Iterator[str]:
        yield "Half an"
        raise self.error


def test_a_failing_llm_is_a_502_told_briefly_and_a_stream_ends_with_an_error_event(tmp_path):
    """An LLM server's error answer was a 400 quoting its body (it may quote a key); any other failure cut
    a stream off without an error event, or gave a plain-text 500."""
    from mrag.generate.remote import UpstreamError

    make_index(tmp_path / "db", DOCS)
    upstream = UpstreamError("Ollama at http://10.0.0.5:11434 answered 500: key sk-abc rejected", "Ollama answered 500")
    question = {"question": "How do bees cool the hive?", "k": 2}
    for error, status, detail in [(upstream, 502, "Ollama answered 500"),
                                  (RuntimeError("CUDA out of memory"), 500, "the server failed (RuntimeError)")]:
        settings = Settings(db=str(tmp_path / "db"), embedder=FakeEmbedder(), llm=FailingGenerator(error))
        with serving(settings) as base:
            r = httpx.post(base + "/ask", json=question, timeout=30)
            assert r.status_code == status and r.json()["detail"].startswith(detail) and "sk-abc" not in r.text
            with httpx.stream("POST", base + "/ask", json=question | {"stream": True}, timeout=30) as streamed:
                events = sse_events(streamed.read().decode())
        assert [e for e, _ in events] == ["context", "token", "error"]
        assert events[-1][1]["detail"].startswith(detail.replace("the server failed", "generation failed"))


def test_an_llm_server_that_rate_limits_is_a_503_with_its_retry_after(tmp_path):
    from mrag.generate.remote import UpstreamError

    make_index(tmp_path / "db", DOCS)
    limited = UpstreamError("OpenAI-compatible server at http://x answered 429: slow down",
                            "OpenAI-compatible server answered 429", 429, "7")
    settings = Settings(db=str(tmp_path / "db"), embedder=FakeEmbedder(), llm=FailingGenerator(limited), warm=False)
    with serving(settings) as base:
        r = httpx.post(base + "/ask", json={"question": "How do bees cool the hive?"}, timeout=30)
    assert r.status_code == 503 and r.headers["retry-after"] == "7"
    assert r.json()["detail"] == "OpenAI-compatible server answered 429"


def test_blank_subqueries_are_none_the_llm_writes_them(tmp_path):
    make_index(tmp_path / "db", DOCS)
    llm = ScriptedGenerator("honeybees wings")
    settings = Settings(db=str(tmp_path / "db"), embedder=FakeEmbedder(), llm=llm, warm=False)
    with serving(settings) as base:
        r = httpx.post(base + "/search", json={"query": "bees", "strategy": "fusion", "subqueries": ["  "]}, timeout=30)
    assert r.status_code == 200 and r.json()["subqueries"] == ["bees", "honeybees wings"] and llm.calls == 1


class SlowGenerator(Generator):
    """Many pieces, slowly; says when its stream was closed."""

    name = "slow"

    def __init__(self, count: int = 400) -> None:
        self.closed, self.pieces, self.count = threading.Event(), 0, count

    def stream(self, messages, max_tokens=256) -> Iterator[str]:
        try:
            for _ in range(self.count):
                self.pieces += 1
                yield "word "
                time.sleep(0.05)
        finally:
            self.closed.set()


def test_a_client_that_leaves_a_stream_stops_the_generation(tmp_path):
    """Starlette leaves a sync iterator open when the client goes: the generation ran on to max_tokens
    (32 s of SmolLM2 seen), holding the model, until the garbage collector found it."""
    import gc

    make_index(tmp_path / "db", DOCS)
    llm = SlowGenerator()
    settings = Settings(db=str(tmp_path / "db"), embedder=FakeEmbedder(), llm=llm)
    gc.disable()  # a quiet server: no collection to close it by chance
    try:
        with serving(settings) as base:
            with httpx.stream("POST", base + "/ask", json={"question": "bees", "stream": True}, timeout=30) as r:
                for line in r.iter_lines():
                    if line.startswith("event: token"):
                        break  # the client goes after its first piece
            assert llm.closed.wait(10) and llm.pieces < 100
    finally:
        gc.enable()


class GatedEmbedder(FakeEmbedder):
    """The fake embedder whose document batches wait at a gate: batch i (from 1) signals `started[i]` and
    waits for `go[i]`. Queries (one text, "Query: ...") pass at once."""

    def __init__(self, gates: int) -> None:
        super().__init__()
        self.started = [threading.Event() for _ in range(gates + 1)]
        self.go = [threading.Event() for _ in range(gates + 1)]
        self.document_batches = 0

    def embed_batch(self, texts):
        if any(t.startswith("doc ") for t in texts):
            self.document_batches += 1
            i = self.document_batches
            if i < len(self.go):
                self.started[i].set()
                assert self.go[i].wait(30), f"batch {i} was never let through"
        return super().embed_batch(texts)


def test_a_large_write_lets_searches_and_deletes_through_while_it_embeds(tmp_path):
    """A search asked for while a write embeds waits for one batch of it, not all (the write's batches and
    the searches take turns at the model); a delete, which embeds nothing, waits for none (the write
    commits under the index's lock, taken only once its rows are embedded)."""
    make_index(tmp_path / "db", DOCS)
    gated = GatedEmbedder(gates=2)
    settings = Settings(db=str(tmp_path / "db"), token=TOKEN, embedder=gated, warm=False)
    docs = [{"id": f"d{i}", "text": f"doc {i} about volcanoes and lava"} for i in range(40)]  # 2 batches of 32
    with serving(settings) as base, httpx.Client(base_url=base, timeout=60) as c:
        release = [gated.go[1], gated.go[2]]
        writing = threading.Thread(target=lambda: c.post("/documents", json={"documents": docs}, headers=AUTH))
        writing.start()
        assert gated.started[1].wait(30)  # the first batch is at the model
        deleted = c.delete("/documents/chess", headers=AUTH)
        assert deleted.status_code == 200 and deleted.json()["deleted_chunks"] == 1
        found: dict[str, httpx.Response] = {}
        searching = threading.Thread(target=lambda: found.setdefault("r", c.get("/search", params={"query": "wings"})))
        searching.start()
        time.sleep(0.2)  # the search is waiting for its turn at the model
        gated.go[1].set()
        searching.join(30)  # its turn comes before the write's second batch, which still waits
        try:
            assert not gated.go[2].is_set() and found["r"].status_code == 200
            assert found["r"].json()["hits"][0]["doc_id"] == "bees"
        finally:
            for gate in release:
                gate.set()
        writing.join(30)
        assert c.get("/info").json()["documents"] == len(DOCS) - 1 + len(docs)


def test_a_query_longer_than_the_server_takes_is_refused(tmp_path):
    make_index(tmp_path / "db", DOCS)
    settings = Settings(db=str(tmp_path / "db"), embedder=FakeEmbedder(), max_query_chars=50, warm=False,
                        llm=ScriptedGenerator("Bees [1]."))
    with serving(settings) as base, httpx.Client(base_url=base, timeout=30) as c:
        assert c.get("/search", params={"query": "x" * 50}).status_code == 200
        for r in (c.get("/search", params={"query": "bees. " * 10}),
                  c.post("/ask", json={"question": "bees. " * 10}),
                  c.post("/search", json={"query": "x", "strategy": "fusion", "subqueries": ["y" * 51]})):
            assert r.status_code == 400
            assert "at most 50 (mrag serve --max-query-chars)" in r.json()["detail"]


def test_text_utf8_cannot_hold_is_refused_naming_the_field(client):
    """JSON's "\\ud800" decodes to a lone surrogate: a 422 naming where (its echo of the input made UTF-8),
    not a 400 about the server's own response ("position 158")."""
    before = client.get("/info").json()
    for path, body, field, message in [
        ("/search", {"query": "bees \ud800"}, "query", "valid string"),
        ("/ask", {"question": "\udfff bees"}, "question", "valid string"),
        ("/documents", {"documents": [{"id": "ok", "text": "fine"}, {"id": "s", "text": "a \ud800 b"}]}, "text",
         "valid string"),
        ("/documents", {"documents": [{"id": "m", "text": "fine", "lang": "x\ud800"}]}, 0,
         "lang holds an unpaired surrogate (U+D800) at character 1"),
        ("/documents", {"documents": [{"id": "m", "text": "fine", "metadata": {"a": ["\udc00"]}}]}, "metadata",
         "metadata.a[0] holds an unpaired surrogate (U+DC00)"),
        ("/documents/delete", {"ids": ["ok", "\ud800"]}, "ids", "ids[1] holds an unpaired surrogate"),
        ("/documents", {"documents": [{"id": "t", "text": "fine", "title": "\ud800"}]}, "title",
         "title holds an unpaired surrogate"),
        ("/documents", {"documents": [{"id": "x\ud800", "text": "fine"}]}, "id", "id holds an unpaired surrogate"),
        ("/documents", {"documents": [{"text": "fine", "source": "\ud800"}]}, "source", "source holds an unpaired"),
        ("/search", {"query": "bees", "strategy": "fusion", "subqueries": ["\ud800 x"]}, "subqueries",
         "subqueries[0] holds an unpaired surrogate"),
    ]:
        r = client.post(path, content=json.dumps(body), headers={"content-type": "application/json", **AUTH})
        assert r.status_code == 422, r.text
        (error,) = r.json()["detail"]
        assert error["loc"][-1] == field and message in error["msg"]
        assert "\ufffd" in json.dumps(error["input"], ensure_ascii=False)  # the echo, made UTF-8
    assert client.get("/info").json() == before


def test_nan_and_infinity_literals_are_a_422_naming_the_field(client):
    """Python's JSON reads NaN and Infinity: the 422 echoing one failed to be written (a 400 naming neither the
    field nor the problem), and an id NaN was looked up as "nan"."""
    before = client.get("/info").json()
    for path, body, field in [("/search", '{"query": "bees", "k": NaN}', "k"),
                              ("/search", '{"query": NaN}', "query"),
                              ("/search", '{"query": "bees", "c": Infinity}', "c"),
                              ("/documents/delete", '{"ids": [NaN]}', "ids"),
                              ("/documents", '{"documents": [{"id": -Infinity, "text": "fine"}]}', "id")]:
        r = client.post(path, content=body, headers={"content-type": "application/json", **AUTH})
        assert r.status_code == 422, (body, r.text)
        assert any(str(field) in map(str, error["loc"]) for error in r.json()["detail"]), (body, r.text)
    assert client.get("/info").json() == before


def test_a_search_that_other_commits_keep_moving_is_a_503_to_retry(client, monkeypatch):
    from mrag.retrieve import search

    tries = []

    def moving(*args, **kwargs):
        tries.append(time.monotonic())
        raise search.Moved

    monkeypatch.setattr(search, "_search_many", moving)
    r = client.get("/search", params={"query": "bees"})
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert "search again" in r.json()["detail"] and len(tries) == search.MOVED_TRIES
    waits = [b - a for a, b in zip(tries, tries[1:])]
    assert all(w >= min(search.MOVED_WAIT_S * 2**i, 0.5) for i, w in enumerate(waits))  # each longer, to 0.5 s


def test_a_write_that_waits_too_long_for_the_lock_is_a_503_naming_its_holder(url, monkeypatch, tmp_path):
    db = tmp_path / "db"
    holder = subprocess.Popen([sys.executable, PROCS, "hold", str(db), "20"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        monkeypatch.setenv("MRAG_LOCK_TIMEOUT", "0.5")
        with httpx.Client(base_url=url, timeout=30) as c:
            for r in (c.post("/documents", json={"documents": [{"id": "n", "text": "new"}]}, headers=AUTH),
                      c.delete("/documents/bees", headers=AUTH)):
                assert r.status_code == 503 and r.headers["retry-after"] == "5"
                assert f"pid {holder.pid}" in r.json()["detail"] and "MRAG_LOCK_TIMEOUT" in r.json()["detail"]
    finally:
        holder.kill()
        holder.wait()
    assert Index.open(db, embedder=FakeEmbedder()).info()["documents"] == len(DOCS)


def test_searches_are_answered_while_many_writes_wait_for_another_process_s_lock(url, monkeypatch, tmp_path):
    # 40 writes waiting for the lock held every thread of the pool reads share: a search waited as long as they
    holder = subprocess.Popen([sys.executable, PROCS, "hold", str(tmp_path / "db"), "60"], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        monkeypatch.setenv("MRAG_LOCK_TIMEOUT", "60")
        statuses: list[int] = []
        with httpx.Client(base_url=url, timeout=120, limits=httpx.Limits(max_connections=100)) as c:
            def write(i: int) -> None:
                statuses.append(c.post("/documents", json={"documents": [{"id": f"w{i}", "text": "new"}]},
                                       headers=AUTH).status_code)

            writes = [threading.Thread(target=write, args=(i,), daemon=True) for i in range(48)]
            for w in writes:
                w.start()
            time.sleep(1)  # the writes are in: all waiting for the lock
            r = c.get("/search", params={"query": "bees", "strategy": "standard"})
            assert r.status_code == 200 and holder.poll() is None and statuses == []  # while the lock is held
            holder.kill()
            for w in writes:
                w.join(60)
        assert statuses == [200] * 48
    finally:
        holder.kill()
        holder.wait()
    assert Index.open(tmp_path / "db", embedder=FakeEmbedder()).info()["documents"] == len(DOCS) + 48


def test_the_model_s_turns_go_in_the_order_asked_and_a_waiter_that_fails_gives_up_its_turn():
    from mrag.server import TurnLock

    lock, order, release = TurnLock(), [], threading.Event()

    def take(name: str, hold: threading.Event | None = None) -> None:
        with lock.turn():
            order.append(name)
            if hold is not None:
                hold.wait(10)

    first = threading.Thread(target=take, args=("first", release))
    first.start()
    while lock._next < 1:
        time.sleep(0.001)

    class Interrupted(Exception):
        pass

    waits = lock._changed.wait_for
    lock._changed.wait_for = lambda *a, **k: (_ for _ in ()).throw(Interrupted())  # the second waiter fails
    with pytest.raises(Interrupted):
        with lock.turn():
            order.append("never")
    lock._changed.wait_for = waits
    later = []
    for name in ("third", "fourth"):  # asked in this order, each once the one before holds its ticket
        later.append(threading.Thread(target=take, args=(name,)))
        later[-1].start()
        while lock._next < 3 + len(later) - 1:
            time.sleep(0.001)
    release.set()
    for thread in (first, *later):
        thread.join(10)
    assert order == ["first", "third", "fourth"] and lock._serving == lock._next == 4


def test_a_write_tells_what_its_model_could_not_read(tmp_path):
    """The server's embedder wrapper did not pass `unread` on: POST /documents never warned."""

    class ShortSighted(FakeEmbedder):
        max_length = 8

        def unread(self, texts):
            return sum(len(t) > 20 for t in texts), 0

    make_index(tmp_path / "db", DOCS)
    with serving(Settings(db=str(tmp_path / "db"), token=TOKEN, embedder=ShortSighted())) as base, httpx.Client(
            base_url=base, timeout=30) as client:
        r = client.post("/documents", json={"documents": [{"text": "A long text about Roman aqueducts."}]},
                        headers=AUTH)
    assert r.status_code == 200 and r.json()["warnings"] == [
        "1 of 1 chunks are longer than the model reads (8 tokens): their vectors see only their start (a smaller "
        "--chunk-chars, or a model that reads more)"]


REBUILD = """
import shutil, sys
sys.path.insert(0, {tests!r})
from conftest import FakeEmbedder
from mrag.index import Index

class Other(FakeEmbedder):  # another model of the same sizes: other vectors
    name = {model!r}

shutil.rmtree({db!r})
Index.open({db!r}, embedder=Other()).add([{{"id": "volcano", "text": "Volcanoes erupt molten lava."}}])
"""


@pytest.mark.parametrize("model", ["other-model", FakeEmbedder.name])
def test_an_index_made_again_by_another_process_is_followed_only_with_the_same_model(tmp_path, model):
    # the server ranked with the old model's query vectors and stored its vectors in the new index, in silence
    db = str(tmp_path / "db")
    make_index(tmp_path / "db", DOCS)
    settings = Settings(db=db, token=TOKEN, embedder=FakeEmbedder(), llm=ScriptedGenerator("Lava [1]."))
    with serving(settings) as base, httpx.Client(base_url=base, timeout=30) as client:
        assert client.get("/search", params={"query": "bees"}).status_code == 200  # the model loaded
        script = REBUILD.format(tests=str(Path(__file__).parent), model=model, db=db)
        subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
        search = client.get("/search", params={"query": "volcanoes lava", "strategy": "standard"})
        add = client.post("/documents", json={"documents": [{"id": "zebra", "text": "Zebras graze."}]},
                          headers={"Authorization": f"Bearer {TOKEN}"})
        if model == FakeEmbedder.name:
            assert search.status_code == 200 and [h["doc_id"] for h in search.json()["hits"]] == ["volcano"]
            assert add.status_code == 200
        else:
            for r in (search, add, client.post("/ask", json={"question": "lava"})):
                assert r.status_code == 503 and "made again with another model ('other-model')" in r.json()["detail"]
    kept = Store.open(db).rows(columns=["doc_id"])["doc_id"].to_pylist()
    assert sorted(kept) == (["volcano"] if model != FakeEmbedder.name else ["volcano", "zebra"])


def test_an_index_folder_removed_under_the_server_is_a_503_health_included_and_followed_when_made_again(tmp_path):
    # a 500 "the server failed (RuntimeError)" on every read, while /health said ok
    import shutil

    make_index(tmp_path / "db", DOCS)
    settings = Settings(db=str(tmp_path / "db"), embedder=FakeEmbedder(), llm=ScriptedGenerator("x"))
    with serving(settings) as base, httpx.Client(base_url=base, timeout=30) as client:
        assert client.get("/health").json() == {"status": "ok"}
        shutil.rmtree(tmp_path / "db")
        for path in ("/search?query=bees", "/info", "/health"):
            r = client.get(path)
            assert r.status_code == 503 and "the index's files could not be read" in r.json()["detail"], path
        make_index(tmp_path / "db", DOCS[:1])
        assert client.get("/health").status_code == 200 and client.get("/info").json()["documents"] == 1


def test_an_answer_with_a_lone_surrogate_is_sent_whole_with_a_replacement_character(tmp_path):
    # an emoji's halves escaped in two pieces of an LLM's stream: the answer was a 400 blaming the client, and
    # the stream was cut off after its last token with no error event
    make_index(tmp_path / "db", DOCS)
    settings = Settings(db=str(tmp_path / "db"), embedder=FakeEmbedder(), llm=ScriptedGenerator("Bees \ud83d fan [1]."))
    with serving(settings) as base, httpx.Client(base_url=base, timeout=30) as client:
        body = {"question": "honeybees hive", "k": 2, "strategy": "standard"}
        r = client.post("/ask", json=body)
        assert r.status_code == 200 and r.json()["answer"] == "Bees \ufffd fan [1]."
        events = re.findall(r"event: (\w+)\ndata: (.*)\n", client.post("/ask", json=body | {"stream": True}).text)
        assert [e for e, _ in events][-1] == "answer" and json.loads(events[-1][1])["answer"] == "Bees \ufffd fan [1]."


def test_a_client_that_leaves_a_whole_answer_stops_its_generation(tmp_path):
    # the non-streamed answer ran on to max_tokens (the local model's other answers waiting behind it)
    make_index(tmp_path / "db", DOCS)
    slow = SlowGenerator(60)
    settings = Settings(db=str(tmp_path / "db"), embedder=FakeEmbedder(), llm=slow)
    with serving(settings) as base:
        with pytest.raises(httpx.ReadTimeout), httpx.Client(base_url=base, timeout=0.8) as client:
            client.post("/ask", json={"question": "honeybees hive", "k": 2, "strategy": "standard"})
        assert slow.closed.wait(10) and slow.pieces < 60
        slow.closed.clear()
        with httpx.Client(base_url=base, timeout=30) as client:  # one that waits gets the whole answer
            r = client.post("/ask", json={"question": "honeybees hive", "k": 2, "strategy": "standard"})
        assert r.status_code == 200 and r.json()["answer"] == ("word " * 60).strip() and slow.closed.is_set()



class PiecesGenerator(Generator):
    """Replies with the given pieces, as a stream sends them."""

    name = "pieces"

    def __init__(self, *pieces: str) -> None:
        self.pieces = pieces

    def stream(self, messages, max_tokens=256) -> Iterator[str]:
        yield from self.pieces


def test_an_emoji_whose_halves_come_in_two_pieces_is_answered_whole(tmp_path):
    # each piece was made well-formed alone: two U+FFFD for one emoji
    make_index(tmp_path / "db", DOCS)
    llm = PiecesGenerator("Bees fan [1] ", "\ud83d", "\ude00", ".")
    settings = Settings(db=str(tmp_path / "db"), embedder=FakeEmbedder(), llm=llm)
    with serving(settings) as base, httpx.Client(base_url=base, timeout=30) as client:
        body = {"question": "honeybees hive", "k": 2, "strategy": "standard"}
        assert client.post("/ask", json=body).json()["answer"] == "Bees fan [1] \U0001f600."
        events = re.findall(r"event: (\w+)\ndata: (.*)\n", client.post("/ask", json=body | {"stream": True}).text)
        assert json.loads(events[-1][1])["answer"] == "Bees fan [1] \U0001f600."


def test_an_object_store_that_fails_is_a_503_not_a_500():
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from mrag.server_errors import add_error_handlers

    app = FastAPI()
    add_error_handlers(app)

    @app.get("/s3")
    def s3() -> None:
        raise RuntimeError("LanceError(IO): Generic S3 error: error sending request for url (http://127.0.0.1:9/b)")

    r = TestClient(app).get("/s3")
    assert r.status_code == 503 and r.json()["detail"].startswith("the object store did not answer")
