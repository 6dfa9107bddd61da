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
        from transformers import AutoModel, AutoTokenizer

        spec = resolve_model(model)
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
        self.device = _pick_device(device)
        kwargs: dict[str, Any] = {"revision": revision} if revision else {}
        weights = str(dequantized(spec)) if spec.gguf_file else spec.path  # a GGUF: its safetensors copy, made once
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(weights, **kwargs)
            self.model = AutoModel.from_pretrained(weights, dtype=getattr(torch, dtype), **kwargs)
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
        self.is_decoder = _is_decoder(config)
        self.pooling: Pooling = pooling or ("last" if self.is_decoder else "mean")
        if self.pooling not in ("mean", "cls", "last"):
            raise ValueError(f"unknown pooling {self.pooling!r}; choose mean, cls or last")
        self.n_heads = _config_value(config, "num_attention_heads", "n_head", "num_heads")
        hidden = _config_value(config, "hidden_size", "n_embd", "d_model")
        self.head_dim = getattr(config, "head_dim", None) or hidden // self.n_heads
        layers = _find_layers(self.model, _config_value(config, "num_hidden_layers", "n_layer"))
        if not -len(layers) <= layer < len(layers):
            raise ValueError(
                f"layer {layer} is out of range: this model has {len(layers)} layers "
                f"(0..{len(layers) - 1}, or -1 for the last)"
            )
        self.n_layers = len(layers)
        self.layer = layer % len(layers)
        self.projection = _find_projection(layers[self.layer])
        self.max_length = max_length or _default_max_length(spec.path, self.tokenizer, config)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        # right padding: with causal attention the real tokens never see the pads
        self.tokenizer.padding_side = "right"
        # a sentence-transformers folder: the standard vector is its sentence embedding (`sentence_folder`)
        self.sentence, self.standard_before = sentence_folder.read(spec.path)
        dense = sentence_folder.dense_layers(spec.path, self.sentence) if self.sentence else []
        self.dense = [module.to(self.device) for module in dense]
        self.dim = self.sentence.dim(hidden) if self.sentence else hidden
        self.query_instruction = query_instruction
        self.document_instruction = document_instruction
        self._captured: list[Any] = []
        self.projection.register_forward_pre_hook(lambda _m, args: self._captured.append(args[0]))
        # one forward pass at a time: threads share the hook's capture (and a fast tokenizer is not reentrant)
        self._lock = threading.Lock()

    def embed_batch(self, texts: list[str]) -> Embeddings:
        import torch

        with self._lock:
            batch = self.tokenizer(
                texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
            ).to(self.device)
            self._captured.clear()
            with torch.inference_mode():
                hidden = self.model(**batch).last_hidden_state  # (B, T, hidden)
            heads_in = self._captured[-1]  # (B, T, H*d)
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
    import torch

    if device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def _is_decoder(config: Any) -> bool:
    """Encoders have a masked-LM head in transformers' registry; decoders do not."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    if getattr(config, "is_encoder_decoder", False):
        raise ValueError("encoder-decoder models are not supported: pass an encoder or a decoder")
    return config.model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def _config_value(config: Any, *names: str) -> int:
    for source in (config, getattr(config, "text_config", None)):
        for n in names:
            value = getattr(source, n, None)
            if isinstance(value, int):
                return value
    raise ValueError(f"the model config has none of {names}")


def _find_layers(model: Any, n_layers: int) -> Any:
    """The ModuleList holding the Transformer blocks (the first list of n_layers modules)."""
    import torch

    for _, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n_layers:
            return module
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
