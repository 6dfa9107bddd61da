"""Helpers shared by the benchmark scripts: test texts, timing, memory, result files, Markdown tables."""

from __future__ import annotations

import json
import os
import platform
import resource
import signal
import socket
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
SAMPLE_CORPUS = Path(__file__).resolve().parents[1] / "src" / "mrag" / "data" / "sample_corpus.jsonl"


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


# `timeout` and job control stop a benchmark with SIGTERM: as SystemExit it unwinds the `with
# TemporaryDirectory()` blocks, so a stopped 1M run leaves no gigabytes of index behind in /tmp
signal.signal(signal.SIGTERM, _exit_on_sigterm)


def sample_texts(n: int, target_chars: int = 800, seed: int = 0) -> list[str]:
    """n chunk-like texts of about `target_chars` (+-100) characters, each a shuffled mix of the sample
    corpus's sentences, so lengths and words vary like real chunks. Deterministic for a seed."""
    from mrag.chunk import split_sentences

    docs = [json.loads(line)["text"] for line in SAMPLE_CORPUS.read_text().splitlines() if line.strip()]
    sentences = [s for d in docs for s in split_sentences(d)]
    rng = np.random.default_rng(seed)
    texts = []
    for _ in range(n):
        goal = target_chars + int(rng.integers(-100, 101))
        parts: list[str] = []
        while sum(len(p) + 1 for p in parts) < goal:
            parts.append(sentences[int(rng.integers(len(sentences)))])
        texts.append(" ".join(parts)[: target_chars + 100])
    return texts


def percentiles_ms(seconds: Sequence[float]) -> dict[str, float]:
    """p50 / p99 / mean in milliseconds of a list of durations in seconds."""
    ms = np.asarray(seconds) * 1000.0
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "mean_ms": round(float(ms.mean()), 3),
        "n": len(ms),
    }


def time_calls(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> list[float]:
    """Durations in seconds of `repeats` calls after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def free_port() -> int:
    """A loopback port no one listens on now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def rss_mb() -> float:
    """Current resident set size of this process in MiB."""
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def rss_growth_during(call: Callable[[], Any], every_s: float = 0.005) -> tuple[Any, float]:
    """call()'s result and the most the resident set grew above its size at the start while it ran, in MiB
    (sampled every `every_s` seconds by a thread; memory freed earlier and reused does not count)."""
    import threading

    start = rss_mb()
    most, done = [start], threading.Event()

    def watch() -> None:
        while not done.wait(every_s):
            most[0] = max(most[0], rss_mb())

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        result = call()
    finally:
        done.set()
        watcher.join()
    return result, max(most[0], rss_mb()) - start


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine() -> dict[str, Any]:
    import torch

    return {
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "processor": platform.processor() or platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # AVX2, AVX512, ...: bf16 kernels or not
    } | ({"gpu": torch.cuda.get_device_name(0)} if torch.cuda.is_available() else {})


def embed_stage_without_lancedb() -> None:
    """Let `import mrag.embed...` work where LanceDB is not installed (the GPU machine has torch,
    transformers and sentence-transformers only): a bare `mrag` package over src/mrag, without the
    `mrag/__init__` that registers the LanceDB extension. Does nothing where LanceDB is installed."""
    import importlib.util
    import sys
    import types

    if importlib.util.find_spec("lancedb") is not None or "mrag" in sys.modules:
        return
    package = types.ModuleType("mrag")
    package.__path__ = [str(Path(__file__).resolve().parents[1] / "src" / "mrag")]
    sys.modules["mrag"] = package


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
        return str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_results(name: str, data: dict[str, Any], markdown: str) -> None:
    """benchmarks/results/<name>.json and .md."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown + "\n")
    print(f"\nwrote {RESULTS / name}.json and .md")
