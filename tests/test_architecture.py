"""The shape of the house: no import cycles in src/, a light `import mrag` and CLI, small tracked files."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"


def module_imports() -> dict[str, set[str]]:
    """mrag module -> the mrag modules it imports (TYPE_CHECKING and function-level imports too;
    an import of a package's __init__ does not count: it only re-exports)."""
    modules = {".".join(p.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__"): p
               for p in SRC.rglob("*.py")}
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name and modules[target].name != "__init__.py":
                    edges[name].add(target)
    return edges


def cycle_from(start: str, edges: dict[str, set[str]]) -> list[str] | None:
    path, seen = [start], set()

    def walk(node: str) -> list[str] | None:
        for nxt in sorted(edges[node]):
            if nxt == start:
                return [*path, start]
            if nxt not in seen:
                seen.add(nxt)
                path.append(nxt)
                if found := walk(nxt):
                    return found
                path.pop()
        return None

    return walk(start)


def test_the_cycle_finder_finds_a_hand_made_cycle():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycle_from("a", edges) == ["a", "b", "c", "a"]
    assert cycle_from("d", edges) is None


def test_no_import_cycles_in_src():
    edges = module_imports()
    assert {"mrag.index", "mrag.retrieve.search", "mrag.cli"} <= edges.keys()
    cycles = [c for m in sorted(edges) if (c := cycle_from(m, edges))]
    assert not cycles, " ; ".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("module", ["mrag", "mrag.cli"])
def test_importing_mrag_and_its_cli_loads_no_heavy_library(module):
    code = f"import sys, {module}; print(','.join(m for m in ('torch', 'lancedb', 'transformers', 'numpy') " \
           "if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == ""


def test_the_lazy_names_of_mrag_resolve():
    import mrag

    assert mrag.Index.__module__ == "mrag.index" and mrag.StoreError.__module__ == "mrag.errors"
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        mrag.Nope  # noqa: B018


def test_no_tracked_file_over_one_megabyte():
    if not (ROOT / ".git").exists() or not shutil.which("git"):
        pytest.skip("not a git checkout")
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.split(b"\0")
    big = [f.decode() for f in files if f and (ROOT / f.decode()).is_file() and (ROOT / f.decode()).stat().st_size
           > 2**20]
    assert not big, big


def test_import_mrag_registers_multi_head_once_lancedb_loads():
    code = ("import sys, mrag; assert 'lancedb' not in sys.modules; "
            "from lancedb.embeddings import get_registry; print(get_registry().get('multi-head').__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "MultiHeadEmbeddings"
    # LanceDB imported first: registered at `import mrag`
    code = "import lancedb, mrag; from lancedb.embeddings import get_registry; get_registry().get('multi-head')"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_new_index_prints_nothing_and_import_installs_no_warnings_filter(tmp_path):
    """Lance's "No existing dataset ... it will be created" (and anything else) stays off the terminal
    of a library user, without a warnings filter: `import mrag` installs none, and none hides Lance."""
    code = (f"import sys, warnings; sys.path.insert(0, {str(ROOT / 'tests')!r}); from conftest import FakeEmbedder; "
            "before = list(warnings.filters); import mrag; "
            "assert warnings.filters == before, 'import mrag installed a warnings filter'; "
            f"index = mrag.Index.open({str(tmp_path / 'db')!r}, embedder=FakeEmbedder()); "
            "index.add([{'id': 'a', 'text': 'bees cool the hive'}]); "
            "assert [h.doc_id for h in index.search('bees')] == ['a']; "
            "assert not [f for f in warnings.filters if f[1] and 'dataset' in f[1].pattern], 'a filter hides Lance'")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LANCE", "RUST_LOG"))}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""


def test_opening_an_index_imports_no_torch():
    """`mrag info`, `delete`, `verify` and `heads` never embed or scan: torch's import (1.2 s of `mrag info`'s 4.5 s
    here) waits for the first search or embedding."""
    code = "import sys, mrag.cli, mrag.index; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
