"""An index refuses an embedder that does not make its vectors (`mrag.fits`): a model folder whose files were
replaced under the same name (other weights, heads or layers), and a ready embedder with other instructions or
length. Nothing is embedded with it, and nothing written."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from conftest import MINILM_DIR, FakeEmbedder

from mrag.errors import StoreError
from mrag.index import Index

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
DOCS = [{"id": "bees", "text": "Honeybees fan their wings to cool the hive."},
        {"id": "rome", "text": "Roman aqueducts carried water downhill."}]


def tiny_bert(folder: Path, seed: int, heads: int = 4, layers: int = 2) -> str:
    """A random BERT (hidden 32) written to `folder`, replacing what was there, with MiniLM's tokenizer."""
    from transformers import BertConfig, BertModel

    shutil.rmtree(folder, ignore_errors=True)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=37, max_position_embeddings=128)
    BertModel(config).save_pretrained(folder)
    for name in TOKENIZER_FILES:
        shutil.copy(MINILM_DIR / name, folder / name)
    return str(folder)


@pytest.mark.parametrize(("change", "message"), [
    ({"seed": 1}, "makes other vectors \\(standard\\) than the ones the index"),  # other weights, same config
    ({"seed": 0, "heads": 8}, "was built with n_heads=4, not 8"),
    ({"seed": 0, "layers": 3}, "was built with n_layers=2, not 3"),  # the last layer would be another
])
def test_a_model_folder_replaced_under_its_name_is_refused(tmp_path, change, message):
    live = tmp_path / "live"
    index = Index.open(tmp_path / "db", model=tiny_bert(live, seed=0), device="cpu")
    index.add(DOCS)
    version = index.store.committed_version
    tiny_bert(live, **change)
    again = Index.open(tmp_path / "db", device="cpu")
    with pytest.raises(StoreError, match=message):
        again.search("bees", k=1)
    with pytest.raises(StoreError, match=message):
        again.add([{"id": "new", "text": "A new document."}])
    assert Index.open(tmp_path / "db", create=False).store.committed_version == version


def test_the_same_model_in_bfloat16_fits(tmp_path):
    model = tiny_bert(tmp_path / "live", seed=0)
    Index.open(tmp_path / "db", model=model, device="cpu").add(DOCS)
    index = Index.open(tmp_path / "db", model=model, device="cpu", dtype="bfloat16")
    assert len(index.search("bees", k=2)) == 2  # its probe within PROBE_MATCH of the float32 one


class Instructed(FakeEmbedder):
    query_instruction = "query: "


class Short(FakeEmbedder):
    def info(self):
        return super().info() | {"max_length": 16}


def test_a_ready_embedder_with_other_instructions_or_length_is_refused(tmp_path):
    made = Index.open(tmp_path / "db", embedder=Short())
    made.add(DOCS)
    with pytest.raises(StoreError, match="was built with query_instruction='', not 'query: '"):
        Index.open(tmp_path / "db", embedder=type("Both", (Short, Instructed), {})())

    class Long(FakeEmbedder):
        def info(self):
            return super().info() | {"max_length": 512}

    with pytest.raises(StoreError, match="was built with max_length=16, not 512"):
        Index.open(tmp_path / "db", embedder=Long())
    assert Index.open(tmp_path / "db", embedder=Short()).search("cool the hive", k=1)[0].doc_id == "bees"


def test_an_index_made_before_probes_records_one_at_its_next_write(index):
    index.add(DOCS[:1])
    recorded = index.store.manifest.embedder
    with index.store.writing():  # as an older mrag left it
        index.store.stage(embedder={k: v for k, v in recorded.items() if k != "probe"})
    assert "probe" not in index.store.manifest.embedder
    index.add(DOCS[1:])
    assert index.store.manifest.embedder["probe"] == recorded["probe"] == FakeEmbedder().probe()


def test_an_index_another_process_created_with_other_vectors_is_refused(tmp_path):
    """`Store.create` returns the index another process made at the same moment; one whose embedder has this
    one's name, sizes and settings but makes other vectors was taken as this one's."""
    from mrag import fits

    class Retrained(FakeEmbedder):  # the same name, sizes and settings; other weights
        def vectors(self, text):
            standard, heads = super().vectors(text)
            return standard[::-1].copy(), heads[:, ::-1].copy()

    theirs = Index.open(tmp_path / "db", embedder=FakeEmbedder())
    fits.created(theirs.store, FakeEmbedder(), [], None, None, "db")  # the same: taken
    with pytest.raises(StoreError, match="with another probe"):
        fits.created(theirs.store, Retrained(), [], None, None, "db")


def test_a_key_an_older_record_lacks_is_no_difference_between_records():
    from mrag.fits import differs

    # an index recorded before the "standard" key: the same model's record today has it
    old = {"model": "m", "dim": 4, "n_heads": 2, "head_dim": 2, "layer": 1}
    assert differs(old, old | {"standard": "mean"}) is None
    assert differs(old | {"standard": "cls"}, old | {"standard": "mean"}) == ("standard", "cls")
    assert differs(old, old | {"model": "other"}) == ("model", "m")
