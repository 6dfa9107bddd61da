"""The exact scan on a torch device (`device_scan`), run here on the CPU through the same code: its rows
equal the CPU scan's and its scores agree up to the products' last bits."""

import numpy as np
import pytest
import torch
from test_ann import QUERIES, SeededEmbedder, docs

from mrag.index import Index
from mrag.retrieve import device_scan
from mrag.retrieve.device_scan import DeviceExact, block_best, scan_device
from mrag.retrieve.exact import Exact
from mrag.retrieve.types import QueryVectors, Voter


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def matrix(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return unit(rng.standard_normal((n, 16))), unit(rng.standard_normal((4, n, 8))), {
        "words": unit(rng.standard_normal((n, 12)))}


def parts(p: int, seed: int = 1) -> list[QueryVectors]:
    rng = np.random.default_rng(seed)
    return [QueryVectors(unit(rng.standard_normal(16)), unit(rng.standard_normal((4, 8))),
                         {"words": unit(rng.standard_normal(12))}) for _ in range(p)]


VOTERS = [Voter("standard", "standard", 1.0), *(Voter(f"head:{i}", "heads", 1.0) for i in range(4)),
          *(Voter(f"split:{i}", "split", 1.0) for i in range(4)), Voter("words", "words", 1.0)]


def same_as_cpu(standard, heads, extra, queries, c: int) -> None:
    rows, sims = DeviceExact(standard, heads, extra, device="cpu")(VOTERS, queries, c)
    want_rows, want_sims = Exact(standard, heads, extra, precision="fp32")(VOTERS, queries, c)
    assert rows.shape == want_rows.shape == (len(queries), len(VOTERS), c)
    assert rows.tolist() == want_rows.tolist()
    np.testing.assert_allclose(sims, want_sims, atol=1e-6)


@pytest.mark.parametrize("p", [1, 3])
def test_the_device_scan_ranks_as_the_cpu_scan(p):
    same_as_cpu(*matrix(3000), parts(p), 10)


def test_many_blocks_rank_as_one(monkeypatch):
    monkeypatch.setattr(device_scan, "BLOCK_BYTES", 4 * 3 * 100)  # 100 rows a block for 3 parts
    same_as_cpu(*matrix(1000), parts(3), 10)


def test_block_best_by_hand(monkeypatch):
    # 2 lines over 5 rows, blocks of 2 rows: the best 3 of each line, NaN never ranks
    monkeypatch.setattr(device_scan, "BLOCK_BYTES", 4 * 2 * 2)
    sims = torch.tensor([[0.1, 0.9, float("nan"), 0.5, 0.7], [0.3, 0.3, 0.2, 0.8, 0.1]])
    values, rows = block_best(lambda start, stop: sims[:, start:stop], 5, 2, 3)
    assert rows.tolist()[0] == [1, 4, 3] and values.tolist()[0] == pytest.approx([0.9, 0.7, 0.5])
    assert rows.tolist()[1][0] == 3 and sorted(rows.tolist()[1][1:]) == [0, 1]  # 0.3 twice: best_of orders ties
    values, rows = block_best(lambda start, stop: sims[:1, start:stop], 5, 1, 6)  # more wanted than rows
    assert rows.tolist() == [[1, 4, 3, 0, -1]] and values[0, -1] == -np.inf  # the NaN row: none


def test_ties_at_the_cut_go_to_the_smaller_row_and_nan_rows_never_rank():
    standard, heads, extra = matrix(500)
    standard[100:110] = standard[7]  # ten copies of row 7: they tie at the cut for c = 4
    heads[:, 100:110] = heads[:, 7:8]
    extra["words"][100:110] = extra["words"][7]
    query = parts(1)[0]
    query.standard[:], query.heads[:], query.extra["words"][:] = standard[7], heads[:, 7], extra["words"][7]
    standard[200], heads[:, 200], extra["words"][200] = np.nan, np.nan, np.nan
    same_as_cpu(standard, heads, extra, [query], 4)
    rows, _ = DeviceExact(standard, heads, extra, device="cpu")([VOTERS[0]], [query], 4)
    assert rows[0, 0].tolist() == [7, 100, 101, 102]


def test_nan_rows_never_rank_where_fewer_rows_than_wanted_have_scores():
    standard, heads, extra = matrix(6)
    for rows in (standard, extra["words"]):
        rows[[1, 3, 5]] = np.nan
    heads[:, [1, 3, 5]] = np.nan
    for c in (4, 5):  # the c-th best is -inf: a tie at the cut, ranked from the full row
        same_as_cpu(standard, heads, extra, parts(1), c)
        rows, _ = DeviceExact(standard, heads, extra, device="cpu")([VOTERS[0]], parts(1), c)
        assert not set(rows[0, 0].tolist()) & {1, 3, 5}


def test_more_rows_wanted_than_the_matrix_has():
    same_as_cpu(*matrix(7), parts(2), 10)


def test_a_copy_of_the_first_rows_of_larger_arrays():
    heads, standard = np.random.default_rng(2).random((3, 10, 4), dtype=np.float32), np.eye(9, 5, dtype=np.float32)
    view = heads[:, :7]  # as a matrix's heads: the first rows of arrays with room for more
    assert torch.equal(device_scan.copied(view, "cpu"), torch.from_numpy(np.ascontiguousarray(view)))
    assert torch.equal(device_scan.copied(standard[:6], "cpu"), torch.from_numpy(standard[:6]))


def test_where_the_scan_runs(monkeypatch):
    monkeypatch.delenv(device_scan.SCAN_VARIABLE, raising=False)
    assert scan_device(None) == "cpu" and scan_device("cpu") == "cpu" and scan_device("mps") == "cpu"
    assert scan_device("cuda") == "cuda" and scan_device("cuda:1") == "cuda:1"  # the embedder's GPU
    monkeypatch.setenv(device_scan.SCAN_VARIABLE, "cpu")
    assert scan_device("cuda") == "cpu"  # kept on the CPU
    monkeypatch.setenv(device_scan.SCAN_VARIABLE, "gpu please")
    with pytest.raises(ValueError, match="MRAG_SCAN_DEVICE must name a torch device"):
        scan_device(None)
    monkeypatch.setenv(device_scan.SCAN_VARIABLE, f"cuda:{torch.cuda.device_count()}")  # one past the last
    with pytest.raises(ValueError, match="MRAG_SCAN_DEVICE=cuda:.*, but torch can use .* CUDA devices here"):
        scan_device(None)


def test_a_matrix_too_large_for_the_device_is_scanned_on_the_cpu(monkeypatch):
    standard, heads, extra = matrix(300)
    tries = []

    def full(array, device):
        tries.append(device)
        raise torch.OutOfMemoryError("CUDA out of memory (a test)")

    monkeypatch.setattr(device_scan, "on_device", full)
    ranker = DeviceExact(standard, heads, extra, device="cuda")
    with pytest.warns(RuntimeWarning, match="does not fit cuda"):
        rows, _ = ranker(VOTERS, parts(2), 5)
    assert rows.tolist() == Exact(standard, heads, extra, precision="fp32")(VOTERS, parts(2), 5)[0].tolist()
    DeviceExact(standard, heads, extra, device="cuda")(VOTERS, parts(2), 5)  # the same matrix: no second try
    assert tries == ["cuda"]


def test_the_servers_embedder_tells_its_device(fake):
    from mrag.server import LockedEmbedder

    fake.device = "cuda:1"
    assert scan_device(LockedEmbedder(fake).device) == "cuda:1"


def test_searching_an_empty_index_loads_no_model(tmp_path, monkeypatch):
    monkeypatch.setenv(device_scan.SCAN_VARIABLE, "cpu:0")
    store = Index.open(tmp_path / "db", embedder=SeededEmbedder()).store
    loads = []
    index = Index(store, lambda: loads.append(1) or SeededEmbedder())  # the embedder made on first use
    assert index.search("anything") == [] and index.search_many([]) == [] and loads == []


def test_index_searches_through_the_device_scan(tmp_path, monkeypatch):
    index = Index.open(tmp_path / "db", embedder=SeededEmbedder())
    index.add(docs(120))
    scans = []
    ranked = DeviceExact.ranked
    monkeypatch.setattr(DeviceExact, "ranked", lambda self, *a: scans.append(self.device) or ranked(self, *a))
    for strategy in ("mrag", "mrag-std", "split", "standard", "segment+standard"):
        monkeypatch.delenv(device_scan.SCAN_VARIABLE, raising=False)
        want = [(h.id, h.score) for h in index.search(QUERIES[0], k=8, strategy=strategy)]
        monkeypatch.setenv(device_scan.SCAN_VARIABLE, "cpu:0")  # a device name other than "cpu": DeviceExact
        found = [(h.id, h.score) for h in index.search(QUERIES[0], k=8, strategy=strategy)]
        assert [i for i, _ in found] == [i for i, _ in want], strategy
        np.testing.assert_allclose([s for _, s in found], [s for _, s in want], atol=1e-6)
    assert set(scans) == {"cpu:0"} and len(scans) >= 5
