"""The transformers + PEFT engine: for machines without Apple Silicon (CPU, CUDA, MPS).

Adapters are loaded with PEFT's own `PeftModel.from_pretrained` / `load_adapter` (MLX-format folders
are first written as PEFT folders by `write_peft`), and all stay resident. PEFT's `set_adapter`
walks every module on each call (21.9 ms on a 0.5B model); here every PEFT LoRA layer instead reads
its active adapter from one shared `SharedActive` object, so a switch is one assignment.
Generation is our own token loop with a KV cache; the prompt goes in paced chunks (rates.prefill_spans)
and `cancel` is checked before every forward call.
"""
from __future__ import annotations

import gc
import json
import logging
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from app.engine.adapter_write import write_peft
from app.engine.base import AdapterInfo, Engine, ModelInfo
from app.engine.rates import decode_rate, prefill_spans
from app.engine.lora import LoraWeights, fingerprint_of
from app.engine.torch_lora import SharedActive, share_active
from app.engine.text import chat_prompt, encode, split_for_loglikelihood
from app.engine.torch_batch import cache_arg, cache_of, decode_together
from app.errors import AdapterError, EngineError
from app.tasks import GenerationSettings

log = logging.getLogger(__name__)


def pick_device() -> str:
    """LORADESK_DEVICE if set, else CUDA, then MPS, then CPU."""
    env = os.environ.get("LORADESK_DEVICE")
    if env:
        return env
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def pick_dtype(config: dict, device: str) -> torch.dtype:
    """LORADESK_TORCH_DTYPE if set; else float32 models stay float32 (tiny test models, exact
    parity) and others run in bf16 (fp16 where bf16 is unsupported)."""
    chosen = os.environ.get("LORADESK_TORCH_DTYPE")
    if chosen:  # e.g. float32 on a CPU without bf16 instructions, where batches decode much faster
        if chosen not in ("float32", "bfloat16", "float16"):
            raise EngineError(f"LORADESK_TORCH_DTYPE={chosen!r}: choose float32, bfloat16 or float16")
        return getattr(torch, chosen)
    declared = str(config.get("dtype") or config.get("torch_dtype") or "bfloat16")
    if declared == "float32":
        return torch.float32
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device == "mps":
        return torch.float16
    return torch.bfloat16


def upcast_adapters(device: str) -> bool:
    """Keep LoRA weights in float32 on CPU (PEFT's default upcast): rank-16 bf16 matmuls are slow
    there (168 LoRA pairs of a 0.5B model: 12.5 ms/token in bf16, 4.1 in fp32, vs 66 ms for the
    base projections; one thread). On GPUs they stay in the model's dtype."""
    return device == "cpu"


class _Detokenizer:
    """Streams text from token ids; holds back pieces that end inside a multi-byte character.
    Like mlx-lm's detokenizers, it drops one leading space of the answer."""

    def __init__(self, tokenizer):
        self.tokenizer, self.ids, self.shown, self.started = tokenizer, [], 0, False

    def _emit(self, piece: str) -> str:
        if not self.started and piece:
            self.started = True
            piece = piece.removeprefix(" ")
        return piece

    def add(self, token: int) -> str:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd"):
            return ""
        piece, self.shown = text[self.shown:], len(text)
        if text.endswith("\n"):  # start a fresh window: decoding stays O(line)
            self.ids, self.shown = [], 0
        return self._emit(piece)

    def flush(self) -> str:
        text = self.tokenizer.decode(self.ids) if self.ids else ""
        return self._emit(text[self.shown:])


def _memory_gb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 1e9
    import psutil

    return psutil.Process().memory_info().rss / 1e9


