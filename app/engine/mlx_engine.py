"""The MLX engine: a (quantized) mlx-lm model whose linear layers carry every resident adapter.

Each adapted linear layer is wrapped once in `MultiLoRALinear`, which holds the LoRA pairs of all
adapters that target it and reads the active adapter's name from one `ActiveAdapter` object shared
by every layer. Switching adapters assigns that one name: no weights move, nothing is reloaded or
re-quantized. All MLX work runs on the MLX thread (see mlx_thread.py).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Iterator

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from app.engine import mlx_thread
from app.engine.base import AdapterInfo, Engine, ModelInfo
from app.engine.rates import decode_rate, prefill_spans
from app.engine.lora import LoraWeights, fingerprint_of
from app.engine.text import chat_prompt, split_for_loglikelihood  # noqa: F401 - shared with torch
from app.errors import EngineError
from app.tasks import GenerationSettings

log = logging.getLogger(__name__)


class ActiveAdapter:
    """The one piece of state a switch changes, shared by every MultiLoRALinear of a model."""

    __slots__ = ("name", "mix")

    def __init__(self):
        self.name: str | None = None
        self.mix: tuple[tuple[str, float], ...] | None = None  # (name, weight) pairs; None: `name` alone


class MultiLoRALinear(nn.Module):
    """y = base(x) + (x A) (s B) for the active adapter, or base(x) when it has none here; for a
    mix, y = base(x) + sum of w (x A) (s B) over the mix's adapters that target this layer."""

    def __init__(self, base: nn.Module, active: ActiveAdapter):
        super().__init__()
        self.base = base
        # Plain objects (not dict/list/array) stay out of the module's parameter tree.
        self._active = active
        self._lora = _Pairs()

    def __call__(self, x):
        y = self.base(x)
        mix = self._active.mix
        if mix is not None:
            for name, w in mix:
                pair = self._lora.pairs.get(name)
                if pair is not None:
                    a, b = pair
                    y = y + (w * ((x @ a) @ b)).astype(y.dtype)
            return y
        pair = self._lora.pairs.get(self._active.name)
        if pair is None:
            return y
        a, b = pair
        return y + ((x @ a) @ b).astype(y.dtype)


class _Pairs:
    """Holds name -> (A, scale * B). Not a dict itself: mlx.nn.Module would take a dict attribute
    for a parameter subtree (and train, save and count it)."""

    __slots__ = ("pairs",)

    def __init__(self):
        self.pairs: dict[str, tuple[mx.array, mx.array]] = {}


def _in_out(layer: nn.Module) -> tuple[int, int]:
    out_f, in_f = layer.weight.shape
    if isinstance(layer, nn.QuantizedLinear):
        in_f = in_f * 32 // layer.bits
    return in_f, out_f


def _weight_dtype(layer: nn.Module):
    if isinstance(layer, nn.QuantizedLinear):
        return layer.scales.dtype
    return layer.weight.dtype


