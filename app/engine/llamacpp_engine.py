"""The llama.cpp engine (llama-cpp-python's C API): a GGUF base, 4-bit on CPU, for machines without
Apple Silicon or CUDA.

Every adapter is converted once to a GGUF LoRA (gguf_lora.py) and loaded with
`llama_adapter_lora_init`; all stay resident. A switch is one `llama_set_adapters_lora` call on the
context. The high-level `Llama` object holds one adapter and keys its prompt cache on tokens only,
so a switch there would reuse KV entries computed under another adapter (llama.cpp server #26207).
Here the KV cache remembers which adapter set filled it: a prefix is reused only under the same set,
otherwise the cache is cleared before the prompt is read.

When one adapter set stays active, a merged copy of the matrices it changes is built in the
background (llamacpp_merge.py) and swapped in before the next answer: no LoRA in the graph. Any
switch goes back to the base plus resident LoRA before the next decode; a switch to another
adapter set, or low free memory, drops the copy.
"""
from __future__ import annotations

import codecs
import ctypes
import os
import threading
import time
from pathlib import Path
from typing import Iterator

import llama_cpp
import numpy as np

from app import paths
from app.engine import llamacpp_merge as merging
from app.engine.lora import LoraWeights
from app.engine.base_model import check_base_model, looks_like_repo_id
from app.engine.base import AdapterError, AdapterInfo, Engine, EngineError, ModelInfo, decode_rate, prefill_spans
from app.engine.gguf_lora import cached_gguf_lora, lora_dtype
from app.engine.llamacpp_setup import (BATCH, DEFAULT_CTX, context_params, default_threads, extra_buffers,
                                       init_backend, last_errors, meta, model_params, why)
from app.engine.text import chat_prompt, split_for_loglikelihood
from app.tasks import GenerationSettings


class _ChatTemplate:
    """The GGUF's own chat template, with transformers' `apply_chat_template` signature (what
    text.chat_prompt calls), rendered by llama-cpp-python's Jinja2 formatter."""

    def __init__(self, template: str | None, bos: str, eos: str):
        self.chat_template = template
        self._bos, self._eos = bos, eos

    def apply_chat_template(self, messages, add_generation_prompt=True, tokenize=False):
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        fmt = Jinja2ChatFormatter(self.chat_template, eos_token=self._eos, bos_token=self._bos,
                                  add_generation_prompt=add_generation_prompt)
        return fmt(messages=messages).prompt


class _Detokenizer:
    """Token pieces as UTF-8 text; holds back bytes that end inside a character. Drops one
    leading space of the answer, as the other engines' detokenizers do."""

    def __init__(self, piece_bytes):
        self._bytes = piece_bytes
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._started = False

    def add(self, token: int) -> str:
        text = self._utf8.decode(self._bytes(token))
        if not self._started and text:
            self._started = True
            text = text.removeprefix(" ")
        return text

    def flush(self) -> str:
        return self._utf8.decode(b"", final=True)


