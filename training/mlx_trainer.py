"""LoRA training with mlx-lm's tuner: `linear_to_lora_layers` on the (quantized) base, i.e. QLoRA
on a 4-bit model, optionally DoRA, and `mlx_lm.tuner.trainer.train` for the loop.

Everything MLX runs on the process's MLX thread (app.engine.mlx_thread). What mlx-lm's loop does
not do, this module adds around it without changing its step:
- progress, cancel and checkpoints happen in its TrainingCallback (called after each reported step,
  once the step's arrays are evaluated), so a checkpoint always holds a consistent state;
- a checkpoint stores adapter weights AND the optimizer state (Adam moments, step count, hence the
  learning-rate schedule position) as safetensors, plus the step;
- batches come from mlx-lm's own `iterate_batches`, seeded per epoch, so a resumed run skips
  exactly the batches it already trained on.
"""
from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import mlx.optimizers as optim
from mlx.utils import tree_flatten, tree_unflatten
from mlx_lm.tuner import trainer as tuner
from mlx_lm.tuner.datasets import CacheDataset, ChatDataset
from mlx_lm.tuner.utils import build_schedule, linear_to_lora_layers

from app.engine import mlx_thread
from training.checkpoints import TrainingCancelled

WEIGHTS = "adapters.safetensors"
OPTIMIZER = "optimizer.safetensors"


class _QuietUI:
    """Stands in for mlx-lm's rich TrainUI: progress goes to our callback, not to stdout."""

    def __init__(self, *a, **k):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def advance(self):
        pass

    def report_train(self, *a):
        pass

    def report_val(self, *a):
        pass

    def report_save(self, *a):
        pass

    def val_task(self, total):
        from contextlib import nullcontext

        return nullcontext(lambda: None)


def lora_keys(model, targets: tuple[str, ...]) -> list[str]:
    """mlx-lm's per-block keys ('self_attn.q_proj') of the linear layers named in `targets`."""
    keys = sorted({n for n, m in model.layers[0].named_modules() if n.split(".")[-1] in targets and hasattr(m, "weight")})
    if not keys:
        names = sorted({n.split(".")[-1] for n, _ in model.layers[0].named_modules() if n})
        raise ValueError(f"none of the target modules {list(targets)} is in this model; it has {names}")
    return keys


