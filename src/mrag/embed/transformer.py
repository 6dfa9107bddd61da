"""Any Hugging Face Transformer as a multi-head embedder.

A forward pre-hook on the attention output projection of the chosen layer captures its input: the
concatenation over heads of softmax(QK^T/sqrt(d))V, shape (B, T, H*d_head). Head h is the slice
[h*d_head, (h+1)*d_head). Pooling over tokens: the last real token for decoders, the mean over real
tokens for encoders (or CLS). The standard embedding comes from the same forward pass: the model's
sentence-transformers pooling when it ships one, else the same pooling of the last hidden state.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from mrag.embed import sentence_folder
from mrag.embed.base import Embeddings, HeadEmbedder
from mrag.embed.models import PACKAGED, dequantized, resolve_model
from mrag.settings import cpu_has_bf16_kernels

Pooling = Literal["mean", "cls", "last"]
DTYPES = ("float32", "bfloat16", "float16")

# Input of the attention output projection, relative to one layer, per architecture family.
OUTPUT_PROJECTIONS = (
    "attention.output.dense",  # BERT, RoBERTa, MiniLM, ELECTRA
    "attention.attn.o",  # MPNet
    "self_attn.o_proj",  # Llama, Mistral, Qwen2/3, Gemma, Phi-3
    "attn.c_proj",  # GPT-2
    "self_attention.dense",  # Falcon, Bloom
    "attn.out_proj",  # GPT-Neo, GPT-J (attn.attention.out_proj handled by the suffix search)
    "attention.dense",  # GPT-NeoX
    "attention.out_lin",  # DistilBERT
    "self_attn.dense",  # Phi
    "attn.Wo",  # ModernBERT
    "layer.0.SelfAttention.o",  # T5's encoder
)


class TransformerEmbedder(HeadEmbedder):
    """Standard + per-head embeddings of one layer of a Hugging Face model, one forward pass."""

    def __init__(
        self,
        model: str | None = None,
        layer: int = -1,
        pooling: Pooling | None = None,
        max_length: int | None = None,
        device: str = "auto",
        dtype: str = "float32",
        query_instruction: str = "",
        document_instruction: str = "",
        revision: str | None = None,
    ) -> None:
        import torch
        from transformers import AutoConfig, AutoModel, AutoModelForTextEncoding, AutoTokenizer

        spec = resolve_model(model)
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
        self.device = _pick_device(device)
        kwargs: dict[str, Any] = {"revision": revision} if revision else {}
        weights = str(dequantized(spec)) if spec.gguf_file else spec.path  # a GGUF: its safetensors copy, made once
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(weights, **kwargs)
            found = AutoConfig.from_pretrained(weights, **kwargs)
            # T5's family: its encoder alone (a whole T5 would be refused as an encoder-decoder, and an encoder's
            # folder, sentence-t5's or GTR's, would be read as a whole T5 with a random decoder)
            loader = AutoModelForTextEncoding if _text_encoder(found.model_type) else AutoModel
            self.model = loader.from_pretrained(weights, config=found, dtype=getattr(torch, dtype), **kwargs)
        except OSError as e:  # not found: on the hub, or no network to ask it (after its retries)
            raise OSError(f"cannot load model {spec.name!r}: not a local folder or file, an offline alias ("
                          f"{', '.join(sorted(a for a in PACKAGED if '/' not in a))}) nor a model in the Hugging "
                          f"Face cache ({str(e).splitlines()[0]}); without a network, HF_HUB_OFFLINE=1 fails at once"
                          ) from e
        self.model.to(self.device).eval()
        if dtype == "bfloat16" and self.device == "cpu" and not cpu_has_bf16_kernels():
            warnings.warn("bfloat16 on a CPU without bf16 kernels (AVX-512 and up) is slower than float32: "
                          "MiniLM embedded 6x fewer texts a second on an AVX2-only CPU", stacklevel=2)
        config = self.model.config
        self.name = spec.name
        self.revision = revision or getattr(config, "_commit_hash", None)
        self.is_decoder = _is_decoder(config, self.model)
        self.pooling: Pooling = pooling or ("last" if self.is_decoder else "mean")
        if self.pooling not in ("mean", "cls", "last"):
            raise ValueError(f"unknown pooling {self.pooling!r}; choose mean, cls or last")
        self.n_heads = _config_value(config, "num_attention_heads", "n_head", "num_heads")
        hidden = _config_value(config, "hidden_size", "n_embd", "d_model")
        self.head_dim = _config_value(config, "head_dim", "d_kv", default=hidden // self.n_heads)  # T5: d_kv
        self.n_layers = _config_value(config, "num_hidden_layers", "n_layer", "num_layers")
        if not -self.n_layers <= layer < self.n_layers:
            raise ValueError(
                f"layer {layer} is out of range: this model has {self.n_layers} layers "
                f"(0..{self.n_layers - 1}, or -1 for the last)"
            )
        self.layer = layer % self.n_layers
        blocks, runs = _find_layers(self.model, self.n_layers, config)
        # a block run `runs` times in a row (ALBERT's shared layers): its projection's capture of this layer's run
        self.projection = _find_projection(blocks[self.layer // runs])
        self._runs, self._run = runs, (self.layer % runs if runs > 1 else -1)
        self.max_length = max_length or _default_max_length(spec.path, self.tokenizer, config)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        # right padding: with causal attention the real tokens never see the pads
        self.tokenizer.padding_side = "right"
        # a sentence-transformers folder: the standard vector is its sentence embedding (`sentence_folder`)
        self.sentence, self.standard_before = sentence_folder.read(spec.path)
        dense = sentence_folder.dense_layers(spec.path, self.sentence) if self.sentence else []
        self.dense = [module.to(self.device) for module in dense]
        self.query_instruction = query_instruction
        self.document_instruction = document_instruction
        self._captured: list[Any] = []
        self.projection.register_forward_pre_hook(lambda _m, args: self._captured.append(args[0]))
        # one forward pass at a time: threads share the hook's capture (and a fast tokenizer is not reentrant)
        self._lock = threading.Lock()
        self._all_states = False  # the last hidden state from `hidden_states` (models whose output has none)
        width = self._probe()  # the model's output width: OPT's projected one is not its hidden size
        self.dim = self.sentence.dim(width) if self.sentence else width

    def _forward(self, texts: list[str]) -> tuple[Any, Any, Any]:
        """One forward pass: the batch, the last hidden state (B, T, W; None where the output has none) and
        the hooked input (B, T, H*d)."""
        import torch

        with self._lock:
            batch = self.tokenizer(
                texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
            ).to(self.device)
            self._captured.clear()
            with torch.inference_mode():
                out = self.model(**batch, output_hidden_states=self._all_states)
            hidden = out.hidden_states[-1] if self._all_states else getattr(out, "last_hidden_state", None)
            if len(self._captured) < self._runs:  # a block of another part of the model (a vision tower)
                raise RuntimeError(f"layer {self.layer}'s attention did not run on text: the model's layers were "
                                   "not found where they were looked for; try another --layer")
            return batch, hidden, self._captured[self._run]

    def _probe(self) -> int:
        """One forward pass of a word: its last hidden state's width (OPT projects it to another than its
        hidden size), taken from all the states where the output holds no last one (DPR's encoders)."""
        hidden = self._forward(["probe"])[1]
        if hidden is None:
            self._all_states = True
            hidden = self._forward(["probe"])[1]
        return int(hidden.shape[-1])

    def unread(self, texts: Sequence[str]) -> tuple[int, int]:
        """(texts longer than `max_length` tokens, whose vectors see their start only; texts more than half
        of whose tokens are the unknown token: a language the vocabulary lacks, near-identical vectors)."""
        # cut one token past the length (enough to tell a longer text; transformers warns of a longer one)
        ids = self.tokenizer([self.document_instruction + t for t in texts], truncation=True,
                             max_length=self.max_length + 1)["input_ids"]
        unknown = self.tokenizer.unk_token_id
        fixed = len(self.tokenizer(self.document_instruction)["input_ids"])  # [CLS] [SEP] and the instruction
        long = sum(len(i) > self.max_length for i in ids)
        unreadable = 0 if unknown is None else sum(2 * i.count(unknown) > max(1, len(i) - fixed) for i in ids)
        return long, unreadable

    def embed_batch(self, texts: list[str]) -> Embeddings:
        import torch

        batch, hidden, heads_in = self._forward(texts)  # (B, T, W), (B, T, H*d)
        if heads_in.shape[-1] != self.n_heads * self.head_dim:
            raise RuntimeError(
                f"the hooked projection gets width {heads_in.shape[-1]}, not {self.n_heads} heads x {self.head_dim}"
            )
        mask = batch["attention_mask"]  # (B, T)
        heads = pool(heads_in.float(), mask, self.pooling)  # (B, H*d)
        standard = pool(hidden.float(), mask, self.sentence.pooling if self.sentence else self.pooling)  # (B, hidden)
        with torch.inference_mode():
            for dense in self.dense:
                standard = dense(standard)  # (B, dim)
        if self.sentence and self.sentence.normalize:
            standard = torch.nn.functional.normalize(standard, dim=-1)
        b = len(texts)
        return Embeddings(
            standard.cpu().numpy().astype(np.float32),
            heads.reshape(b, self.n_heads, self.head_dim).cpu().numpy().astype(np.float32),
        )

    def info(self) -> dict[str, Any]:
        return super().info() | {
            "revision": self.revision,
            "layer": self.layer,
            "n_layers": self.n_layers,
            "pooling": self.pooling,
            "max_length": self.max_length,
        } | ({"standard": self.sentence.describe()} if self.sentence else {})


def pool(x: Any, mask: Any, how: str) -> Any:
    """Pool token vectors (B, T, W) over real tokens (mask (B, T)) -> (B, W)."""
    import torch

    if how == "cls":
        return x[:, 0]
    if how == "max":  # sentence-transformers' other poolings (`sentence_folder`)
        return x.masked_fill(mask.unsqueeze(-1) == 0, torch.finfo(x.dtype).min).max(dim=1).values
    if how in ("mean_sqrt_len", "weightedmean"):
        weights = mask.to(x.dtype) * (torch.arange(1, mask.shape[1] + 1, device=x.device, dtype=x.dtype)
                                      if how == "weightedmean" else 1.0)  # (B, T): positions from 1
        total = weights.sum(1, keepdim=True)
        return (x * weights.unsqueeze(-1)).sum(1) / (total.sqrt() if how == "mean_sqrt_len" else total).clamp(min=1e-9)
    if how == "last":
        # index of the last real token, right or left padding alike
        positions = torch.arange(mask.shape[1], device=mask.device)
        last = (mask * positions).argmax(dim=1)  # (B,)
        return x[torch.arange(x.shape[0], device=x.device), last]
    m = mask.unsqueeze(-1).to(x.dtype)  # (B, T, 1)
    return (x * m).sum(1) / m.sum(1).clamp(min=1.0)


def _pick_device(device: str) -> str:
    """`device`, checked against what this torch can use (a CPU-only wheel has no CUDA), or for "auto" the
    best there is."""
    import torch

    if device != "auto":
        try:
            kind = torch.device(device).type
        except (RuntimeError, TypeError):
            raise ValueError(f"device {device!r}: not a device (cpu, cuda, cuda:1, mps or auto)") from None
        available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
        if kind not in available:
            raise ValueError(f"device {device!r}: mrag runs on cpu, cuda (cuda:N) or mps, or picks one (auto)")
        if not available[kind]:
            raise ValueError(f"device {device!r}: this torch ({torch.__version__}) sees no {kind.upper()} device; "
                             "use --device cpu or auto")
        return device
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def _text_encoder(model_type: str) -> bool:
    """Whether transformers loads this type's text encoder alone (T5's family), not the whole model."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_TEXT_ENCODING_MAPPING_NAMES

    return MODEL_FOR_TEXT_ENCODING_MAPPING_NAMES.get(model_type, "").endswith("EncoderModel")


def _is_decoder(config: Any, model: Any) -> bool:
    """Encoders have a masked-LM head in transformers' registry, or are an encoder by their class (T5's
    encoder alone, DPR's encoders); the rest are decoders (multimodal ones too: Mistral 3, Qwen2-VL, LLaVA
    have no causal-LM entry of their own). Encoder-decoders are refused, their encoder loaded alone aside."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    if type(model).__name__.endswith(("EncoderModel", "Encoder")):  # T5EncoderModel, DPRQuestionEncoder, ...
        return False
    if getattr(config, "is_encoder_decoder", False):
        raise ValueError("encoder-decoder models are not supported: pass an encoder or a decoder")
    return config.model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def _config_value(config: Any, *names: str, default: int | None = None) -> int:
    """The first of `names` the config (or its text model's, `text_config`) gives as a number."""
    for source in (config, getattr(config, "text_config", None)):
        for n in names:
            value = getattr(source, n, None)
            if isinstance(value, int) and not isinstance(value, bool):
                return value
    if default is not None:
        return default
    raise ValueError(f"the model config has none of {names}")