class TorchEngine(Engine):
    kind = "torch"

    def __init__(self, device: str | None = None, load_in_4bit: bool | None = None):
        super().__init__()
        self.device_name = device or pick_device()
        self.load_in_4bit = os.environ.get("LORADESK_TORCH_4BIT") == "1" if load_in_4bit is None else load_in_4bit
        self.dtype: torch.dtype | None = None
        self.model = None  # the transformers model; PEFT injects its LoRA layers into it in place
        self.peft_model = None
        self.tokenizer = None
        self._shared = SharedActive()
        self._shapes: dict[str, tuple[int, int]] = {}
        self._eos: set[int] = set()

    @property
    def device(self) -> str:
        """Where the model runs and in which precision, e.g. "cpu (bfloat16)" (`loradesk info`)."""
        return f"{self.device_name} ({str(self.dtype).removeprefix('torch.')})" if self.dtype else self.device_name

    # -- model --------------------------------------------------------------------------
    def load(self, model_ref) -> ModelInfo:
        path = self.resolve_model(model_ref, engine="torch")
        with self._lock:
            return self._load(str(model_ref), Path(path))

    def _load(self, ref: str, path: Path) -> ModelInfo:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        config = json.loads((path / "config.json").read_text())
        if "quantization" in config and "quant_method" not in config.get("quantization_config", {}):  # mlx-lm's
            raise EngineError(f"{path} is an MLX-quantized model; the torch engine needs the original "
                              "weights (an HF folder or repo), or use --engine mlx")
        dtype = pick_dtype(config, self.device_name)
        kwargs = {"dtype": dtype}
        quant = None
        if self.load_in_4bit:
            quant = self._bnb_config(dtype)
            if quant is not None:
                kwargs.update(quantization_config=quant, device_map={"": self.device_name})
        if config.get("model_type") == "gemma2":
            kwargs["attn_implementation"] = "eager"  # logit soft-capping needs the eager kernel
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(path))
            model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
        except (OSError, ValueError, KeyError) as e:
            raise EngineError(f"could not load model from {path}: {e}") from None
        if quant is None:
            model.to(self.device_name)
        model.eval()
        self.model, self.tokenizer, self.peft_model, self.dtype = model, tokenizer, None, dtype
        self.adapters.clear()
        self._shared = SharedActive()
        self._shapes = {
            name: (m.in_features, m.out_features) for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and ".layers." in f".{name}"
        }
        self._eos = _eos_ids(config, model, tokenizer)
        self.model_info = ModelInfo(
            ref=ref, path=path, model_type=config.get("model_type", "?"),
            fingerprint={**fingerprint_of(config), "max_position_embeddings": config.get("max_position_embeddings", 4096)},
            quantization="4-bit (bitsandbytes nf4)" if quant is not None else None,
            bytes=sum(p.stat().st_size for p in path.glob("*.safetensors")),
        )
        self.active = None
        return self.model_info

    def _free(self) -> None:
        self.model = self.peft_model = self.tokenizer = None
        self._shared, self._shapes = SharedActive(), {}
        gc.collect()  # PEFT's layers and the KV caches hold reference cycles
        if self.device_name.startswith("cuda"):
            torch.cuda.empty_cache()
        elif self.device_name == "mps":
            torch.mps.empty_cache()

    def _bnb_config(self, dtype):
        if not self.device_name.startswith("cuda"):
            log.warning("4-bit loading needs CUDA and bitsandbytes; loading %s weights instead", dtype)
            return None
        try:
            import bitsandbytes  # noqa: F401
            from transformers import BitsAndBytesConfig
        except ImportError:
            log.warning("bitsandbytes is not installed; loading %s weights instead", dtype)
            return None
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)

    # -- adapters -----------------------------------------------------------------------
    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        return dict(self._shapes)

    def _add_folder(self, name: str, folder: Path, weights: LoraWeights) -> AdapterInfo:
        return self._add(name, folder, weights)

    def add_weights(self, name: str, weights: LoraWeights, folder: Path | None = None) -> AdapterInfo:
        """Add adapter weights already in memory (e.g. just trained)."""
        self.require_model()
        self._check(weights, repr(name))
        with self._lock:
            return self._add(name, folder or Path("."), weights, from_folder=False)

    def _add(self, name: str, folder: Path, weights: LoraWeights, from_folder: bool = True) -> AdapterInfo:
        from peft.tuners.lora import LoraLayer

        if name in self.adapters:
            self._drop(name)
        with tempfile.TemporaryDirectory(prefix="loradesk-peft-") as tmp:
            src = folder
            if weights.format != "peft" or not from_folder:  # one loader: PEFT's, on a PEFT folder
                src = write_peft(weights, Path(tmp) / "adapter")
            try:
                with warnings.catch_warnings():  # transformers deprecations that PEFT triggers
                    warnings.simplefilter("ignore", FutureWarning)
                    self._peft_load(name, src)
            except Exception as e:  # keep serving what we had
                self._forget(name)
                raise AdapterError(f"PEFT could not load adapter {name!r} from {folder}: {e}") from None
        for module in self.model.modules():
            if isinstance(module, LoraLayer):
                share_active(module, self._shared)
        self.adapters[name] = AdapterInfo(
            name=name, path=folder, format=weights.format, rank=weights.rank, scale=weights.scale,
            modules=len(weights.modules), bytes=weights.nbytes(), base_model=weights.base_model,
            metadata=weights.metadata,
        )
        return self.adapters[name]

    def _peft_load(self, name: str, folder: Path) -> None:
        from peft import PeftModel

        kw = dict(adapter_name=name, is_trainable=False, autocast_adapter_dtype=upcast_adapters(self.device_name))
        if self.peft_model is None:
            self.peft_model = PeftModel.from_pretrained(self.model, str(folder), **kw)
        else:
            self.peft_model.load_adapter(str(folder), **kw)

    def _forget(self, name: str) -> None:
        if self.peft_model is not None and name in self.peft_model.peft_config:
            try:
                with warnings.catch_warnings():  # "active adapter ... deleted": we reset it ourselves
                    warnings.simplefilter("ignore", UserWarning)
                    self.peft_model.delete_adapter(name)
            except Exception:  # noqa: BLE001 - best effort on a half-loaded adapter
                log.exception("could not remove half-loaded adapter %s", name)

    def _drop(self, name: str) -> None:
        self._forget(name)

    def _route(self, name: str | None) -> None:
        self._shared.weights = None
        self._shared.names = [] if name is None else [name]

    def _route_mix(self, pairs) -> None:
        variants = [n for n, _ in pairs if self.peft_model.peft_config[n].use_dora]
        if variants:  # DoRA rescales the whole weight: its delta is not a B A term to weigh
            raise EngineError(f"cannot mix {', '.join(variants)}: DoRA adapters do not add a plain delta")
        self._shared.weights = dict(pairs)
        self._shared.names = [n for n, _ in pairs]

    # -- text ---------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        return encode(self.tokenizer, text)

    def decode(self, tokens) -> str:
        return self.tokenizer.decode(list(tokens))

    def chat_prompt(self, messages: list[dict]) -> str:
        return chat_prompt(self.tokenizer, messages)

    def _stream_tokens(self, tokens: list[int], settings: GenerationSettings,
                       cancel=None) -> Iterator[tuple[str, dict]]:
        return self._token_loop(tokens, settings, cancel)

    @torch.inference_mode()  # on a generator: entered and left around each step, not across yields
    def _token_loop(self, tokens: list[int], settings: GenerationSettings, cancel=None):
        gen = None
        if settings.temperature > 0:
            gen = torch.Generator(device="cpu")
            gen.manual_seed(settings.seed if settings.seed is not None else int(time.time_ns() % 2**31))
        detok = _Detokenizer(self.tokenizer)
        step = _stepper(self.model, self.device_name)
        stopped = lambda: cancel is not None and cancel.is_set()  # noqa: E731
        stats = {"prompt_tokens": len(tokens), "prompt_tps": 0.0, "generation_tokens": 0,
                 "generation_tps": 0.0, "peak_memory": 0.0}
        start = time.perf_counter()
        for lo, hi in prefill_spans(len(tokens), self.prefill_step_size):
            if stopped():
                yield "", {**stats, "prompt_tps": lo / max(time.perf_counter() - start, 1e-9),
                           "peak_memory": _memory_gb(self.device_name), "finish_reason": "cancelled"}
                return
            logits = step(tokens[lo:hi])
        prompt_tps = len(tokens) / max(time.perf_counter() - start, 1e-9)
        t_first = None
        peak = 0.0
        for n in range(1, settings.max_tokens + 1):
            token = _sample(logits, settings, gen)
            now = time.perf_counter()
            t_first = t_first or now
            peak = max(peak, _memory_gb(self.device_name))
            stats = {"prompt_tokens": len(tokens), "prompt_tps": prompt_tps, "generation_tokens": n,
                     "generation_tps": decode_rate(n, t_first, now), "peak_memory": peak}
            if token in self._eos:
                yield detok.flush(), {**stats, "finish_reason": "stop"}
                return
            piece = detok.add(token)
            if n == settings.max_tokens:
                yield piece + detok.flush(), {**stats, "finish_reason": "length"}
                return
            yield piece, stats
            if stopped():
                yield detok.flush(), {**stats, "finish_reason": "cancelled"}
                return
            logits = step([token])

    @property
    def together(self) -> int:
        """Rows `answer_many` decodes in one batch (LORADESK_TORCH_BATCH, default 8)."""
        return max(1, int(os.environ.get("LORADESK_TORCH_BATCH", "8")))

    def answer_many(self, prompts, settings=None, cancel=None, together=None):
        """Batches of `together` prompts decoded as one (torch_batch.py), under the engine's lock
        and the active adapter set; a prompt that does not fit gets its EngineError, the rest run."""
        settings = settings or GenerationSettings()
        self.require_model()
        rows = together or self.together
        results: list = [None] * len(prompts)
        fitted = []
        for i, p in enumerate(prompts):
            try:
                fitted.append((i, *self.fit_prompt(p, settings.max_tokens)))
            except EngineError as e:
                results[i] = e
        pad = self.tokenizer.pad_token_id
        pad = pad if pad is not None else min(self._eos, default=0)
        with self._lock:
            for lo in range(0, len(fitted), rows):
                part = fitted[lo:lo + rows]
                start = time.perf_counter()
                answers = decode_together(self.model, self.device_name, [t for _, t, _ in part], settings,
                                          self._eos, pad, lambda: _Detokenizer(self.tokenizer), _sample, cancel)
                seconds, peak = time.perf_counter() - start, _memory_gb(self.device_name)
                for (i, _, cut), (text, stats) in zip(part, answers):
                    results[i] = (text, {**stats, "seconds": seconds, "peak_memory_gb": peak, "truncated_tokens": cut})
        return results

    @torch.inference_mode()
    def _logits(self, tokens: list[int]) -> torch.Tensor:
        return self.model(input_ids=torch.tensor([tokens], device=self.device_name)).logits[0].float()

    def loglikelihood(self, context: str, continuation: str) -> tuple[float, bool]:
        self.require_model()
        ctx, cont = split_for_loglikelihood(self.encode, context, continuation)
        with self._lock:
            logits = self._logits((ctx + cont)[:-1])[len(ctx) - 1:]
        logprobs = torch.log_softmax(logits, dim=-1)
        target = torch.tensor(cont, device=logprobs.device)
        picked = logprobs.gather(-1, target[:, None]).squeeze(-1)
        return float(picked.sum()), bool((logprobs.argmax(-1) == target).all())

    def next_token_logits(self, text: str) -> np.ndarray:
        """Logits for the token after `text` (float32), for parity checks."""
        with self._lock:
            return self._logits(self.encode(text))[-1].cpu().numpy()

    def memory_bytes(self) -> int:
        """Bytes of the model's tensors (weights, resident adapters, buffers); tied weights once."""
        if self.model is None:
            return 0
        if self.device_name.startswith("cuda"):
            return int(torch.cuda.memory_allocated())
        seen, total = set(), 0
        for t in list(self.model.parameters()) + list(self.model.buffers()):
            ptr = t.untyped_storage().data_ptr()
            if ptr not in seen:
                seen.add(ptr)
                total += t.untyped_storage().nbytes()
        return total


