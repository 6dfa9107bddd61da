"""`mrag ask` and `mrag serve` through click's CliRunner, on a real MiniLM index of tiny files, with
the Ollama backend pointed at a local server that speaks its protocol."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_generate import FakeLLMServer, free_port, ollama_lines

from mrag.cli import cli
from mrag.settings import DEFAULT_STRATEGY

FILES = {
    "bees.txt": "Honeybees fan their wings to cool the hive on hot summer days.",
    "rome.txt": "Roman aqueducts carried water downhill into the city by gravity.",
    "chess.md": "Deep Blue, an IBM computer, beat Garry Kasparov at chess in 1997.",
    "tides.txt": "The Moon's gravity pulls the oceans and raises the tides twice a day.",
}
QUESTION = "How did Romans move water, and why do bees fan their wings?"


def mrag(*args: object, ok: bool = True, **kwargs):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False, **kwargs)
    if ok:
        assert result.exit_code == 0, result.output
    return result


@pytest.fixture
def db(tmp_path, reuse_minilm) -> Path:
    folder = tmp_path / "corpus"
    folder.mkdir()
    for name, text in FILES.items():
        (folder / name).write_text(text)
    mrag("index", folder, "--db", tmp_path / "idx")
    return tmp_path / "idx"


@pytest.fixture
def ollama(monkeypatch):
    servers: list[FakeLLMServer] = []

    def start(*replies: list[str]) -> FakeLLMServer:
        servers.append(FakeLLMServer(list(replies)))
        monkeypatch.setenv("OLLAMA_HOST", servers[-1].url)
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def test_no_generate_prints_the_numbered_context(db):
    out = mrag("ask", QUESTION, "--db", db, "-k", 2, "--no-generate", "--strategy", "standard").stdout
    assert out.startswith("[1] ") and "\n[2] " in out and "[3]" not in out
    assert FILES["rome.txt"] in out and FILES["bees.txt"] in out
    data = json.loads(mrag("ask", QUESTION, "--db", db, "-k", 3, "--no-generate", "--json").stdout)
    assert len(data["context"]) == 3 and data["strategy"] == DEFAULT_STRATEGY
    assert {"number", "id", "source", "title", "text"} <= data["context"][0].keys()
    assert data["context"][0]["text"] in data["messages"][1]["content"]


def test_no_generate_respects_the_context_budget(db):
    out = mrag("ask", QUESTION, "--db", db, "-k", 4, "--no-generate", "--max-context-chars", 200).stdout
    assert out.count("\n[") == 0 and out.startswith("[1] ")  # one chunk fits in 200 characters


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--strategy", "fusion", "--no-generate"], "needs the LLM to write sub-queries"),
        (["--strategy", "nonsense", "--no-generate"], "unknown strategy"),
        (["--generator", "ollama", "--gen-model", "m"], "cannot reach Ollama at http://127.0.0.1:"),
    ],
)
def test_bad_asks_fail_with_one_line(db, monkeypatch, args, message):
    """A strategy the command cannot run is a usage error (exit 2, with click's usage line); the others one line."""
    monkeypatch.setenv("OLLAMA_HOST", f"127.0.0.1:{free_port()}")
    result = mrag("ask", QUESTION, "--db", db, *args, ok=False)
    usage = "--strategy" in args
    assert result.exit_code == (2 if usage else 1) and message in result.output
    assert result.output.strip().splitlines()[-1].startswith("Error: ") and (usage or "\n" not in result.output.strip())


@pytest.mark.parametrize("args", [["-k", "0"], ["--max-context-chars", "0"], ["--max-tokens", "0"]])
def test_ask_option_values_out_of_range_are_usage_errors(db, args):
    result = mrag("ask", QUESTION, "--db", db, *args, "--no-generate", ok=False)
    assert result.exit_code == 2 and "is not in the range x>=1" in result.output


def test_ask_without_an_index(tmp_path):
    result = mrag("ask", "q", "--db", tmp_path / "none", "--no-generate", ok=False)
    assert result.exit_code == 1 and "no mrag index" in result.output


def test_an_answer_cut_off_by_an_error_ends_its_line_before_the_error(db, ollama):
    ollama([*ollama_lines("Water ran")[:1], json.dumps({"error": "the model crashed"})])
    result = mrag("ask", QUESTION, "--db", db, "-k", 2, "--generator", "ollama", "--gen-model", "tiny", ok=False)
    assert result.exit_code == 1 and result.stdout == "Water ran\n" and "the model crashed" in result.stderr


def test_ask_streams_the_answer_then_lists_the_sources(db, ollama):
    server = ollama(ollama_lines("Water ran downhill ", "[1]", "."))
    result = mrag("ask", QUESTION, "--db", db, "-k", 2, "--generator", "ollama", "--gen-model", "tiny",
                  "--strategy", "standard")
    answer, sources = result.stdout.split("\n\nSources:\n")
    assert answer == "Water ran downhill [1]."
    lines = sources.strip().splitlines()
    assert lines[0].startswith("*[1] ") and lines[1].startswith(" [2] ") and len(lines) == 2
    body = server.requests[0]["body"]
    assert body["model"] == "tiny" and FILES["rome.txt"] in body["messages"][1]["content"]


def test_ask_prints_a_reasoning_model_s_answer_without_its_thoughts(db, ollama):
    # the thoughts (and the sources they cite) were printed as the answer, above a Sources list that left them out
    ollama(ollama_lines("<thi", "nk>Is [2] about water? No.", "</think>", "Water ran downhill [1]."))
    result = mrag("ask", QUESTION, "--db", db, "-k", 2, "--generator", "ollama", "--gen-model", "r1")
    assert result.stdout.split("\n\nSources:\n")[0] == "Water ran downhill [1]."
    # a block the chat template opened: the thoughts are printed until the lone </think>, the answer apart
    ollama(ollama_lines("Is [2] about water? No.", "\n</think>\n", "Water ran downhill [1]."))
    result = mrag("ask", QUESTION, "--db", db, "-k", 2, "--generator", "ollama", "--gen-model", "r1")
    assert result.stdout.split("\n\nSources:\n")[0] == "Is [2] about water? No.\n\nWater ran downhill [1]."
    ollama(ollama_lines("<think>Is [2] about water? Still thinking"))  # its tokens ran out while it thought
    result = mrag("ask", QUESTION, "--db", db, "-k", 2, "--generator", "ollama", "--gen-model", "r1", ok=False)
    assert result.exit_code == 1 and result.stdout == "" and "sent its reasoning and no answer" in result.stderr


def test_ask_says_which_cited_numbers_name_no_source(db, ollama):
    """SmolLM2 answered "The answer is: [4]." from three sources, and was told only that it cites none."""
    ollama(ollama_lines("Water ran downhill [1][4]", "; bees [7]."))
    result = mrag("ask", QUESTION, "--db", db, "-k", 2, "--generator", "ollama", "--gen-model", "tiny")
    assert result.stdout.endswith("\n(the answer cites [4], [7]: no sources)\n")
    ollama(ollama_lines("Water ran downhill [3]."))
    answer = json.loads(mrag("ask", QUESTION, "--db", db, "-k", 2, "--generator", "ollama", "--json").stdout)
    assert answer["cited"] == [] and answer["not_sources"] == [3]


def test_ask_with_nothing_retrieved_asks_no_llm(db, ollama):
    server = ollama(ollama_lines("Made ", "up."))
    result = mrag("ask", "zzzqqq xylophone", "--db", db, "--generator", "ollama", "--strategy", "bm25")
    assert result.stdout.endswith("there is no answer from it.\n\n(no sources found)\n") and not server.requests
    answer = json.loads(mrag("ask", "zzzqqq", "--db", db, "--generator", "ollama", "-s", "bm25", "--json").stdout)
    assert answer["context"] == answer["cited"] == [] and not server.requests


def test_ask_json_with_mrag_fusion(db, ollama, monkeypatch):
    monkeypatch.setenv("MRAG_GENERATOR", "ollama")
    monkeypatch.setenv("MRAG_GEN_MODEL", "tiny")
    server = ollama(ollama_lines("1. roman aqueduct gravity\n2. honeybee wing fanning"),
                    ollama_lines("Bees cool the hive [2] and water flowed [1]."))
    data = json.loads(mrag("ask", QUESTION, "--db", db, "-k", 3, "--strategy", "mrag-fusion", "--json").stdout)
    assert set(data) == {"answer", "cited", "context", "strategy", "subqueries"}
    assert data["strategy"] == "mrag-fusion"
    assert data["subqueries"] == [QUESTION, "roman aqueduct gravity", "honeybee wing fanning"]
    assert [c["number"] for c in data["cited"]] == [2, 1] and len(data["context"]) == 3
    assert server.requests[0]["body"]["messages"][-1]["content"].startswith("Generate 4 search queries related to")


def test_serve_passes_its_options_to_uvicorn(db, monkeypatch):
    import uvicorn

    from mrag.server_guard import Guard

    ran: dict = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: ran.update(app=app, **kw))
    monkeypatch.setenv("MRAG_TOKEN", "t0k")
    mrag("serve", "--db", db, "--port", 8123, "--max-request-bytes", 99)
    assert (ran["host"], ran["port"]) == ("127.0.0.1", 8123)
    assert (ran["log_level"], ran["access_log"]) == ("info", False)  # says where it listens, not each request
    guard = next(m for m in ran["app"].user_middleware if m.cls is Guard)
    assert guard.kwargs == {"token": "t0k", "max_bytes": 99}


