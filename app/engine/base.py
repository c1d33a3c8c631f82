"""The engine interface: one loaded base model, resident LoRA adapters keyed by name, one active.

Three layers, as in mlx-lm: a backend's token loop, `stream_generate` yielding `Chunk`s (text plus
timing and memory), and `generate` joining the stream. The UI, CLI, training and benchmark use only
this interface; mlx and torch are imported inside the engine modules alone.
"""
from __future__ import annotations

import contextlib
import gc
import logging
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping

from app.engine.adapter_check import check_against_model
from app.engine.adapter_format import read_adapter
from app.engine.base_model import check_base_model
from app.engine.mix import check_names, check_weights, label
from app.engine.model_files import files_only
from app.engine.text import count_tokens, find_stop, truncate
from app.memory import give_back_freed_memory
from app.errors import AdapterError, EngineError  # noqa: F401 - engine modules import them from here too
from app.tasks import GenerationSettings

log = logging.getLogger(__name__)


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
    truncated_tokens: int = 0  # tokens cut from the end of an over-long input to fit the context


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


class _Active:
    def __repr__(self):
        return "ACTIVE"


ACTIVE = _Active()  # stream_generate's adapter: the engine's active one


class Engine(ABC):
    """Holds one base model and any number of resident adapters; one (or none) is active."""

    kind: str = "?"
    # Answers decoded at once. 1: one at a time, `stream_generate` holds the engine's lock for a
    # whole answer. More (llama.cpp): answers run side by side, each under its own adapter set.
    max_batch: int = 1
    # Most prompt tokens per forward call during prefill (mlx-lm's default). Calls are sized by
    # `prefill_spans` to about PREFILL_SECONDS each, so `cancel` (checked between calls) is seen
    # within a second even on a slow CPU.
    prefill_step_size: int = 2048

    def __init__(self):
        self.model_info: ModelInfo | None = None
        self.adapters: dict[str, AdapterInfo] = {}
        self.active: str | None = None  # an adapter name, a mix's label (mix.label) or None
        self._mix: dict[str, float] = {}  # the weights behind `active` when it is a mix
        # A model reference -> the local path to load. The engine reads files only; create_engine
        # passes the app's resolver (app.models.resolve_model: registered names, the store, the Hub).
        self.resolve_model: Callable[..., Path] = files_only
        # One generation at a time: the hot-swap must never happen mid-answer.
        self._lock = threading.RLock()

    # -- model and adapters -------------------------------------------------------------
    @abstractmethod
    def load(self, model_ref: str | Path) -> ModelInfo:
        """Load a base model (hub repo id or local folder), dropping any adapters."""

    def unload(self) -> None:
        """Drop the model and every adapter and give their memory back, e.g. before loading another
        model (the app does, so two models never share memory at the peak). The engine is then
        empty: `require_model` fails until the next `load`."""
        with self._lock:  # after a running generation
            self.model_info, self.active = None, None
            self.adapters.clear()
            self._free()

    def _free(self) -> None:
        """Drop the backend's model objects and return their memory (gc, allocator caches)."""
        gc.collect()

    # Model facts an adapter is not checked against (the context length; llama.cpp reads no FFN size).
    _unchecked_facts: tuple[str, ...] = ("max_position_embeddings",)

    def add_adapter(self, name: str, folder: str | Path, force: bool = False) -> AdapterInfo:
        """Validate and load an adapter folder (MLX or PEFT format); it stays resident, inactive.
        An adapter recorded as made for another base model is refused unless `force`
        (adapter_format.check_base_model; its warning, if any, is kept in AdapterInfo.warning)."""
        self.require_model()
        weights = read_adapter(folder)  # file reading and format checks: any thread, no lock
        where = f"{name!r} ({folder})"
        self._check(weights, where)
        warning = self._check_base(weights, where, force)
        with self._lock:
            added = self._add_folder(name, Path(folder), weights)
        del weights  # its arrays are copied into the engine: hand the freed pages back
        give_back_freed_memory()
        if warning:
            log.info(warning)  # the caller shows AdapterInfo.warning once (CLI line, app banner)
            added.warning = warning
        return added

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of every adaptable linear layer, by module name."""
        raise NotImplementedError

    def _check(self, weights, where: str) -> None:
        """Every mismatch between the adapter and the model's layers and facts, in one AdapterError."""
        info = self.model_info
        fp = {k: v for k, v in info.fingerprint.items() if k not in self._unchecked_facts}
        check_against_model(weights, self.linear_shapes(), fp, where, f"the loaded model ({info.ref})")

    def base_matches(self, weights) -> bool:
        """Whether the loaded model is positively the base the adapter records (weights or name)."""
        try:
            return self._check_base(weights, "", False) is None
        except AdapterError:
            return False

    def _check_base(self, weights, where: str, force: bool) -> str | None:
        return check_base_model(weights, self.model_info, where, force)

    @abstractmethod
    def _add_folder(self, name: str, folder: Path, weights) -> AdapterInfo:
        """Make the checked adapter resident under `name` (the caller holds the lock)."""

    def remove_adapter(self, name: str) -> None:
        self.check_adapter_name(name)
        with self._lock:
            self._drop(name)
            del self.adapters[name]
            if self.active == name or name in self.mix:
                self._route(None)
                self.active = None

    def activate(self, name: str | None) -> None:
        """Make `name` the active adapter (None: the plain base model). No weights move.
        A {name: weight} mapping activates that mix (`activate_mix`)."""
        if isinstance(name, Mapping):  # lets the app's and the server's jobs carry a mix as their adapter
            return self.activate_mix(name)
        if name is not None and name not in self.adapters:
            self.check_adapter_name(name)
        with self._lock:  # waits for a running generation: never mix adapters in one answer
            self._route(name)
            self.active = name

    @property
    def mix(self) -> dict[str, float]:
        """The active adapters and their weights: {} for the base model, {name: 1.0} for one."""
        if self._mix and self.active == label(self._mix):
            return dict(self._mix)
        return {} if self.active is None else {self.active: 1.0}

    def activate_mix(self, weights: Mapping[str, float]) -> None:
        """Make a weighted sum of resident adapters active: every adapted layer adds each adapter's
        own delta times its weight, sum_i w_i s_i (x A_i) B_i (exact; A and B are never averaged).
        Weights need not sum to 1; an empty (or all-zero) mix is the base model. Like `activate`,
        it waits for a running generation, and no weights move."""
        weights = check_weights(weights)
        check_names(weights, self.adapters)
        with self._lock:
            if not weights:
                self._route(None)
                self.active = None
                return
            self._route_mix(tuple(weights.items()))
            self._mix, self.active = weights, label(weights)

    def _route_mix(self, pairs: tuple[tuple[str, float], ...]) -> None:
        """Point the LoRA layers at these (adapter, weight) pairs; engines that can mix override it."""
        raise EngineError(f"the {self.kind} engine cannot mix adapters")

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
    def _stream_tokens(self, tokens: list[int], settings: GenerationSettings,
                       cancel: threading.Event | None = None) -> Iterator[tuple[str, dict]]:
        """Backend token loop over prompt token ids that already fit (len(tokens) + max_tokens <=
        context_length; `stream_generate` sees to it).

        Reads the prompt in forward calls of at most `prefill_step_size` tokens and checks `cancel`
        before each call, during the prefill and between generated tokens; once it is set, no
        further forward call runs and the last item is ("", stats with finish_reason "cancelled").
        Yields (text piece, stats); stats has prompt_tokens, prompt_tps, generation_tokens,
        generation_tps, peak_memory (GB), and on the last item finish_reason ("stop", "length"
        or "cancelled")."""

    @abstractmethod
    def loglikelihood(self, context: str, continuation: str) -> tuple[float, bool]:
        """Sum of log p(continuation | context) over its tokens, and whether greedy decoding
        would produce exactly those tokens (lm-eval-harness's `loglikelihood`)."""

    def scheduling(self) -> str:
        """How concurrent answers run, for `info` and the model's tooltip in the app."""
        return "one answer at a time (concurrent requests wait their turn)"

    def batch_status(self) -> str:
        """The answers running now and the cache they hold, in a few words for the status bar
        ('' for an engine that answers one at a time)."""
        return ""

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
        adapter=ACTIVE,
    ) -> Iterator[Chunk]:
        """Stream an answer to chat messages (or a raw prompt string).

        `adapter` (a name, a {name: weight} mix, or None for the base model) answers with that
        adapter set without changing the active one; by default the active one answers.

        The prompt keeps `settings.max_tokens` of the context free for the answer: an over-long
        input is cut to fit (see `fit_prompt`; every chunk says how many tokens were cut). Stop
        strings end the answer (and are not shown); `cancel` reaches the backend's loop, which
        checks it between prefill steps and between tokens.
        """
        settings = settings or GenerationSettings()
        self.require_model()
        tokens, truncated = self.fit_prompt(messages, settings.max_tokens)
        n_prompt = len(tokens)
        start = time.perf_counter()
        first = None
        text = ""  # the full answer so far, to find stop strings that span pieces
        shown = 0  # how much of it has been yielded
        hold = max((len(s) for s in settings.stop), default=0)
        with self._answering(adapter) as tokens_of:
            for piece, stats in tokens_of(tokens, settings, cancel):
                if first is None and piece:
                    first = time.perf_counter() - start
                finish = stats.get("finish_reason")
                if cancel is not None and cancel.is_set() and finish is None:
                    finish = "cancelled"
                text += piece
                cut = find_stop(text, settings.stop, shown)
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
                    truncated_tokens=truncated,
                )
                shown = upto
                yield chunk
                if finish:
                    return

    def generate(self, messages, settings=None, cancel=None, adapter=ACTIVE) -> str:
        return "".join(c.text for c in self.stream_generate(messages, settings, cancel, adapter))

    @property
    def together(self) -> int:
        """How many answers `answer_many` computes at once by default."""
        return self.max_batch

    def answer_many(self, prompts: list, settings: GenerationSettings | None = None,
                    cancel: threading.Event | None = None, together: int | None = None) -> list:
        """Answers to several prompts under the active adapter set, for batch work (a benchmark's
        items): each is (text, stats) as `collect` gives, or the EngineError that prompt met (one
        prompt that does not fit fails alone). Here: `together` concurrent answers on an engine that
        batches them (llama.cpp's scheduler), else one after another; torch decodes them as a batch."""
        settings = settings or GenerationSettings()
        together = together or self.together

        def one(p):
            try:
                return collect(self.stream_generate(p, settings, cancel))
            except EngineError as e:
                return e

        if together <= 1 or len(prompts) <= 1:
            return [one(p) for p in prompts]
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=min(together, len(prompts))) as pool:
            return list(pool.map(one, prompts))

    @contextlib.contextmanager
    def _answering(self, adapter):
        """The token loop of one answer under `adapter`. Here (one answer at a time): the engine's
        lock for the whole answer, with the adapter switched to and back inside it. A batching
        engine overrides this to hand the answer to its scheduler instead."""
        with self._lock:
            if adapter is ACTIVE:
                yield self._stream_tokens
                return
            previous, previous_mix = self.active, dict(self._mix)
            self.activate(adapter)
            try:
                yield self._stream_tokens
            finally:
                if self.active != previous:
                    self._restore(previous, previous_mix)

    def _restore(self, active, mix: dict) -> None:
        from app.engine.mix import label

        if mix and active == label(mix) and all(n in self.adapters for n in mix):
            self.activate_mix(mix)
        elif active is None or active in self.adapters:
            self.activate(active)

    def fit_prompt(self, messages: list[dict] | str, max_tokens: int) -> tuple[list[int], int]:
        """Prompt token ids for `messages` leaving `max_tokens` of the context for the answer, and
        how many tokens of the input were cut to make it fit.

        The input is the end of the last user message (every task template ends with {input}); it
        is cut keeping its start, by `truncate`, the benchmark's own rule for long articles. A raw
        prompt string is never cut: it is refused when it does not fit.
        """
        limit = self.context_length
        room = limit - max_tokens
        if room <= 0:
            raise EngineError(f"an answer of up to {max_tokens} tokens leaves no room for the prompt in this "
                              f"model's {limit}-token context; ask for fewer tokens (below {limit}).")
        if isinstance(messages, str):
            tokens = self.encode(messages)
            if len(tokens) > room:
                raise EngineError(f"the prompt is {len(tokens)} tokens; with {max_tokens} kept for the answer this "
                                  f"model reads at most {room} (context {limit}). Shorten the input.")
            return tokens, 0
        tokens = self.encode(self.chat_prompt(messages))
        if len(tokens) <= room:
            return tokens, 0
        last = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
        content = messages[last]["content"] if last is not None else ""
        n_input = count_tokens(self, content)
        keep = n_input - (len(tokens) - room)
        for _ in range(8):  # tokens can merge across the cut: recount and cut a little more
            if keep <= 0:
                break
            cut = [dict(m) for m in messages]
            cut[last]["content"] = truncate(self, content, keep)
            tokens = self.encode(self.chat_prompt(cut))
            if len(tokens) <= room:
                return tokens, n_input - keep
            keep -= len(tokens) - room
        raise EngineError(f"the prompt does not fit: its instructions alone are about {len(tokens) - n_input} tokens "
                          f"and {max_tokens} are kept for the answer, in this model's {limit}-token context. "
                          "Ask for a shorter answer.")


def collect(chunks: Iterator[Chunk]) -> tuple[str, dict]:
    """Join a streamed answer: its text and the speed figures of its last chunk (the benchmark's
    record of one answer)."""
    start = time.perf_counter()
    text, last = [], None
    for chunk in chunks:
        text.append(chunk.text)
        last = chunk
    stats = {"seconds": time.perf_counter() - start}
    if last is not None:
        stats.update(prompt_tokens=last.prompt_tokens, prompt_tps=last.prompt_tps,
                     generation_tokens=last.generation_tokens, generation_tps=last.generation_tps,
                     ttft=last.time_to_first_token, peak_memory_gb=last.peak_memory,
                     finish_reason=last.finish_reason)
    return "".join(text), stats
