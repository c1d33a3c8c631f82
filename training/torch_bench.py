"""`loradesk bench-train --engine torch`: the product's torch trainer against a plain transformers +
PEFT loop, on the same model, examples, LoRA settings and seeds, measured in one process, one run.

The plain loop is what a PEFT tutorial writes: random batches padded to their longest example,
`model(input_ids, attention_mask, labels).loss`. The product's loop differs only where it is
faster: length-grouped batches (`torch_trainer.epoch_batches`) and the vocabulary projection on
answer tokens only (`torch_trainer.answer_loss`). Both count the tokens that carry loss. The two
alternate in rounds (plain, ours, plain, ours) so a machine that slows down mid-run slows both; each
loop's first steps are left out of its figure (allocator warm-up). Both end with the validation
loss of the same held-out examples, computed the same (HF) way: the loss curves must agree.
"""
from __future__ import annotations

import statistics
import time

import torch

from training.torch_trainer import TorchTrainer, batches, collate, epoch_batches, tokenize

WARMUP = 2


class PlainTrainer(TorchTrainer):
    def _loss(self, items):
        ids, mask, labels = collate(items, self.tokenizer.pad_token_id or 0)
        return self.model(input_ids=ids, attention_mask=mask, labels=labels).loss, int((labels[:, 1:] != -100).sum())


def _plain_batches(n: int, batch_size: int, seed: int):
    epoch = 0
    while True:
        yield from epoch_batches(n, batch_size, seed, epoch)
        epoch += 1


@torch.no_grad()
def _valid_loss(trainer: TorchTrainer, valid, batch_size: int) -> float:
    total = ntoks = 0
    trainer.model.eval()
    for i in range(0, len(valid) - batch_size + 1, batch_size):
        loss, k = PlainTrainer._loss(trainer, valid[i:i + batch_size])
        total, ntoks = total + float(loss) * k, ntoks + k
    trainer.model.train()
    return total / max(1, ntoks)


def compare(config, model_path, train_msgs, valid_msgs, steps: int, rounds: int, say=print) -> dict:
    """Train both loops for `steps` steps each (in `rounds` alternating parts); tokens/s and losses."""
    runs = {}
    for name, cls in (("plain", PlainTrainer), ("loradesk", TorchTrainer)):
        t = cls(config, model_path)
        tok = t.load()
        items = [tokenize(tok, m, config.mask_prompt, config.max_seq_length) for m in train_msgs]
        order = (_plain_batches(len(items), config.batch_size, config.seed) if name == "plain" else
                 batches(len(items), config.batch_size, config.seed, 0, [len(i) for i, _ in items]))
        opt = torch.optim.Adam([p for p in t.model.parameters() if p.requires_grad], lr=config.learning_rate)
        t.model.train()
        runs[name] = {"trainer": t, "items": items, "order": order, "opt": opt, "step": 0,
                      "tokens": 0, "seconds": 0.0, "padded": 0, "losses": []}
    per_round = max(1, steps // rounds)
    for r in range(rounds):
        for name, run in runs.items():
            t, opt = run["trainer"], run["opt"]
            for _ in range(per_round):
                batch = [run["items"][i] for i in next(run["order"])]
                torch.manual_seed(config.seed * 1_000_003 + run["step"])
                tic = time.perf_counter()
                loss, ntoks = t._loss(batch)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                secs = time.perf_counter() - tic
                run["losses"].append(loss.item())
                if run["step"] >= WARMUP:
                    run["tokens"] += ntoks
                    run["seconds"] += secs
                    run["padded"] += len(batch) * max(len(i) for i, _ in batch)
                run["step"] += 1
            say(f"round {r + 1}/{rounds} {name}: {run['tokens'] / max(run['seconds'], 1e-9):.1f} tok/s so far, "
                f"last loss {run['losses'][-1]:.3f}")
    out = {"steps": per_round * rounds, "batch_size": config.batch_size, "rank": config.rank,
           "target_modules": list(config.target_modules), "threads": torch.get_num_threads()}
    for name, run in runs.items():
        t = run["trainer"]
        valid = [tokenize(t.tokenizer, m, config.mask_prompt, config.max_seq_length) for m in valid_msgs]
        tail = run["losses"][-min(10, len(run["losses"])):]
        out[name] = {"tokens_per_s": run["tokens"] / max(run["seconds"], 1e-9), "seconds": run["seconds"],
                     "loss_tokens": run["tokens"], "padded_tokens": run["padded"],
                     "first_loss": run["losses"][0], "last10_loss": statistics.fmean(tail),
                     "valid_loss": _valid_loss(t, valid, config.batch_size), "losses": run["losses"]}
        t.close()
    out["ratio"] = out["loradesk"]["tokens_per_s"] / out["plain"]["tokens_per_s"]
    return out
