"""What a sentence-transformers model folder puts after its Transformer: the pooling, the Dense layers and
the normalisation that make its sentence embedding, and its longest input. The standard vector is then
the model's own embedding (`SentenceTransformer.encode`), from the same forward pass as the heads.

Both config formats are read: sentence-transformers 6 writes `"pooling_mode": "cls"`, older versions (and
most models on the Hub) one flag per mode (`"pooling_mode_cls_token": true`). A pooling that concatenates
several modes is refused: no single standard vector would be the model's.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# sentence-transformers' pooling modes -> `transformer.pool`'s names
MODES = {"mean": "mean", "cls": "cls", "lasttoken": "last", "max": "max", "mean_sqrt_len_tokens": "mean_sqrt_len",
         "weightedmean": "weightedmean"}
FLAGS = {"pooling_mode_cls_token": "cls", "pooling_mode_mean_tokens": "mean", "pooling_mode_max_tokens": "max",
         "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len", "pooling_mode_weightedmean_tokens": "weightedmean",
         "pooling_mode_lasttoken": "last"}


@dataclass
class SentenceModules:
    pooling: str  # a `transformer.pool` mode
    dense: list[dict[str, Any]] = field(default_factory=list)  # each Dense module's config, and its "path"
    normalize: bool = False

    def describe(self) -> str:
        """'cls+dense(768->768,Tanh)+normalize': what makes the standard vector (an index records it)."""
        steps = [self.pooling]
        steps += [f"dense({d['in_features']}->{d['out_features']},{activation_name(d)})" for d in self.dense]
        return "+".join(steps + (["normalize"] if self.normalize else []))

    def dim(self, hidden: int) -> int:
        return int(self.dense[-1]["out_features"]) if self.dense else hidden


def read(path: str) -> tuple[SentenceModules | None, str | None]:
    """(the folder's modules after the Transformer, or None for a plain Transformers folder; what mrag before
    2026-12-07 made of them: the pooling of the old flags, mean else, no Dense layer)."""
    root = Path(path)
    if not (root / "modules.json").is_file():
        return None, None
    modules = json.loads((root / "modules.json").read_text())
    found = SentenceModules("mean", normalize=any(m.get("type", "").endswith("Normalize") for m in modules))
    legacy = "mean"
    for m in modules:
        kind = m.get("type", "")
        if kind.endswith("Pooling"):
            config = json.loads((root / m["path"] / "config.json").read_text())
            found.pooling = pooling_of(config, path)
            legacy = "cls" if config.get("pooling_mode_cls_token") else "last" if config.get(
                "pooling_mode_lasttoken") else "mean"
        elif kind.endswith("Dense"):
            found.dense.append(json.loads((root / m["path"] / "config.json").read_text()) | {"path": m["path"]})
    return found, legacy + ("+normalize" if found.normalize else "")


def pooling_of(config: dict[str, Any], path: str) -> str:
    """A Pooling module's mode, from either config format."""
    given = config.get("pooling_mode")
    modes = [given] if isinstance(given, str) else list(given or [])
    modes += [mode for flag, mode in FLAGS.items() if config.get(flag)]
    names = list(dict.fromkeys(MODES.get(m, m) for m in modes)) or ["mean"]  # flags and names alike
    if len(names) > 1 or names[0] not in MODES.values():
        raise ValueError(f"{path}: sentence-transformers pooling {names} cannot be reproduced (one of "
                         f"{', '.join(MODES)} is); pass --model a folder with one pooling mode")
    return names[0]


def max_seq_length(path: str) -> int | None:
    """sentence_bert_config.json's max_seq_length, None where absent or null (sentence-transformers 6 keeps
    it in tokenizer_config.json instead, which the tokenizer reads)."""
    config = Path(path) / "sentence_bert_config.json"
    value = json.loads(config.read_text()).get("max_seq_length") if config.is_file() else None
    return int(value) if value else None


def activation(dense: dict[str, Any]) -> str:
    """A Dense module's activation, as its config names it ('torch.nn.modules.activation.Tanh')."""
    return str(dense.get("activation_function", "torch.nn.modules.linear.Identity"))


def activation_name(dense: dict[str, Any]) -> str:
    return activation(dense).rsplit(".", 1)[-1]


def dense_layers(path: str, modules: SentenceModules) -> list[Any]:
    """The Dense modules as torch modules (Linear, then its activation), weights from their folders."""
    import torch

    layers = []
    for d in modules.dense:
        linear = torch.nn.Linear(int(d["in_features"]), int(d["out_features"]), bias=bool(d.get("bias", True)))
        linear.load_state_dict({k.removeprefix("linear."): v for k, v in _weights(Path(path) / d["path"]).items()})
        name = activation(d)
        module, _, cls = name.rpartition(".")
        if not module.startswith("torch.nn"):
            raise ValueError(f"{path}: Dense activation {name!r} is not a torch.nn module")
        layers.append(torch.nn.Sequential(linear, getattr(importlib.import_module(module), cls)()).eval())
    return layers


def _weights(folder: Path) -> dict[str, Any]:
    import torch

    if (folder / "model.safetensors").is_file():
        from safetensors.torch import load_file

        return dict(load_file(str(folder / "model.safetensors")))
    return dict(torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True))