class MLXEngine(Engine):
    kind = "mlx"

    def __init__(self):
        super().__init__()
        self.model = None
        self.tokenizer = None
        self._active = ActiveAdapter()
        self._wrapped: dict[str, MultiLoRALinear] = {}
        self._linears: dict[str, nn.Module] = {}

    # -- model --------------------------------------------------------------------------
    def load(self, model_ref) -> ModelInfo:
        path = self.resolve_model(model_ref, engine="mlx")
        with self._lock:
            return mlx_thread.call(self._load, str(model_ref), path)

    def _load(self, ref: str, path: Path) -> ModelInfo:
        import mlx_lm

        try:
            model, tokenizer, config = mlx_lm.load(str(path), return_config=True)
        except (ValueError, FileNotFoundError, KeyError) as e:
            raise EngineError(f"could not load model from {path}: {e}") from None
        self.model, self.tokenizer = model, tokenizer
        self.adapters.clear()
        self._active = ActiveAdapter()
        self._wrapped.clear()
        self._linears = {
            name: m for name, m in model.named_modules()
            if isinstance(m, (nn.Linear, nn.QuantizedLinear)) and ".layers." in f".{name}"
        }
        q = config.get("quantization")
        self.model_info = ModelInfo(
            ref=ref, path=Path(path), model_type=config.get("model_type", "?"),
            fingerprint={**fingerprint_of(config), "max_position_embeddings": config.get("max_position_embeddings", 4096)},
            quantization=f"{q['bits']}-bit (group {q['group_size']})" if q else None,
            bytes=sum(p.stat().st_size for p in Path(path).glob("*.safetensors")),
        )
        self.active = None
        return self.model_info

    def _free(self) -> None:
        def drop():  # MLX arrays are freed on the MLX thread, which owns them
            import gc

            self.model = self.tokenizer = None
            self._wrapped.clear()
            self._linears = {}
            gc.collect()
            mx.clear_cache()

        mlx_thread.call(drop)

    # -- adapters -----------------------------------------------------------------------
    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        return {name: _in_out(m) for name, m in self._linears.items()}

    def _add_folder(self, name: str, folder: Path, weights: LoraWeights) -> AdapterInfo:
        return mlx_thread.call(self._add, name, folder, weights)

    def add_weights(self, name: str, weights: LoraWeights, folder: Path | None = None) -> AdapterInfo:
        """Add adapter weights already in memory (e.g. just trained)."""
        self.require_model()
        self._check(weights, repr(name))
        with self._lock:
            return mlx_thread.call(self._add, name, folder or Path("."), weights)

    def _add(self, name: str, folder: Path, weights: LoraWeights) -> AdapterInfo:
        # Runs on the MLX thread; the caller holds self._lock.
        if name in self.adapters:
            self._drop(name)
        arrays = []
        for mod_name, m in weights.modules.items():
            dtype = _weight_dtype(self._linears[mod_name])
            a = mx.array(m.a).astype(dtype)
            b = mx.array(m.b * m.scale).astype(dtype)  # scale folded into B once, here
            arrays += [a, b]
            self._wrap(mod_name)._lora.pairs[name] = (a, b)
        mx.eval(arrays)
        self.adapters[name] = AdapterInfo(
            name=name, path=folder, format=weights.format, rank=weights.rank, scale=weights.scale,
            modules=len(weights.modules), bytes=weights.nbytes(), base_model=weights.base_model,
            metadata=weights.metadata,
        )
        return self.adapters[name]

    def _wrap(self, mod_name: str) -> MultiLoRALinear:
        wrapper = self._wrapped.get(mod_name)
        if wrapper is None:
            from mlx.utils import tree_unflatten

            wrapper = MultiLoRALinear(self._linears[mod_name], self._active)
            self.model.update_modules(tree_unflatten([(mod_name, wrapper)]))
            self._wrapped[mod_name] = wrapper
        return wrapper

    def _drop(self, name: str) -> None:
        for wrapper in self._wrapped.values():
            wrapper._lora.pairs.pop(name, None)

    def _route(self, name: str | None) -> None:
        self._active.mix, self._active.name = None, name

    def _route_mix(self, pairs) -> None:
        self._active.name, self._active.mix = None, tuple(pairs)

    # -- text ---------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        tok = self.tokenizer
        bos = tok.bos_token
        # mlx-lm's rule: add special tokens unless the text already starts with BOS.
        # verbose=False: no "longer than the maximum" warning; Engine.fit_prompt checks the context.
        return list(tok.encode(text, add_special_tokens=bos is None or not text.startswith(bos), verbose=False))

    def decode(self, tokens) -> str:
        return self.tokenizer.decode(list(tokens))

    def chat_prompt(self, messages: list[dict]) -> str:
        return chat_prompt(self.tokenizer, messages)

    def _stream_tokens(self, tokens: list[int], settings: GenerationSettings,
                       cancel=None) -> Iterator[tuple[str, dict]]:
        return mlx_thread.iterate(lambda: self._mlx_stream(tokens, settings, cancel), cancel)

    def _mlx_stream(self, tokens: list[int], settings: GenerationSettings, cancel=None):
        """Runs on the MLX thread. The prompt but its last token goes through the model here, in
        paced chunks with `cancel` checked before each (mlx-lm's own prefill runs to the end once
        started); mlx-lm's stream_generate then continues from that cache with the last token."""
        import mlx_lm
        from mlx_lm.generate import generation_stream
        from mlx_lm.models.cache import make_prompt_cache
        from mlx_lm.sample_utils import make_sampler

        if settings.seed is not None:
            mx.random.seed(settings.seed)
        sampler = make_sampler(temp=settings.temperature, top_p=settings.top_p)
        cache = make_prompt_cache(self.model)
        start = time.perf_counter()
        with mx.stream(generation_stream):  # the stream mlx-lm's generate_step then uses
            for lo, hi in prefill_spans(len(tokens) - 1, self.prefill_step_size):
                if cancel is not None and cancel.is_set():
                    yield "", {"prompt_tokens": len(tokens), "prompt_tps": lo / max(time.perf_counter() - start, 1e-9),
                               "generation_tokens": 0, "generation_tps": 0.0,
                               "peak_memory": mx.get_peak_memory() / 1e9, "finish_reason": "cancelled"}
                    return
                self.model(mx.array(tokens[lo:hi])[None], cache=cache)
                mx.eval([c.state for c in cache])
        prefill = time.perf_counter() - start
        t_first = None
        for r in mlx_lm.stream_generate(self.model, self.tokenizer, mx.array(tokens[-1:]), prompt_cache=cache,
                                        max_tokens=settings.max_tokens, sampler=sampler):
            now = time.perf_counter()
            t_first = t_first or now
            # r.prompt_tps covers only the last prompt token: count the whole prompt's time.
            prompt_tps = len(tokens) / (prefill + r.prompt_tokens / max(r.prompt_tps, 1e-9))
            yield r.text, {
                "prompt_tokens": len(tokens), "prompt_tps": prompt_tps,
                "generation_tokens": r.generation_tokens,
                "generation_tps": decode_rate(r.generation_tokens, t_first, now),
                "peak_memory": r.peak_memory, "finish_reason": r.finish_reason,
            }
            if r.finish_reason is None and cancel is not None and cancel.is_set():
                yield "", {"prompt_tokens": len(tokens), "prompt_tps": prompt_tps,
                           "generation_tokens": r.generation_tokens, "generation_tps": r.generation_tps,
                           "peak_memory": r.peak_memory, "finish_reason": "cancelled"}
                return

    def loglikelihood(self, context: str, continuation: str) -> tuple[float, bool]:
        self.require_model()
        ctx, cont = split_for_loglikelihood(self.encode, context, continuation)
        with self._lock:
            return mlx_thread.call(self._loglikelihood, ctx, cont)

    def _loglikelihood(self, ctx: list[int], cont: list[int]) -> tuple[float, bool]:
        inp = mx.array((ctx + cont)[:-1])[None]
        logits = self.model(inp)[0, len(ctx) - 1:].astype(mx.float32)
        logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        target = mx.array(cont)
        picked = mx.take_along_axis(logprobs, target[:, None], axis=-1).squeeze(-1)
        greedy = mx.all(mx.argmax(logprobs, axis=-1) == target)
        return float(picked.sum().item()), bool(greedy.item())

    def next_token_logits(self, text: str) -> np.ndarray:
        """Logits for the token after `text` (float32), for parity checks."""
        tokens = self.encode(text)

        def run():
            return np.array(self.model(mx.array(tokens)[None])[0, -1].astype(mx.float32))

        with self._lock:
            return mlx_thread.call(run)

    def memory_bytes(self) -> int:
        return mlx_thread.call(mx.get_active_memory)
