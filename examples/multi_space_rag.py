"""Multi-Head RAG with several embedding spaces, in the shape of LanceDB's Multi-Head RAG page.

One LanceDB table per embedding model, all filled through LanceDB's Embedding API; one question
searched in every space; the nearest documents merged with the MRAG vote (`MRAGReranker`); an
answer written from the merged documents.

Offline (default): the packaged all-MiniLM-L6-v2 through LanceDB's `sentence-transformers`
function (a local path), and mrag's `multi-head` function (registered by `import mrag`), whose
table holds the standard vector and one vector per attention head: 1 + 1 + 12 spaces vote.
With an OpenAI key or a running Ollama, add their spaces as the LanceDB page does:

    python examples/multi_space_rag.py                         # offline, MiniLM + multi-head
    OPENAI_API_KEY=... python examples/multi_space_rag.py --openai
    python examples/multi_space_rag.py --ollama llama3 --ollama mistral   # `ollama pull llama3` first
    python examples/multi_space_rag.py --no-generate           # merged documents only, no LLM

The answer comes from mrag's local generator (SmolLM2-135M, slow but offline) unless
`--generator ollama|openai` is given.
"""

from __future__ import annotations

import argparse
import json
from importlib.resources import files

import lancedb
import pyarrow as pa
from lancedb.embeddings import get_registry
from lancedb.pydantic import LanceModel, Vector

import mrag  # noqa: F401  (registers "multi-head" in LanceDB's registry)
from mrag.embed.models import resolve_model
from mrag.lancedb_ext import MRAGReranker, column_scale, multi_head_table, vector_columns

QUESTION = (
    "How did Roman aqueducts use gravity to carry water into cities, "
    "and how do honeybees regulate the temperature of their hive?"
)


def spaces(args: argparse.Namespace) -> dict[str, object]:
    """Embedding spaces by name, each a LanceDB registry function (the LanceDB page's list)."""
    registry = get_registry()
    out: dict[str, object] = {
        "minilm": registry.get("sentence-transformers").create(name=resolve_model("minilm").path),
    }
    if args.openai:
        out["openai"] = registry.get("openai").create()  # reads OPENAI_API_KEY
    for model in args.ollama:
        out[f"ollama_{model}"] = registry.get("ollama").create(name=model)
    return out


def table_for(db: lancedb.DBConnection, name: str, function: object) -> object:
    """One LanceModel schema and table per space, as on the LanceDB page."""

    class Doc(LanceModel):
        title: str
        text: str = function.SourceField()  # type: ignore[attr-defined]
        vector: Vector(function.ndims()) = function.VectorField()  # type: ignore[attr-defined,valid-type]

    return db.create_table(name, schema=Doc, mode="overwrite")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", default="/tmp/mrag-multi-space", help="LanceDB folder (rewritten)")
    parser.add_argument("--question", default=QUESTION)
    parser.add_argument("-k", type=int, default=4, help="merged documents for the answer")
    parser.add_argument("-c", type=int, default=8, help="nearest documents per space")
    parser.add_argument("--openai", action="store_true", help="add an OpenAI space (OPENAI_API_KEY)")
    parser.add_argument("--ollama", action="append", default=[], help="add an Ollama space with this model")
    parser.add_argument("--method", choices=["vote", "rrf"], default="vote")
    parser.add_argument("--generator", default="local", help="local, ollama or openai")
    parser.add_argument("--no-generate", action="store_true")
    args = parser.parse_args()

    docs = [json.loads(line) for line in files("mrag").joinpath("data/sample_corpus.jsonl").read_text().splitlines()]
    rows = [{"title": d["title"], "text": d["text"]} for d in docs]
    db = lancedb.connect(args.db)
    columns = {}  # space name -> (table, vector column)
    for name, function in spaces(args).items():
        table = table_for(db, name, function)
        table.add(rows)  # LanceDB computes this space's vectors
        columns[name] = (table, "vector")
        print(f"space {name}: {table.count_rows()} documents, {function.ndims()} dimensions")
    # mrag's multi-head function: the standard vector and one column per attention head, one forward pass
    heads = multi_head_table(db, "multi_head", mode="overwrite", name="minilm", layer=-1)
    heads.add([{"text": d["text"]} for d in docs])
    titles = {d["text"]: d["title"] for d in docs}
    columns |= {f"multi_head.{col}": (heads, col) for col in vector_columns(heads)}
    print(f"space multi_head: {heads.count_rows()} documents, standard + {len(vector_columns(heads)) - 1} head spaces")

    # every space votes for its nearest documents, weighted by its scale (computed like a head's)
    weights = [column_scale(t, col) for t, col in columns.values()]
    results = [
        t.search(args.question, vector_column_name=col).distance_type("cosine").limit(args.c).to_arrow()
        for t, col in columns.values()
    ]
    results = [r.append_column("title", pa.array([titles[x] for x in r["text"].to_pylist()])) if "title" not in
               r.column_names else r for r in results]
    merger = MRAGReranker(weights, method=args.method, key="title", names=list(columns))
    merged = merger.merge(results, k=args.k)
    print(f"\nQuestion: {args.question}\n")
    for rank, row in enumerate(merged, 1):
        voters = ", ".join(f"{v['space']}@{v['rank']}" for v in row["_votes"][:6])
        voters += f", ... ({len(row['_votes'])} spaces)" if len(row["_votes"]) > 6 else ""
        print(f"{rank}. [{row['_score']:.3f}] {row['title']}  (votes: {voters})")
    if args.no_generate:
        return

    from mrag.generate import build_context, build_messages, make_generator

    class Merged:  # what build_context reads from a hit
        def __init__(self, row: dict) -> None:
            self.id, self.source, self.title = row["title"], "sample_corpus", row["title"]
            self.text, self.score = row["text"], row["_score"]

    messages = build_messages(args.question, build_context([Merged(r) for r in merged]))
    print("\nAnswer:", make_generator(args.generator).generate(messages, max_tokens=160).strip())


if __name__ == "__main__":
    main()