class LlamaCppEngine(Engine):
    kind = "llamacpp"

    def __init__(self, n_ctx: int | None = None, threads: int | None = None):
        super().__init__()
        init_backend()
        self.n_ctx_wanted = n_ctx or int(os.environ.get("LORADESK_CTX", DEFAULT_CTX))
        self.threads = threads or default_threads()
        self.model = None  # llama_model_p
        self.ctx = None  # llama_context_p
        self.vocab = None
        self.template: _ChatTemplate | None = None
        self._lora: dict[str, tuple[object, Path]] = {}  # name -> (llama_adapter_lora_p, GGUF file)
        self._applied: tuple = ()  # (name, scale) pairs set on the context now
        self._cache_owner: tuple | None = None  # the adapter set that filled the KV cache
        self._cache: list[int] = []  # the tokens whose keys/values are in the KV cache
        self._one = (llama_cpp.llama_token * 1)()
        self._shapes: dict[str, tuple[int, int]] = {}
        self._lora_dtype = None  # the GGUF LoRA tensor type for the loaded base
        self._piece = ctypes.create_string_buffer(256)
        # The merged copy (see the module docstring): None = off; else seconds an adapter set must
        # stay active before its copy is built.
        self.merge_after = merge_after()
        self.merge_min_free = int(float(os.environ.get("LORADESK_MERGE_MIN_FREE_MB", 1024)) * 2**20)
        self.merge_note = "" if self.merge_after is not None else "off (LORADESK_MERGE=off)"
        self._ctx_loras: tuple = ()  # what llama_set_adapters_lora last gave the context
        self._since = time.monotonic()  # when the current adapter set became active
        self._merged: merging.MergedCopy | None = None
        self._building: tuple | None = None  # (adapter set, cancel event, thread)
        self._built: merging.MergedCopy | None = None  # handed over by the build thread
        self._tensors: dict[str, int] | None = None
        self.device = ("cpu (llama.cpp" + (", GPU offload" if llama_cpp.llama_supports_gpu_offload() else "")
                       + f"; weight repacking {extra_buffers()[1]})")

    # -- model --------------------------------------------------------------------------
    def load(self, model_ref) -> ModelInfo:
        path = self.resolve_model(model_ref, engine="llamacpp")
        with self._lock:
            self.unload()  # drop the old model first: never two models in memory at once
            return self._load(str(model_ref), path)

    def _load(self, ref: str, path: Path) -> ModelInfo:
        last_errors.clear()
        model = llama_cpp.llama_model_load_from_file(str(path).encode(), model_params())
        if not model:
            raise EngineError(f"llama.cpp could not load {path}{why()}: it is not a complete GGUF model of an "
                              "architecture llama.cpp knows; download it again, or check the file")
        n_ctx = min(self.n_ctx_wanted, llama_cpp.llama_model_n_ctx_train(model) or self.n_ctx_wanted)
        ctx = llama_cpp.llama_init_from_model(model, context_params(n_ctx, self.threads))
        if not ctx:
            llama_cpp.llama_model_free(model)
            raise EngineError(f"llama.cpp could not create a {n_ctx}-token context for {path} (out of memory?); "
                              "set LORADESK_CTX to a smaller number of tokens")
        self.model, self.ctx = model, ctx
        self.vocab = llama_cpp.llama_model_get_vocab(model)
        arch = meta(model, "general.architecture") or "?"
        n_embd, n_head = llama_cpp.llama_model_n_embd(model), llama_cpp.llama_model_n_head(model)
        fp = {
            "model_type": arch,
            "hidden_size": n_embd,
            "num_hidden_layers": llama_cpp.llama_model_n_layer(model),
            "intermediate_size": int(meta(model, f"{arch}.feed_forward_length") or 0),
            "num_attention_heads": n_head,
            "num_key_value_heads": llama_cpp.llama_model_n_head_kv(model),
            "vocab_size": llama_cpp.llama_vocab_n_tokens(self.vocab),
        }
        head_dim = int(meta(model, f"{arch}.attention.key_length") or n_embd // max(n_head, 1))
        from app.engine.adapter_check import linear_shapes_from_config

        self._shapes = linear_shapes_from_config({**fp, "head_dim": head_dim})
        desc = ctypes.create_string_buffer(256)
        llama_cpp.llama_model_desc(model, desc, len(desc))
        self.template = _ChatTemplate(meta(model, "tokenizer.chat_template"), self._special_text("bos"),
                                      self._special_text("eos"))
        self.model_info = ModelInfo(
            ref=ref, path=path, model_type=arch,
            fingerprint={**fp, "max_position_embeddings": llama_cpp.llama_n_ctx(ctx)},
            quantization=f"GGUF {desc.value.decode(errors='replace').split(' ', 2)[-1]}",
            bytes=path.stat().st_size,
        )
        self.name = meta(model, "general.name")
        file_type = meta(model, "general.file_type")
        self._lora_dtype = lora_dtype(int(file_type) if file_type and file_type.isdigit() else None)
        self.adapters.clear()
        self.active = None
        return self.model_info

    def _special_text(self, which: str) -> str:
        tok = getattr(llama_cpp, f"llama_vocab_{which}")(self.vocab)
        return self._piece_bytes(tok, special=True).decode("utf-8", "replace") if tok >= 0 else ""

    def _free(self) -> None:
        self._drop_merged(wait=True)
        self._tensors = None
        for adapter, _ in self._lora.values():
            llama_cpp.llama_adapter_lora_free(adapter)
        self._lora.clear()
        if self.ctx:
            llama_cpp.llama_free(self.ctx)
        if self.model:
            llama_cpp.llama_model_free(self.model)
        self.ctx = self.model = self.vocab = None
        self._applied, self._ctx_loras, self._cache_owner, self._cache = (), (), None, []

    def __del__(self):
        try:
            self._free()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    @property
    def context_length(self) -> int:
        return llama_cpp.llama_n_ctx(self.ctx) if self.ctx else 4096

    # -- adapters -----------------------------------------------------------------------
    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        return dict(self._shapes)

    _unchecked_facts = ("max_position_embeddings", "intermediate_size")  # the GGUF may not record it

    def _check_base(self, weights: LoraWeights, where: str, force: bool) -> str | None:
        made_here = weights.base_model and Path(weights.base_model).expanduser().resolve() == self.model_info.path
        return None if made_here else check_base_model(weights, self._identity(), where, force)

    def _add_folder(self, name: str, folder: Path, weights: LoraWeights) -> AdapterInfo:
        fp = self.model_info.fingerprint
        gguf_file, _ = cached_gguf_lora(folder, weights, self.model_info.model_type, fp["num_attention_heads"],
                                        fp["num_key_value_heads"], fp["num_hidden_layers"],
                                        paths.home() / "cache" / "gguf-lora", self._lora_dtype)
        return self._add(name, folder, weights, gguf_file)

    def _identity(self) -> ModelInfo:
        """The loaded model as check_base_model sees it: a hub repo id when the user gave one, else
        the GGUF's own `general.name` ("Qwen2.5 1.5B Instruct" -> Qwen2.5-1.5B-Instruct)."""
        info = self.model_info
        if looks_like_repo_id(info.ref) or not self.name:
            return info
        return ModelInfo(ref=self.name.replace(" ", "-"), path=None, model_type=info.model_type,
                         fingerprint=info.fingerprint)

    def add_weights(self, name: str, weights: LoraWeights, folder: Path | None = None) -> AdapterInfo:
        """Add adapter weights already in memory (written as a GGUF LoRA in the cache folder)."""
        import tempfile

        from app.engine.adapter_write import write_mlx

        self.require_model()
        self._check(weights, repr(name))
        with tempfile.TemporaryDirectory(prefix="loradesk-lora-") as tmp:
            src = write_mlx(weights, Path(tmp) / "adapter")
            info = self.add_adapter(name, src, force=True)  # just trained on this model
        info.path = folder or Path(".")
        return info

    def _add(self, name: str, folder: Path, weights: LoraWeights, gguf_file: Path) -> AdapterInfo:
        last_errors.clear()
        adapter = llama_cpp.llama_adapter_lora_init(self.model, str(gguf_file).encode())
        if not adapter:
            raise AdapterError(f"llama.cpp could not load adapter {name!r} ({gguf_file}){why()}; it does not fit "
                               f"the loaded model ({self.model_info.ref})")
        old = self._lora.get(name)
        self._lora[name] = (adapter, gguf_file)
        if old is not None:  # replaced: an active adapter stays active, with the new weights
            self._drop_merged_with(name)
            if any(n == name for n, _ in self._applied):
                self._set(self._applied, force=True)
            llama_cpp.llama_adapter_lora_free(old[0])
        self.adapters[name] = AdapterInfo(
            name=name, path=folder, format=weights.format, rank=weights.rank, scale=weights.scale,
            modules=len(weights.modules), bytes=weights.nbytes(), base_model=weights.base_model,
            metadata={**weights.metadata, "gguf_lora": str(gguf_file)},
        )
        return self.adapters[name]

    def _drop(self, name: str) -> None:
        self._drop_merged_with(name)
        if any(n == name for n, _ in self._applied):
            self._set(())  # never free an adapter the context still uses
        adapter, _ = self._lora.pop(name, (None, None))
        if adapter:
            llama_cpp.llama_adapter_lora_free(adapter)

    def _route(self, name: str | None) -> None:
        self._set(() if name is None else ((name, 1.0),))

    def _route_mix(self, pairs) -> None:
        # llama.cpp scales each adapter's own delta: y += scale * (alpha / r) * B A x, per adapter.
        self._set(tuple(pairs))

    def _set(self, pairs: tuple, force: bool = False) -> None:
        """Point the context at these (adapter, scale) pairs: one llama_set_adapters_lora call.
        A different set makes the KV cache stale; _prepare_cache sees that from _cache_owner.
        While a merged copy is swapped in, the context has no LoRA, and _sync puts the base back
        before the next decode (so a switch stays a few field writes away from instant)."""
        if pairs == self._applied and not force:
            return
        if pairs and self._merged is not None and self._merged.key != pairs:
            self._drop_merged_next = True  # another adapter set: at most one copy, the newest use
        self._since = time.monotonic()
        if self._merged is not None and self._merged.applied:
            self._applied = pairs  # the LoRA set is given to the context in _sync
            if force:
                self._cache_owner = None
            return
        self._ctx_set(pairs)
        self._applied = pairs
        if force:
            self._cache_owner = None

    def _ctx_set(self, pairs: tuple) -> None:
        n = len(pairs)
        handles = (llama_cpp.llama_adapter_lora_p_ctypes * n)(*(self._lora[a][0] for a, _ in pairs)) if n else None
        scales = (ctypes.c_float * n)(*(s for _, s in pairs)) if n else None
        if llama_cpp.llama_set_adapters_lora(self.ctx, handles, n, scales) != 0:
            raise AdapterError(f"llama.cpp refused the adapter set {[a for a, _ in pairs]}")
        self._ctx_loras = pairs

    # -- the merged copy --------------------------------------------------------------------
    _drop_merged_next = False
    _merged_held = False  # use_merged(False): keep the copy, decode with the resident LoRA

    def use_merged(self, on: bool) -> None:
        """Whether a built copy is swapped in (the benchmark compares both on one engine)."""
        with self._lock:
            self._merged_held = not on

    def _owner(self) -> tuple:
        """What filled the KV cache: the adapter set, and whether through its merged copy (whose
        rounding differs slightly from base + LoRA)."""
        return self._applied, bool(self._merged is not None and self._merged.applied)

    def _sync(self) -> None:
        """Before a decode: swap the merged copy in or out to match the active adapter set, give the
        context the LoRA set it needs, and start a build when the set has been active long enough."""
        built, self._built = self._built, None
        if built is not None:
            if built.key == self._applied and self._merged is None:
                self._merged = built
            else:
                built.free()
        m = self._merged
        if m is not None:
            pressure = _available_memory() < self.merge_min_free
            if pressure:
                self.merge_note = f"dropped: less than {self.merge_min_free // 2**20} MB of memory free"
            if self._drop_merged_next or pressure:
                self._drop_merged()
            elif m.key == self._applied and not self._merged_held:
                m.apply()
            else:
                m.restore()
        self._drop_merged_next = False
        want = () if self._merged is not None and self._merged.applied else self._applied
        if want != self._ctx_loras:
            self._ctx_set(want)
        self._maybe_build()

    def _maybe_build(self) -> None:
        if (self.merge_after is None or self._merged_held or not self._applied or self._tensors == {}
                or (self._merged is not None and self._merged.key == self._applied)
                or (self._building is not None and self._building[0] == self._applied)
                or time.monotonic() - self._since < self.merge_after):
            return
        if _available_memory() < 2 * self.merge_min_free:
            self.merge_note = f"not built: less than {2 * self.merge_min_free // 2**20} MB of memory free"
            return
        if self._tensors is None:
            try:
                self._tensors = merging.tensor_table(self.model)
            except merging.MergeUnavailable as e:
                self._tensors, self.merge_note = {}, f"off: {e}"
                return
        if self._building is not None:
            self._building[1].set()
        key, cancel = self._applied, threading.Event()
        loras = [(self._lora[name][1], scale) for name, scale in key]
        thread = threading.Thread(target=self._build, args=(key, loras, cancel), name="loradesk-merge", daemon=True)
        self._building = (key, cancel, thread)
        self.merge_note = f"building for {_label(key)}"
        thread.start()

    def _build(self, key: tuple, loras: list, cancel: threading.Event) -> None:
        """The build thread: numpy on the GGUF files, then hands the copy to _sync."""
        start = time.perf_counter()
        copy = None
        try:
            merged = merging.build(self.model_info.path, loras, cancel)
            if merged and not cancel.is_set():
                copy = merging.assemble(key, self._tensors, merged)
        except Exception as e:  # noqa: BLE001 - a failed build leaves the resident LoRA in use
            self.merge_note = f"failed for {_label(key)}: {e}"
        if copy is not None and cancel.is_set():
            copy.free()
        elif copy is not None:
            copy.seconds = time.perf_counter() - start
            self.merge_note = f"ready for {_label(key)} ({copy.nbytes / 2**20:.0f} MB, built in {copy.seconds:.1f} s)"
            self._built = copy  # before _building clears, so no second build starts in between
        building = self._building
        if building is not None and building[0] == key and building[1] is cancel:
            self._building = None

    def merge_now(self, timeout: float | None = None) -> merging.MergedCopy | None:
        """Build the active adapter set's merged copy now and swap it in (the benchmark, tests)."""
        with self._lock:
            after, held = self.merge_after, self._merged_held
            self.merge_after, self._merged_held = 0.0, False
            try:
                self._sync()
            finally:
                self.merge_after, self._merged_held = after, held
            building = self._building
        if building is not None:
            building[2].join(timeout)
        with self._lock:
            self._sync()
            return self._merged

    def _drop_merged(self, wait: bool = False) -> None:
        if self._building is not None:
            self._building[1].set()
            if wait:
                self._building[2].join()
        if self._merged is not None:
            self._merged.free()
            self._merged = None
        built, self._built = self._built, None
        if built is not None:
            built.free()

    def _drop_merged_with(self, name: str) -> None:
        if self._merged is not None and any(n == name for n, _ in self._merged.key):
            if self._merged.applied:
                self._ctx_set(())  # the adapter is about to change or go: decode on the base for now
                self._cache_owner = None
            self._drop_merged()

    @staticmethod
    def cpu_flags() -> str:
        """The CPU features llama.cpp uses here, and whether it repacks weights (bench speed)."""
        info = llama_cpp.llama_print_system_info().decode(errors="replace")
        have = [f.split(" = ")[0].strip() for f in info.split("|") if f.strip().endswith("= 1")]
        wanted = [f for f in have if f.startswith(("AVX", "AMX", "NEON", "SVE", "F16C", "FMA"))]
        return " ".join(wanted) + f"; weight repacking {extra_buffers()[1]}"

    def merge_status(self) -> str:
        """For `info` and the status bar: the merged copy's state and memory."""
        m = self._merged
        if m is not None:
            return (f"merged copy of {_label(m.key)}: {m.nbytes / 2**20:.0f} MB, "
                    + ("in use" if m.applied else "kept, not in use"))
        return self.merge_note or (f"merged copy: after an adapter is active {self.merge_after:g} s"
                                   if self.merge_after is not None else "off")

    # -- text ---------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        self.require_model()
        data = text.encode("utf-8")
        add_bos = llama_cpp.llama_vocab_get_add_bos(self.vocab)
        bos = self.template._bos if self.template else ""
        add_bos = add_bos and not (bos and text.startswith(bos))  # the chat template may write BOS itself
        n_max = len(data) + 8
        buf = (llama_cpp.llama_token * n_max)()
        n = llama_cpp.llama_tokenize(self.vocab, data, len(data), buf, n_max, add_bos, True)
        if n < 0:  # buffer too small: -n is the count needed
            buf = (llama_cpp.llama_token * -n)()
            n = llama_cpp.llama_tokenize(self.vocab, data, len(data), buf, -n, add_bos, True)
        return list(buf[:n])

    def _piece_bytes(self, token: int, special: bool = False) -> bytes:
        buf = self._piece
        n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        return buf.raw[:n]

    def decode(self, tokens) -> str:
        """Text of `tokens`, control tokens written out (as transformers' decode does)."""
        return b"".join(self._piece_bytes(t, special=True) for t in tokens).decode("utf-8", "replace")

    def chat_prompt(self, messages: list[dict]) -> str:
        self.require_model()
        return chat_prompt(self.template, messages)

    # -- the KV cache ---------------------------------------------------------------------
    def _prepare_cache(self, tokens: list[int]) -> int:
        """Keep the cached prefix of `tokens` computed under the current adapter set (at most all but
        the last token, whose logits are needed); clear the rest. Returns how many are kept."""
        self._sync()
        mem = llama_cpp.llama_get_memory(self.ctx)
        keep = 0
        if self._cache_owner == self._owner():
            limit = min(len(self._cache), len(tokens) - 1)
            while keep < limit and self._cache[keep] == tokens[keep]:
                keep += 1
        if keep == 0 or not llama_cpp.llama_memory_seq_rm(mem, -1, keep, -1):
            llama_cpp.llama_memory_clear(mem, True)
            keep = 0
        self._cache = self._cache[:keep]
        self._cache_owner = self._owner()
        return keep

    def _decode(self, tokens: list[int]) -> None:
        """Feed tokens through the model after the cache; logits for the last one only."""
        if len(self._cache) + len(tokens) > self.context_length:
            raise EngineError(f"the context is full ({self.context_length} tokens); start a new answer "
                              "or set LORADESK_CTX higher")
        if len(tokens) == 1:
            self._one[0] = tokens[0]
            arr = self._one
        else:
            arr = (llama_cpp.llama_token * len(tokens))(*tokens)
        rc = llama_cpp.llama_decode(self.ctx, llama_cpp.llama_batch_get_one(arr, len(tokens)))
        if rc != 0:
            self._cache_owner = None  # unknown state: the next call starts from an empty cache
            raise EngineError(f"llama.cpp could not decode ({rc}): the context ({self.context_length} tokens) "
                              "may be full")
        self._cache += tokens

    def _logits(self, i: int = -1) -> np.ndarray:
        n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        ptr = llama_cpp.llama_get_logits_ith(self.ctx, i)
        return np.ctypeslib.as_array(ptr, shape=(n_vocab,))

    def _prefill(self, tokens: list[int], cancel=None) -> bool:
        """Read the prompt after its reusable prefix in steps of about a second (at most BATCH
        tokens, llama.cpp's batch size), checking `cancel` before each; False if cancelled."""
        keep = self._prepare_cache(tokens)
        for lo, hi in prefill_spans(len(tokens) - keep, min(BATCH, self.prefill_step_size)):
            if cancel is not None and cancel.is_set():
                return False
            self._decode(tokens[keep + lo:keep + hi])
        return True

    # -- generation -----------------------------------------------------------------------
    def _sampler(self, settings: GenerationSettings):
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        if settings.temperature <= 0:
            llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_greedy())
            return chain
        if settings.top_p < 1.0:
            llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_top_p(settings.top_p, 1))
        llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_temp(settings.temperature))
        seed = settings.seed if settings.seed is not None else time.time_ns() % 2**31
        llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_dist(seed))
        return chain

    def _stream_tokens(self, tokens: list[int], settings: GenerationSettings, cancel=None) -> Iterator[tuple[str, dict]]:
        import psutil

        proc = psutil.Process()
        start = time.perf_counter()
        if not self._prefill(tokens, cancel):
            yield "", {"prompt_tokens": len(tokens), "finish_reason": "cancelled"}
            return
        prompt_tps = len(tokens) / max(time.perf_counter() - start, 1e-9)
        sampler = self._sampler(settings)
        detok = _Detokenizer(lambda t: self._piece_bytes(t, special=True))
        peak = proc.memory_info().rss / 1e9
        t_first = None
        try:
            for n in range(1, settings.max_tokens + 1):
                if cancel is not None and cancel.is_set():
                    yield detok.flush(), {"prompt_tokens": len(tokens), "prompt_tps": prompt_tps,
                                          "generation_tokens": n - 1, "finish_reason": "cancelled"}
                    return
                token = llama_cpp.llama_sampler_sample(sampler, self.ctx, -1)
                now = time.perf_counter()
                if t_first is None:
                    t_first = now
                if n % 32 == 0:
                    peak = max(peak, proc.memory_info().rss / 1e9)
                stats = {"prompt_tokens": len(tokens), "prompt_tps": prompt_tps, "generation_tokens": n,
                         "generation_tps": decode_rate(n, t_first, now), "peak_memory": peak}
                if llama_cpp.llama_vocab_is_eog(self.vocab, token):
                    yield detok.flush(), {**stats, "finish_reason": "stop"}
                    return
                piece = detok.add(token)
                if n == settings.max_tokens:
                    yield piece + detok.flush(), {**stats, "finish_reason": "length"}
                    return
                yield piece, stats
                self._decode([token])
        finally:
            llama_cpp.llama_sampler_free(sampler)

    def loglikelihood(self, context: str, continuation: str) -> tuple[float, bool]:
        self.require_model()
        ctx, cont = split_for_loglikelihood(self.encode, context, continuation)
        with self._lock:
            # The context's cached prefix is reused (MathQA's options share it); the continuation
            # is read in one pass that keeps the logits of each of its positions.
            self._prefill(ctx)
            rows = [self._logprobs(self._logits(), cont[0])]
            rows += [self._logprobs(x, t) for x, t in zip(self._decode_all(cont[:-1]), cont[1:])]
        return float(sum(lp for lp, _ in rows)), all(g for _, g in rows)

    def _decode_all(self, tokens: list[int]) -> Iterator[np.ndarray]:
        """Feed tokens after the cache, yielding the logits at every one of them."""
        if len(self._cache) + len(tokens) > self.context_length:
            raise EngineError(f"the input does not fit the context ({self.context_length} tokens)")
        batch = llama_cpp.llama_batch_init(BATCH, 0, 1)
        try:
            for i in range(0, len(tokens), BATCH):
                chunk = tokens[i:i + BATCH]
                batch.n_tokens = len(chunk)
                for j, tok in enumerate(chunk):
                    batch.token[j], batch.pos[j], batch.n_seq_id[j] = tok, len(self._cache) + j, 1
                    batch.seq_id[j][0], batch.logits[j] = 0, True
                if llama_cpp.llama_decode(self.ctx, batch) != 0:
                    self._cache_owner = None
                    raise EngineError("llama.cpp could not decode the input")
                self._cache += chunk
                for j in range(len(chunk)):
                    yield self._logits(j)
        finally:
            llama_cpp.llama_batch_free(batch)

    @staticmethod
    def _logprobs(logits: np.ndarray, target: int) -> tuple[float, bool]:
        x = logits.astype(np.float64)
        m = x.max()
        lse = m + np.log(np.exp(x - m).sum())
        return float(x[target] - lse), int(x.argmax()) == target

    def next_token_logits(self, text: str) -> np.ndarray:
        """Logits for the token after `text` (float32 copy), for parity checks."""
        tokens = self.encode(text)
        with self._lock:
            self._prefill(tokens)
            return self._logits().copy()

    def memory_bytes(self) -> int:
        """The model's tensors, the resident adapters' GGUF tensors and the context's state (KV)."""
        if not self.model:
            return 0
        adapters = sum(f.stat().st_size for _, f in self._lora.values() if f.exists())
        merged = self._merged.nbytes if self._merged is not None else 0
        return (int(llama_cpp.llama_model_size(self.model)) + adapters + merged
                + int(llama_cpp.llama_state_get_size(self.ctx)))


def merge_after() -> float | None:
    """LORADESK_MERGE: seconds an adapter set stays active before its merged copy is built
    (default 5), or "off"."""
    value = os.environ.get("LORADESK_MERGE", "5").strip().lower()
    if value in ("off", "no", "false", "never"):
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        raise EngineError(f"LORADESK_MERGE takes seconds or 'off', not {value!r}") from None


def _available_memory() -> int:
    import psutil

    return psutil.virtual_memory().available


def _label(key: tuple) -> str:
    return "+".join(name if scale == 1.0 else f"{name}:{scale:g}" for name, scale in key)