def _stepper(model, device: str):
    """A function feeding new tokens through `model` with a KV cache, returning the last logits."""
    import inspect

    params = inspect.signature(model.forward).parameters
    arg = cache_arg(model)
    keep = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
    state = {}

    def step(tokens: list[int]) -> torch.Tensor:
        ids = torch.tensor([tokens], device=device)
        out = model(input_ids=ids, use_cache=True, **{arg: state.get("cache")}, **keep)
        state["cache"] = cache_of(out)
        return out.logits[0, -1]

    return step


def _sample(logits: torch.Tensor, settings: GenerationSettings, gen) -> int:
    if settings.temperature <= 0:
        return int(logits.argmax())
    probs = torch.softmax(logits.float() / settings.temperature, dim=-1).cpu()
    if settings.top_p < 1.0:
        sorted_p, order = probs.sort(descending=True)
        keep = sorted_p.cumsum(0) - sorted_p < settings.top_p  # always keeps the top token
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
    return int(torch.multinomial(probs, 1, generator=gen))


def _eos_ids(config: dict, model, tokenizer) -> set[int]:
    """End-of-sequence ids from config.json, generation_config.json and the tokenizer."""
    ids = set()
    sources = [config.get("eos_token_id"), tokenizer.eos_token_id]
    gen = getattr(model, "generation_config", None)
    if gen is not None:
        sources.append(gen.eos_token_id)
    for s in sources:
        if isinstance(s, int):
            ids.add(s)
        elif isinstance(s, (list, tuple)):
            ids.update(int(x) for x in s)
    return ids
