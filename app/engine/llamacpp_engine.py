"""The llama.cpp engine (llama-cpp-python's C API): a GGUF base, 4-bit on CPU, for machines without
Apple Silicon or CUDA.

Every adapter is converted once to a GGUF LoRA (gguf_lora.py) and loaded with
`llama_adapter_lora_init`; all stay resident. A switch is one `llama_set_adapters_lora` call on the
context. The high-level `Llama` object holds one adapter and keys its prompt cache on tokens only,
so a switch there would reuse KV entries computed under another adapter (llama.cpp server #26207).

Here one context holds several sequences, each a KV slot filled under one adapter set
(llamacpp_slots.py): a prefix is reused only under the set that computed it, and switching never
clears another set's cache. Answers run side by side: the scheduler (batching.py) advances the
answers under one adapter set together in one `llama_decode` (llamacpp_batch.py), and the sets
take turns between steps.

When one adapter set is decoded alone for a while, a merged copy of the matrices it changes is
built in the background and swapped in: no LoRA in the graph (llamacpp_merged.py says when).
"""
from __future__ import annotations

import codecs
import ctypes
import os
import time
from pathlib import Path

import llama_cpp
import numpy as np

from app import paths
from app.engine.base import AdapterError, AdapterInfo, Engine, EngineError, ModelInfo
from app.engine.base_model import check_base_model, looks_like_repo_id
from app.engine.batching import BatchConfig, Scheduler, StepLock
from app.engine.gguf_lora import cached_gguf_lora, lora_dtype
from app.engine.llamacpp_answers import SlotAnswers
from app.engine.llamacpp_batch import Batch, piece_reader, step
from app.engine.llamacpp_merged import MergedCopies
from app.engine.llamacpp_setup import (BATCH, DEFAULT_CTX, context_params, default_threads, extra_buffers,
                                       init_backend, last_errors, meta, model_params, why)
from app.engine.llamacpp_slots import SlotTable
from app.engine.lora import LoraWeights
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


class LlamaCppEngine(SlotAnswers, MergedCopies, Engine):
    kind = "llamacpp"

    def __init__(self, n_ctx: int | None = None, threads: int | None = None, batch: BatchConfig | None = None):
        super().__init__()
        self._lock = StepLock()  # handed over between batch steps
        self.batch = batch or BatchConfig(max_batch=int(os.environ.get("LORADESK_BATCH", BatchConfig.max_batch)))
        init_backend()
        self.n_ctx_wanted = n_ctx or int(os.environ.get("LORADESK_CTX", DEFAULT_CTX))
        self.threads = threads or default_threads()
        self.model = None  # llama_model_p
        self.ctx = None  # llama_context_p
        self.vocab = None
        self.template: _ChatTemplate | None = None
        self._lora: dict[str, tuple[object, Path]] = {}  # name -> (llama_adapter_lora_p, GGUF file)
        self._init_merging()
        self._slots: SlotTable | None = None
        self._scheduler: Scheduler | None = None
        self._batch: Batch | None = None
        self._shapes: dict[str, tuple[int, int]] = {}
        self._lora_dtype = None  # the GGUF LoRA tensor type for the loaded base
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
        ctx = llama_cpp.llama_init_from_model(model, context_params(n_ctx, self.threads, self.batch.sequences))
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
        self._start_batching(fp["num_hidden_layers"], fp["num_key_value_heads"] * head_dim)
        self.adapters.clear()
        self.active = None
        return self.model_info

    def _start_batching(self, n_layer: int, kv_width: int) -> None:
        # K and V in f16 (the context's default cache types): 2 x 2 bytes per layer and KV channel.
        self._slots = SlotTable(self.ctx, self.batch.sequences, llama_cpp.llama_n_ctx(self.ctx), 4 * n_layer * kv_width)
        self._batch = Batch(BATCH)
        piece = piece_reader(self.vocab)  # the loop thread's own buffer
        self._new_detok = lambda: _Detokenizer(piece)
        self._scheduler = Scheduler(self._lock, self._admit, lambda group: step(self, group, self._batch),
                                    self._release, self.batch)

    def _special_text(self, which: str) -> str:
        tok = getattr(llama_cpp, f"llama_vocab_{which}")(self.vocab)
        return self._piece_bytes(tok, special=True).decode("utf-8", "replace") if tok >= 0 else ""

    def _free(self) -> None:
        self._drop_merged(wait=True)
        self._tensors = None
        if self._scheduler is not None:
            self._scheduler.close(EngineError("the model was unloaded while answering; load it again and ask again"))
        if self._batch is not None:
            self._batch.free()
        self._scheduler = self._slots = self._batch = None
        for adapter, _ in self._lora.values():
            llama_cpp.llama_adapter_lora_free(adapter)
        self._lora.clear()
        if self.ctx:
            llama_cpp.llama_free(self.ctx)
        if self.model:
            llama_cpp.llama_model_free(self.model)
        self.ctx = self.model = self.vocab = None
        self._applied, self._ctx_loras = (), ()

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
            self._forget(name, "replaced")
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
        self._forget(name, "removed")
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

    def _forget(self, name: str, how: str) -> None:
        """An adapter's weights change or go: the answers under it stop (the rest would come from
        other weights) and the caches it filled are dropped."""
        uses = lambda key: any(n == name for n, _ in key)  # noqa: E731
        self._scheduler.fail_where(uses, EngineError(f"adapter {name!r} was {how} during the answer; ask again"),
                                   waiting=how != "replaced")
        self._slots.forget(name)

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
        buf = ctypes.create_string_buffer(256)  # one per call: requests' threads call this at once
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

    def _logits(self, i: int = -1) -> np.ndarray:
        n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        ptr = llama_cpp.llama_get_logits_ith(self.ctx, i)
        return np.ctypeslib.as_array(ptr, shape=(n_vocab,))

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

    def loglikelihood(self, context: str, continuation: str) -> tuple[float, bool]:
        self.require_model()
        ctx, cont = split_for_loglikelihood(self.encode, context, continuation)
        with self._lock:
            # One pass over the context and the continuation but its last token, keeping the logits
            # from the context's last token on; the context's cached prefix is reused (MathQA's
            # options share it).
            kept, logits = self._read((ctx + cont)[:-1], every=True, reuse=len(ctx) - 1)
            rows = [self._logprobs(x, t) for x, t in zip(logits[len(ctx) - 1 - kept:], cont)]
        return float(sum(lp for lp, _ in rows)), all(g for _, g in rows)

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
            return self._read(tokens)[1][-1]

    def memory_bytes(self) -> int:
        """The model's tensors, the resident adapters' GGUF tensors and the context's state (KV)."""
        if not self.model:
            return 0
        adapters = sum(f.stat().st_size for _, f in self._lora.values() if f.exists())
        merged = self._merged.nbytes if self._merged is not None else 0
        return (int(llama_cpp.llama_model_size(self.model)) + adapters + merged
                + int(llama_cpp.llama_state_get_size(self.ctx)))

    @staticmethod
    def cpu_flags() -> str:
        """The CPU features llama.cpp uses here, and whether it repacks weights (bench speed)."""
        info = llama_cpp.llama_print_system_info().decode(errors="replace")
        have = [f.split(" = ")[0].strip() for f in info.split("|") if f.strip().endswith("= 1")]
        wanted = [f for f in have if f.startswith(("AVX", "AMX", "NEON", "SVE", "F16C", "FMA"))]
        return " ".join(wanted) + f"; weight repacking {extra_buffers()[1]}"