def seeded_batches(seed: int, skip: int):
    """mlx-lm's iterate_batches with one seeded shuffle per epoch, skipping `skip` training
    batches (those a resumed run already trained on). Validation batches are mlx-lm's as is."""

    def iterate(dataset, batch_size, max_seq_length, loop=False, seed_=None, comm_group=None, **kw):
        if not loop:
            yield from tuner.iterate_batches(dataset=dataset, batch_size=batch_size, max_seq_length=max_seq_length,
                                             loop=False, comm_group=comm_group)
            return
        per_epoch = max(1, len(dataset) // batch_size)
        epoch, n = skip // per_epoch, (skip // per_epoch) * per_epoch
        while True:
            for batch in tuner.iterate_batches(dataset=dataset, batch_size=batch_size, max_seq_length=max_seq_length,
                                               loop=False, seed=seed + epoch, comm_group=comm_group):
                if n >= skip:
                    yield batch
                n += 1
            epoch += 1

    return iterate


class MLXTrainer:
    format = "mlx"

    def __init__(self, config, model_path: Path):
        self.config, self.model_path = config, Path(model_path)
        self.model = self.tokenizer = None
        self.keys: list[str] = []

    # -- everything below runs on the MLX thread ------------------------------------------------

    def load(self):
        def run():
            from mlx_lm import load

            self.model, self.tokenizer = load(str(self.model_path))
            c = self.config
            mx.random.seed(c.seed)
            self.model.freeze()
            n_layers = len(self.model.layers)
            if c.num_layers > n_layers:
                raise ValueError(f"num_layers {c.num_layers} > the model's {n_layers} layers")
            self.keys = lora_keys(self.model, c.target_modules)
            linear_to_lora_layers(self.model, c.num_layers,
                                  {"rank": c.rank, "scale": c.scale, "dropout": c.dropout, "keys": self.keys},
                                  use_dora=c.fine_tune_type == "dora")
            return self.tokenizer

        return mlx_thread.call(run)

    def _optimizer(self, total: int):
        c = self.config
        if c.lr_schedule == "constant" and not c.warmup_steps:
            lr = c.learning_rate
        else:
            decay = max(1, total - c.warmup_steps)
            name, args = {"constant": ("linear_schedule", [c.learning_rate, c.learning_rate, decay]),
                          "cosine": ("cosine_decay", [c.learning_rate, decay]),
                          "linear": ("linear_schedule", [c.learning_rate, 0.0, decay])}[c.lr_schedule]
            lr = build_schedule({"name": name, "arguments": args, "warmup": c.warmup_steps})
        return optim.Adam(learning_rate=lr)

    def fit(self, train, valid, total: int, start, run, progress, cancel) -> None:
        mlx_thread.call(self._fit, train, valid, total, start, run, progress, cancel)

    def _fit(self, train, valid, total, start, run, progress, cancel):
        c, model = self.config, self.model
        opt = self._optimizer(total)
        opt.init(model.trainable_parameters())
        first = 0
        if start is not None:
            model.load_weights(str(start.path / WEIGHTS), strict=False)
            opt.state = tree_unflatten(list(mx.load(str(start.path / OPTIMIZER)).items()))
            first = start.step
        mx.random.seed(c.seed + first)  # dropout masks continue from a seed tied to the step
        make = lambda rows: CacheDataset(ChatDataset([{"messages": m} for m in rows], self.tokenizer,  # noqa: E731
                                                     mask_prompt=c.mask_prompt))
        train_set = make(train)
        valid_set = make(valid) if len(valid) >= c.batch_size else None
        args = tuner.TrainingArgs(
            batch_size=c.batch_size, iters=total - first, val_batches=c.val_batches,
            steps_per_report=c.report_every, steps_per_eval=c.eval_every,
            steps_per_save=total + 1,  # checkpoints are ours (with optimizer state), see _Callback
            max_seq_length=c.max_seq_length, adapter_file=str(run.path / WEIGHTS),
            grad_checkpoint=c.grad_checkpoint,
        )
        callback = _Callback(self, opt, first, total, run, progress, cancel)
        saved_ui, tuner.TrainUI = tuner.TrainUI, _QuietUI
        try:
            tuner.train(model=model, optimizer=opt, train_dataset=train_set, val_dataset=valid_set,
                        args=args, iterate_batches=seeded_batches(c.seed, first), training_callback=callback)
        finally:
            tuner.TrainUI = saved_ui

    def save_checkpoint(self, run, step: int, opt, state: dict) -> None:
        def write(folder: Path):
            mx.save_safetensors(str(folder / WEIGHTS), dict(tree_flatten(self.model.trainable_parameters())))
            mx.save_safetensors(str(folder / OPTIMIZER), dict(tree_flatten(opt.state)))

        run.save_checkpoint(step, write, state)

    def export(self, folder: Path) -> None:
        """mlx-lm's adapter folder: adapters.safetensors + adapter_config.json (`mlx_lm.load(...,
        adapter_path=folder)` and LoRA Desk's engines read it)."""

        def run():
            mx.save_safetensors(str(folder / WEIGHTS), dict(tree_flatten(self.model.trainable_parameters())))

        mlx_thread.call(run)
        c = self.config
        config = {
            "fine_tune_type": c.fine_tune_type,
            "num_layers": c.num_layers if c.num_layers > 0 else len(self.model.layers),
            "lora_parameters": {"rank": c.rank, "scale": c.scale, "dropout": c.dropout, "keys": self.keys},
            "model": str(self.model_path),
        }
        (folder / "adapter_config.json").write_text(json.dumps(config, indent=2))

    def peak_memory_gb(self) -> float:
        return mlx_thread.call(lambda: mx.get_peak_memory() / 1e9)

    def close(self) -> None:
        """Free the model on the MLX thread: arrays (and mlx-lm's compiled step) released later by the
        main thread at interpreter exit can abort the process (see app/engine/mlx_thread.py)."""

        def run():
            import gc

            self.model = None
            gc.collect()
            mx.synchronize()
            mx.clear_cache()

        mlx_thread.call(run)


class _Callback(tuner.TrainingCallback):
    """mlx-lm reports here after evaluated steps: progress, then checkpoint and cancel."""

    def __init__(self, trainer, opt, first, total, run, progress, cancel):
        self.t, self.opt, self.first, self.total = trainer, opt, first, total
        self.run, self.progress, self.cancel = run, progress, cancel
        self.prev_it, self.prev_tokens = 0, 0

    def on_val_loss_report(self, info):
        self.progress.val(self.first + info["iteration"], info["val_loss"])

    def on_train_loss_report(self, info):
        it, step = info["iteration"], self.first + info["iteration"]
        tokens = info["trained_tokens"] - self.prev_tokens
        seconds = tokens / info["tokens_per_second"] if info["tokens_per_second"] else 0.0
        self.progress.train(step, info["train_loss"], it - self.prev_it, tokens, seconds,
                            learning_rate=info["learning_rate"], peak_memory_gb=info["peak_memory"])
        self.prev_it, self.prev_tokens = it, info["trained_tokens"]
        stop = self.cancel is not None and self.cancel.is_set()
        if step < self.total and (stop or step % self.t.config.save_every == 0):
            self.t.save_checkpoint(self.run, step, self.opt, {"progress": self.progress.summary()})
            self.progress.event(step, "checkpoint", f"checkpoint at step {step}")
        if stop and step < self.total:
            raise TrainingCancelled(self.run, step, self.total)
