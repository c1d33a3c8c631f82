"""The engine interface: one loaded base model, resident LoRA adapters keyed by name, one active.

Three layers, as in mlx-lm: a backend's token loop, `stream_generate` yielding `Chunk`s (text plus
timing and memory), and `generate` joining the stream. The UI, CLI, training and benchmark use only
this interface; mlx and torch are imported inside the engine modules alone.
"""
from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from app.tasks import GenerationSettings


class EngineError(RuntimeError):
    """A problem the user can act on; the message says what to do. The engine keeps its state."""


class AdapterError(EngineError):
    """An adapter folder that cannot be used with the loaded model."""


@dataclass
class Chunk:
    """One piece of a streamed answer (mirrors mlx-lm's GenerationResponse)."""

    text: str
    prompt_tokens: int = 0
    prompt_tps: float = 0.0
    generation_tokens: int = 0
    generation_tps: float = 0.0
    peak_memory: float = 0.0  # GB, as mlx-lm reports it
    time_to_first_token: float = 0.0  # seconds from the call to the first generated token
    finish_reason: str | None = None  # None while streaming; then "stop", "length" or "cancelled"


@dataclass
class ModelInfo:
    ref: str  # what the user asked for (repo id or folder)
    path: Path  # the local folder it was loaded from
    model_type: str  # config.json's model_type, e.g. "qwen2"
    fingerprint: dict  # architecture facts an adapter must agree with
    quantization: str | None = None  # e.g. "4-bit (group 64)"; None when unquantized
    bytes: int = 0  # weights on disk


@dataclass
class AdapterInfo:
    name: str
    path: Path
    format: str  # "mlx" or "peft"
    rank: int
    scale: float
    modules: int  # number of adapted linear layers
    bytes: int
    base_model: str | None = None
    metadata: dict = field(default_factory=dict)
    warning: str | None = None  # from check_base_model: what could not be checked, or --force used


class Engine(ABC):
    """Holds one base model and any number of resident adapters; one (or none) is active."""

    kind: str = "?"

    def __init__(self):
        self.model_info: ModelInfo | None = None
        self.adapters: dict[str, AdapterInfo] = {}
        self.active: str | None = None
        # One generation at a time: the hot-swap must never happen mid-answer.
        self._lock = threading.RLock()

    # -- model and adapters -------------------------------------------------------------
    @abstractmethod
    def load(self, model_ref: str | Path) -> ModelInfo:
        """Load a base model (hub repo id or local folder), dropping any adapters."""

    @abstractmethod
    def add_adapter(self, name: str, folder: str | Path, force: bool = False) -> AdapterInfo:
        """Validate and load an adapter folder (MLX or PEFT format); it stays resident, inactive.
        An adapter recorded as made for another base model is refused unless `force`
        (adapter_format.check_base_model; its warning, if any, is kept in AdapterInfo.warning)."""

    def remove_adapter(self, name: str) -> None:
        self.check_adapter_name(name)
        with self._lock:
            self._drop(name)
            del self.adapters[name]
            if self.active == name:
                self._route(None)
                self.active = None

    def activate(self, name: str | None) -> None:
        """Make `name` the active adapter (None: the plain base model). No weights move."""
        if name is not None and name not in self.adapters:
            self.check_adapter_name(name)
        with self._lock:  # waits for a running generation: never mix adapters in one answer
            self._route(name)
            self.active = name

    @abstractmethod
    def _route(self, name: str | None) -> None:
        """Point the LoRA layers' shared active-adapter state at `name` (a name assignment)."""

    @abstractmethod
    def _drop(self, name: str) -> None:
        """Free the adapter's weights from the LoRA layers."""

    # -- text -----------------------------------------------------------------------------
    @abstractmethod
    def encode(self, text: str) -> list[int]: ...

    @abstractmethod
    def decode(self, tokens: list[int]) -> str: ...

    @abstractmethod
    def chat_prompt(self, messages: list[dict]) -> str:
        """The prompt text for chat messages, by the tokenizer's own chat template."""

    @abstractmethod
    def _stream_tokens(self, prompt: str, settings: GenerationSettings) -> Iterator[tuple[str, dict]]:
        """Backend token loop: yields (text piece, stats) and finally ("", stats with finish_reason)."""

    @abstractmethod
    def loglikelihood(self, context: str, continuation: str) -> tuple[float, bool]:
        """Sum of log p(continuation | context) over its tokens, and whether greedy decoding
        would produce exactly those tokens (lm-eval-harness's `loglikelihood`)."""

    @abstractmethod
    def memory_bytes(self) -> int:
        """Memory the engine holds now (weights, adapters, caches)."""

    @property
    def context_length(self) -> int:
        return int(self.model_info.fingerprint.get("max_position_embeddings", 4096)) if self.model_info else 4096

    # -- shared -------------------------------------------------------------------------
    def require_model(self) -> ModelInfo:
        if self.model_info is None:
            raise EngineError("no model is loaded; load one first (loradesk --model REF)")
        return self.model_info

    def check_adapter_name(self, name: str) -> None:
        if name not in self.adapters:
            known = ", ".join(self.adapters) or "none"
            raise EngineError(f"Adapter {name!r} not found (loaded adapters: {known})")

    def stream_generate(
        self,
        messages: list[dict] | str,
        settings: GenerationSettings | None = None,
        cancel: threading.Event | None = None,
    ) -> Iterator[Chunk]:
        """Stream an answer to chat messages (or a raw prompt string).

        Stop strings end the answer (and are not shown); `cancel` is checked between tokens.
        """
        settings = settings or GenerationSettings()
        self.require_model()
        prompt = messages if isinstance(messages, str) else self.chat_prompt(messages)
        n_prompt = len(self.encode(prompt))
        limit = self.context_length
        if n_prompt >= limit:
            raise EngineError(
                f"the prompt is {n_prompt} tokens; this model reads at most {limit}. Shorten the input."
            )
        start = time.perf_counter()
        first = None
        text = ""  # the full answer so far, to find stop strings that span pieces
        shown = 0  # how much of it has been yielded
        hold = max((len(s) for s in settings.stop), default=0)
        with self._lock:
            for piece, stats in self._stream_tokens(prompt, settings):
                if first is None and piece:
                    first = time.perf_counter() - start
                finish = stats.get("finish_reason")
                if cancel is not None and cancel.is_set() and finish is None:
                    finish = "cancelled"
                text += piece
                cut = _find_stop(text, settings.stop, shown)
                if cut is not None:
                    text, finish = text[:cut], "stop"
                # Hold back a tail that could be the start of a stop string.
                upto = len(text) if finish else max(shown, len(text) - hold)
                chunk = Chunk(
                    text=text[shown:upto],
                    prompt_tokens=stats.get("prompt_tokens", n_prompt),
                    prompt_tps=stats.get("prompt_tps", 0.0),
                    generation_tokens=stats.get("generation_tokens", 0),
                    generation_tps=stats.get("generation_tps", 0.0),
                    peak_memory=stats.get("peak_memory", 0.0),
                    time_to_first_token=first or 0.0,
                    finish_reason=finish,
                )
                shown = upto
                yield chunk
                if finish:
                    return

    def generate(self, messages, settings=None, cancel=None) -> str:
        return "".join(c.text for c in self.stream_generate(messages, settings, cancel))


def _find_stop(text: str, stops, shown: int) -> int | None:
    """Index where the earliest stop string starts in the not-yet-final part of `text`."""
    hits = []
    for s in stops:
        if s:
            i = text.find(s, max(0, shown - len(s)))
            if i >= 0:
                hits.append(i)
    return min(hits) if hits else None