@pytest.mark.parametrize("env, told", [({"MRAG_LLM_TIMEOUT": "5m"}, "MRAG_LLM_TIMEOUT must be a number of seconds"),
                                        ({"OLLAMA_HOST": "::1"}, "cannot read the Ollama host '::1'")])
def test_serve_refuses_a_bad_generator_setting_before_starting(db, monkeypatch, env, told):
    # it started, and every client of /ask was told the server's setting as their own 400
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: pytest.fail("uvicorn started"))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    backend = "ollama" if "OLLAMA_HOST" in env else "openai"
    result = mrag("serve", "--db", db, "--generator", backend, ok=False)
    assert result.exit_code == 1 and told in result.stderr


def test_serve_refuses_an_address_in_use_before_loading_anything(db, monkeypatch):
    import socket

    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: pytest.fail("uvicorn started"))
    monkeypatch.setattr("mrag.server.create_app", lambda settings: pytest.fail("the app was made"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = mrag("serve", "--db", db, "--port", port, ok=False)
    assert result.exit_code == 1 and f"cannot listen on 127.0.0.1:{port}" in result.stderr
    bad = mrag("serve", "--db", db, "--host", "999.1.1.1", ok=False)
    assert bad.exit_code == 1 and "cannot listen on 999.1.1.1:8000" in bad.stderr


def test_serve_refuses_another_model_in_a_line_before_starting(db, monkeypatch):
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: pytest.fail("uvicorn started"))
    result = mrag("serve", "--db", db, "--model", "sentence-transformers/all-mpnet-base-v2", ok=False)
    assert result.exit_code == 1 and "was built with" in result.stderr and "Traceback" not in result.output


def test_serve_refuses_a_missing_index(tmp_path):
    result = mrag("serve", "--db", tmp_path / "none", ok=False)
    assert result.exit_code == 1 and "no mrag index" in result.output and "--create" in result.output


def test_help_has_examples():
    for command in ("ask", "serve"):
        assert "--db" in mrag(command, "-h").stdout and "mrag " + command in mrag(command, "-h").stdout


@pytest.mark.slow
def test_ask_with_the_local_model(db):
    result = mrag("ask", QUESTION, "--db", db, "-k", 2, "--max-tokens", 6, "--json")
    data = json.loads(result.stdout)
    assert data["answer"] and len(data["context"]) == 2
