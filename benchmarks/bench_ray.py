"""Ray ingestion (`index_with_ray`, Ray Data) against one process (`Index.add_paths`) on the same files.

1. Pipeline cost: an embedder returning random vectors of MiniLM's sizes, so what is timed is reading,
   chunking, Ray Data's transfers and the driver's writes, not a model. Its chunks/s is the ceiling
   the driver's write path puts on a cluster of any size.
2. The real packaged MiniLM (bf16) on a small corpus: one process against Ray with 1 and 2 workers.

Every run indexes into a fresh folder. Ray starts a local cluster; where `unshare -n` works (root), the
script runs itself in a network namespace with only loopback, as the tests do, so Ray's start-up probes
of cloud metadata addresses fail at once.

Run: python benchmarks/bench_ray.py [--quick]. Writes benchmarks/results/ray.json and .md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import machine, markdown_table, sample_texts, write_results

CHUNKS_PER_FILE = 40


def make_corpus(root: Path, n_chunks: int) -> Path:
    """Text files of about CHUNKS_PER_FILE chunks each (~800-character paragraphs)."""
    corpus = root / "corpus"
    corpus.mkdir(parents=True)
    texts = sample_texts(n_chunks, seed=3)
    for f, start in enumerate(range(0, n_chunks, CHUNKS_PER_FILE)):
        (corpus / f"doc{f:05d}.txt").write_text("\n\n".join(texts[start : start + CHUNKS_PER_FILE]))
    return corpus


def random_embedder() -> Any:
    from bench_core import RandomQueryEmbedder

    return RandomQueryEmbedder()


def minilm_bf16() -> Any:
    from mrag.embed.transformer import TransformerEmbedder
    from mrag.settings import cpu_has_bf16_kernels

    # bf16 where the CPU has the kernels (6x slower than float32 without them)
    return TransformerEmbedder(device="cpu", dtype="bfloat16" if cpu_has_bf16_kernels() else "float32")


def run(corpus: Path, embedder: str, how: str, workers: int, root: Path) -> dict[str, Any]:
    from mrag.distributed import index_with_ray
    from mrag.index import Index

    make = random_embedder if embedder == "random" else minilm_bf16
    db = root / f"db-{embedder}-{how}-{workers}"
    start = time.perf_counter()
    if how == "one process":
        chunks = Index.open(db, embedder=make()).add_paths([corpus]).chunks
    else:
        chunks = index_with_ray(db, [corpus], num_workers=workers, make_embedder=make, batch_size=256).chunks
    seconds = time.perf_counter() - start
    shutil.rmtree(db)
    row = {"embedder": embedder, "how": how, "workers": workers if how == "ray" else "-", "chunks": chunks}
    return row | {"seconds": round(seconds, 1), "chunks_per_s": round(chunks / seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a fast smoke run")
    args = parser.parse_args()
    if os.environ.get("MRAG_BENCH_NETNS") is None and shutil.which("unshare"):
        if subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0:
            env = os.environ | {"MRAG_BENCH_NETNS": "1", "RAY_USAGE_STATS_ENABLED": "0"}
            script = 'ip link set lo up 2>/dev/null || true; exec "$@"'
            command = ["unshare", "-n", "sh", "-c", script, "sh", sys.executable, *sys.argv]
            sys.exit(subprocess.run(command, env=env).returncode)
    import ray

    random_n, model_n = (2_000, 64) if args.quick else (100_000, 1024)
    here = str(Path(__file__).resolve().parent)  # the workers import bench_core from here
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in [here, os.environ.get("PYTHONPATH")] if p)
    ray.init(include_dashboard=False, log_to_driver=False, _temp_dir=tempfile.mkdtemp(prefix="mrag-ray-"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        first = run(make_corpus(root / "warm-up", CHUNKS_PER_FILE), "random", "ray", 1, root)
        for embedder, n, plan in [
            ("random", random_n, [("one process", 1), ("ray", 2)]),
            ("minilm-bf16", model_n, [("one process", 1), ("ray", 1), ("ray", 2)]),
        ]:
            one_file = make_corpus(root / f"{embedder}-one-file", CHUNKS_PER_FILE)
            corpus = make_corpus(root / embedder, n)
            for how, workers in plan:
                row = run(corpus, embedder, how, workers, root)
                if how == "ray":  # the job's fixed cost: the same job on one file
                    small = run(one_file, embedder, how, workers, root)
                    row["one_file_s"] = small["seconds"]
                    beyond = row["seconds"] - small["seconds"]  # meaningful when well above the noise
                    steady = (row["chunks"] - small["chunks"]) / beyond if beyond > small["seconds"] else None
                    row["chunks_per_s_past_start"] = round(steady, 1) if steady else "-"
                rows.append(row)
                print(markdown_table(rows[-1:], list(rows[-1])), flush=True)
    ray.shutdown()
    result = {"machine": machine(), "load_average_end": os.getloadavg(), "first_job_s": first["seconds"], "runs": rows}
    columns = list(dict.fromkeys(k for r in rows for k in r))
    md = [
        f"# Ray ingestion against one process\n\nmachine: {result['machine']}\n",
        "A local Ray cluster on the same machine. `ray` rows are `index_with_ray` (Ray Data read, "
        "`map_batches` on a pool of `workers` actors of 1 CPU each, one commit by the driver); "
        "`one process` rows are `Index.add_paths` with all cores. `one_file_s` is the same job on one "
        f"file of {CHUNKS_PER_FILE} chunks (its fixed cost: Ray Data's start, the actors, the model "
        "loads); `chunks_per_s_past_start` counts the time beyond it. The process's first Ray Data job "
        f"(one file, before all rows) took {first['seconds']} s.\n",
        markdown_table(rows, columns),
    ]
    write_results("ray-quick" if args.quick else "ray", result, "\n".join(md))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
