"""The torch trainer's faster loop computes what the plain one does: the same loss, every example
once per epoch, and the same batches after a resume."""
from __future__ import annotations

import pytest
import torch

from training.torch_trainer import answer_loss, batches, collate, epoch_batches


@pytest.mark.parametrize("arch", ["qwen2", "gemma2"])  # gemma2: final logit soft-capping
def test_answer_loss_equals_the_full_vocabulary_loss(arch, tiny_models):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(tiny_models[arch]), dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    g = torch.Generator().manual_seed(0)
    items = [(torch.randint(3, 200, (n,), generator=g).tolist(), off) for n, off in ((17, 5), (9, 3), (12, 11))]
    ids, mask, labels = collate(items, pad_id=0)
    model.eval()
    ours = answer_loss(model, ids, mask, labels)
    ref = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    assert torch.allclose(ours, ref, rtol=1e-5, atol=1e-6)
    ours.backward()
    grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    model.zero_grad()
    ref.backward()
    for a, b in zip(grads, [p.grad for p in model.parameters() if p.requires_grad]):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


def test_length_grouped_epochs_cover_every_example_once_with_little_padding():
    lengths = [(i * 37) % 300 + 20 for i in range(256)]
    plain = epoch_batches(256, 4, seed=3, epoch=0)
    grouped = epoch_batches(256, 4, seed=3, epoch=0, lengths=lengths)
    assert sorted(i for b in grouped for i in b) == list(range(256))
    assert grouped == epoch_batches(256, 4, seed=3, epoch=0, lengths=lengths)  # seeded
    assert grouped != epoch_batches(256, 4, seed=3, epoch=1, lengths=lengths)

    def padded(bs):
        return sum(len(b) * max(lengths[i] for i in b) for b in bs)

    assert padded(grouped) < 0.85 * padded(plain)
    # a resumed run continues with the very batches the first run would have trained on next
    full = batches(256, 4, 3, 0, lengths)
    first = [next(full) for _ in range(100)]
    resumed = batches(256, 4, 3, 70, lengths)
    assert [next(resumed) for _ in range(30)] == first[70:]
