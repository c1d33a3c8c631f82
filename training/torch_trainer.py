"""LoRA training with transformers + PEFT (`LoraConfig`, `get_peft_model`) and a plain loop.

The loop mirrors mlx-lm's tuner so both engines train the same way: Adam, loss on the answer tokens
only (`mask_prompt`), batches shuffled once per epoch with a seeded permutation, validation before
the first step, every `eval_every` steps and at the end. Checkpoints hold the adapter, the optimizer
state (as safetensors, no pickle) and the step; a resumed run skips the batches it trained on and
continues the learning-rate schedule. Optional gradient checkpointing trades compute for memory.
"""
from __future__ import annotations

import json
import math
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from training.checkpoints import TrainingCancelled

OPTIMIZER = "optimizer.safetensors"


def tokenize(tokenizer, messages: list[dict], mask_prompt: bool, max_len: int) -> tuple[list[int], int]:
    """(token ids, offset of the first token that carries loss), as mlx-lm's ChatDataset does."""
    ids = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False)
    offset = 0
    if mask_prompt:
        offset = len(tokenizer.apply_chat_template(messages[:-1], tokenize=True, add_generation_prompt=True,
                                                   return_dict=False))
    return list(ids)[:max_len], offset


GROUP = 16  # batches per length group: long enough to sort, short enough to stay random


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, lengths: list[int] | None = None) -> list[list[int]]:
    """One epoch's index batches from a seeded permutation. With `lengths`, each run of GROUP
    batches is sorted by length before it is cut (length-grouped batches: little padding), and the
    batches are then shuffled, so the order stays random while each batch holds similar lengths."""
    per_epoch = max(1, n // batch_size)
    rng = np.random.default_rng(seed + epoch)
    order = rng.permutation(n)[:per_epoch * batch_size].tolist() if n >= batch_size else rng.permutation(n).tolist()
    if lengths is not None:
        span = GROUP * batch_size
        order = [i for g in range(0, len(order), span)
                 for i in sorted(order[g:g + span], key=lambda i: -lengths[i])]
    out = [order[i * batch_size:(i + 1) * batch_size] for i in range(per_epoch)]
    if lengths is not None:
        out = [out[i] for i in rng.permutation(len(out))]
    return out


def batches(n: int, batch_size: int, seed: int, skip: int, lengths: list[int] | None = None):
    """Index batches forever, epoch after epoch; the first `skip` are skipped (a resumed run)."""
    per_epoch = max(1, n // batch_size)
    epoch, done = skip // per_epoch, (skip // per_epoch) * per_epoch
    while True:
        for b in epoch_batches(n, batch_size, seed, epoch, lengths):
            if done >= skip:
                yield b
            done += 1
        epoch += 1


def answer_loss(model, input_ids, attention_mask, labels) -> torch.Tensor:
    """The causal-LM loss of a PEFT model, with the vocabulary projection computed only where a
    label is: HF's `labels=` path projects every position (prompt and padding too) onto the whole
    vocabulary, a (batch, length, vocab) float tensor: for Qwen2.5 (152k words) that is over a
    quarter of the forward work of a 0.5B model and most of its activation memory."""
    base = model.get_base_model()
    hidden = base.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    targets = labels[:, 1:]
    keep = targets != -100
    if not keep.any():  # nothing to learn from in this batch (HF's path gives NaN here)
        return hidden.sum() * 0.0
    logits = base.lm_head(hidden[:, :-1][keep]).float()
    cap = getattr(base.config, "final_logit_softcapping", None)
    if cap:  # Gemma 2
        logits = torch.tanh(logits / cap) * cap
    return torch.nn.functional.cross_entropy(logits, targets[keep])


def collate(items: list[tuple[list[int], int]], pad_id: int):
    """Right-padded input ids, attention mask and labels (-100 on padding and on the prompt)."""
    width = max(len(ids) for ids, _ in items)
    input_ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    labels = torch.full((len(items), width), -100, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for row, (ids, offset) in enumerate(items):
        t = torch.tensor(ids, dtype=torch.long)
        input_ids[row, :len(ids)] = t
        mask[row, :len(ids)] = 1
        labels[row, offset:len(ids)] = t[offset:]
    return input_ids, mask, labels


def peak_memory_gb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 1e9
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux, bytes on macOS
    return kb / (1e9 if sys.platform == "darwin" else 1e6)


class TorchTrainer:
    format = "peft"

    def __init__(self, config, model_path: Path):
        self.config, self.model_path = config, Path(model_path)
        self.model = self.tokenizer = None
        self.device = "cuda" if torch.cuda.is_available() else "cpu"

    def load(self):
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM, AutoTokenizer

        c = self.config
        if c.threads:
            torch.set_num_threads(c.threads)
        torch.manual_seed(c.seed)
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.model_path))
        # float32 on CPU: bf16 matmuls are slow on most CPUs and fp32 keeps small-batch training stable
        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        base = AutoModelForCausalLM.from_pretrained(str(self.model_path), dtype=dtype).to(self.device)
        n_layers = base.config.num_hidden_layers
        if c.num_layers > n_layers:
            raise ValueError(f"num_layers {c.num_layers} > the model's {n_layers} layers")
        present = {n.rsplit(".", 1)[-1] for n, m in base.named_modules() if isinstance(m, torch.nn.Linear)}
        targets = [t for t in c.target_modules if t in present]
        if not targets:
            raise ValueError(f"none of the target modules {list(c.target_modules)} is in this model; "
                             f"it has {sorted(present)}")
        lora = LoraConfig(
            r=c.rank, lora_alpha=c.alpha, lora_dropout=c.dropout, target_modules=targets,
            layers_to_transform=list(range(n_layers - c.num_layers, n_layers)) if c.num_layers > 0 else None,
            use_dora=c.fine_tune_type == "dora", task_type="CAUSAL_LM",
        )
        self.model = get_peft_model(base, lora)
        if c.grad_checkpoint:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            self.model.enable_input_require_grads()
        return self.tokenizer

    def _lr(self, step: int, total: int) -> float:
        """Learning rate for optimizer step `step` (0-based): linear warmup, then the schedule."""
        c = self.config
        if step < c.warmup_steps:
            return c.learning_rate * (step + 1) / c.warmup_steps
        t = (step - c.warmup_steps) / max(1, total - c.warmup_steps)
        if c.lr_schedule == "cosine":
            return c.learning_rate * 0.5 * (1 + math.cos(math.pi * t))
        if c.lr_schedule == "linear":
            return c.learning_rate * (1 - t)
        return c.learning_rate

    def _loss(self, items) -> tuple[torch.Tensor, int]:
        ids, mask, labels = (t.to(self.device) for t in collate(items, self.tokenizer.pad_token_id or 0))
        ntoks = int((labels[:, 1:] != -100).sum())
        return answer_loss(self.model, ids, mask, labels), ntoks

    @torch.no_grad()
    def _validate(self, valid) -> float:
        c = self.config
        self.model.eval()
        total, ntoks = 0.0, 0
        n = len(valid) // c.batch_size
        for b in range(n if c.val_batches == -1 else min(n, c.val_batches)):
            loss, k = self._loss(valid[b * c.batch_size:(b + 1) * c.batch_size])
            total, ntoks = total + float(loss) * k, ntoks + k
        self.model.train()
        return total / max(ntoks, 1)

    def fit(self, train, valid, total: int, start, run, progress, cancel) -> None:
        c = self.config
        tok = lambda rows: [tokenize(self.tokenizer, m, c.mask_prompt, c.max_seq_length) for m in rows]  # noqa: E731
        train_items, valid_items = tok(train), tok(valid) if len(valid) >= c.batch_size else []
        params = [p for p in self.model.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=c.learning_rate)
        first = 0
        if start is not None:
            self._load_checkpoint(start.path, opt)
            first = start.step
        self.model.train()
        lengths = [len(ids) for ids, _ in train_items]
        order = batches(len(train_items), c.batch_size, c.seed, first, lengths)
        # the examples the run's batches hold, resumed or not (loradesk.json records their rows)
        every = batches(len(train_items), c.batch_size, c.seed, 0, lengths)
        self.trained = sorted({i for _, b in zip(range(total), every) for i in b})
        window_loss, window_steps, window_tokens, window_secs = 0.0, 0, 0, 0.0
        for step in range(first, total):
            if valid_items and (step == first or (step + 1) % c.eval_every == 0 or step + 1 == total):
                progress.val(step, self._validate(valid_items))
            tic = time.perf_counter()
            torch.manual_seed(c.seed * 1_000_003 + step)  # dropout masks tied to the step: resumable
            for g in opt.param_groups:
                g["lr"] = self._lr(step, total)
            loss, ntoks = self._loss([train_items[i] for i in next(order)])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            window_loss += loss.item()
            window_steps, window_tokens = window_steps + 1, window_tokens + ntoks
            window_secs += time.perf_counter() - tic
            done = step + 1
            if done % c.report_every == 0 or done == total:
                progress.train(done, window_loss / window_steps, window_steps, window_tokens, window_secs,
                               learning_rate=opt.param_groups[0]["lr"], peak_memory_gb=peak_memory_gb())
                window_loss, window_steps, window_tokens, window_secs = 0.0, 0, 0, 0.0
                stop = cancel is not None and cancel.is_set()
                if done < total and (stop or done % c.save_every == 0):
                    self._save_checkpoint(run, done, opt, {"progress": progress.summary()})
                    progress.event(done, "checkpoint", f"checkpoint at step {done}")
                if stop and done < total:
                    raise TrainingCancelled(run, done, total)

    def _save_checkpoint(self, run, step: int, opt, state: dict) -> None:
        def write(folder: Path):
            self.model.save_pretrained(str(folder), safe_serialization=True)
            sd = opt.state_dict()
            tensors = {f"state.{i}.{k}": v.detach().cpu().contiguous() for i, s in sd["state"].items()
                       for k, v in s.items() if torch.is_tensor(v)}
            save_file(tensors, str(folder / OPTIMIZER))
            (folder / "optimizer_groups.json").write_text(json.dumps(sd["param_groups"]))

        run.save_checkpoint(step, write, state)

    def _load_checkpoint(self, folder: Path, opt) -> None:
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(self.model, load_file(str(folder / "adapter_model.safetensors"), device=self.device))
        state: dict[int, dict] = {}
        for key, v in load_file(str(folder / OPTIMIZER), device=self.device).items():
            _, i, name = key.split(".", 2)
            state.setdefault(int(i), {})[name] = v.cpu() if name == "step" else v
        opt.load_state_dict({"state": state, "param_groups": json.loads((folder / "optimizer_groups.json").read_text())})

    def export(self, folder: Path) -> None:
        """PEFT's folder: adapter_model.safetensors + adapter_config.json."""
        self.model.save_pretrained(str(folder), safe_serialization=True)
        (folder / "README.md").unlink(missing_ok=True)  # PEFT's blank model card; loradesk.json describes it
        cfg_file = folder / "adapter_config.json"
        cfg = json.loads(cfg_file.read_text())
        cfg["base_model_name_or_path"] = str(self.model_path)
        cfg_file.write_text(json.dumps(cfg, indent=2))

    def peak_memory_gb(self) -> float:
        return peak_memory_gb()

    def close(self) -> None:
        self.model = None