def _find_layers(model: Any, n_layers: int, config: Any) -> tuple[Any, int]:
    """The ModuleList holding the Transformer blocks (a list of n_layers modules; one of a language model
    first, where the model also has a vision tower), and how many layers in a row each block runs (1; for
    ALBERT, whose layers share `num_hidden_groups` blocks, n_layers / groups)."""
    import torch

    lists = [(name, module) for name, module in model.named_modules() if isinstance(module, torch.nn.ModuleList)]
    found = [(name, m) for name, m in lists if len(m) == n_layers]
    if found:
        textual = [(name, m) for name, m in found if "language_model" in name or "text" in name]
        return (textual or found)[0][1], 1
    groups = getattr(config, "num_hidden_groups", None)
    if not isinstance(groups, int) or groups <= 0 or n_layers % groups:
        raise ValueError(f"found no list of {n_layers} Transformer layers in {type(model).__name__}")
    shared = [m for _, m in lists if len(m) == groups]
    if shared:
        if getattr(config, "inner_group_num", 1) != 1:
            raise ValueError("ALBERT models with more than one layer per group (inner_group_num) are not supported")
        return shared[0], n_layers // groups
    raise ValueError(f"found no list of {n_layers} Transformer layers in {type(model).__name__}")


def _find_projection(block: Any) -> Any:
    modules = dict(block.named_modules())
    for path in OUTPUT_PROJECTIONS:
        if path in modules:
            return modules[path]
    for path in OUTPUT_PROJECTIONS:  # nested one level deeper (attn.attention.out_proj, ...)
        for name, module in modules.items():
            if name.endswith("." + path.split(".")[-1]) and path.split(".")[0] in name:
                return module
    raise ValueError(
        f"cannot find the attention output projection in {type(block).__name__}; known: {', '.join(OUTPUT_PROJECTIONS)}"
    )


def _default_max_length(path: str, tokenizer: Any, config: Any) -> int:
    given = sentence_folder.max_seq_length(path)
    if given:
        return given
    limits = [512, getattr(config, "max_position_embeddings", 512) or 512]
    if isinstance(tokenizer.model_max_length, int):
        limits.append(tokenizer.model_max_length)
    return min(limits)
