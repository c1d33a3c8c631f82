"""Reference measurements for `loradesk bench speed --engine torch`: PEFT's own adapter handling on
the same model and adapters, beside the engine's figures in the same run.

- `peft_set_adapter_*`: `PeftModel.set_adapter` (walks every module on each call);
- `peft_load_adapter_ms`: `PeftModel.load_adapter` of one adapter folder (resident afterwards);
- `peft_hotswap_ms`: `peft.utils.hotswap.hotswap_adapter` (replaces one slot's weights in place);
- decode tokens/s of `PeftModel.generate` with the first adapter, alternating with the engine's.
"""
from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

from app.engine.adapter_format import read_adapter
from app.engine.adapter_write import write_peft
from app.engine.rates import percentile
from app.engine.torch_engine import pick_device, pick_dtype, upcast_adapters


def _ms(t0: int) -> float:
    return (time.perf_counter_ns() - t0) / 1e6


def _as_peft(folders: dict[str, Path], tmp: Path) -> dict[str, Path]:
    """PEFT-format copies of MLX-format folders (conversion is not part of the timed loads)."""
    out = {}
    for name, folder in folders.items():
        weights = read_adapter(folder)
        out[name] = Path(folder) if weights.format == "peft" else write_peft(weights, tmp / name)
    return out


@torch.inference_mode()
def _generate_seconds(model, ids: torch.Tensor, n: int) -> float:
    t0 = time.perf_counter()
    model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                   do_sample=False)
    return time.perf_counter() - t0


def _peft_decode_tps(model, ids: torch.Tensor, max_tokens: int) -> float:
    """Decode tokens/s of `generate`: (n - 1) tokens over the time past the first one."""
    first = _generate_seconds(model, ids, 1)
    full = _generate_seconds(model, ids, max_tokens)
    return (max_tokens - 1) / max(full - first, 1e-9)


def reference(model_path: Path, adapter_folders: dict[str, Path], prompt: str, max_tokens: int,
              engine_decode: Callable[[], float] | None = None, rounds: int = 3,
              switches: int = 200) -> dict:
    from peft import PeftModel
    from peft.utils.hotswap import hotswap_adapter
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_path = Path(model_path)
    device = pick_device()
    config = json.loads((model_path / "config.json").read_text())
    dtype = pick_dtype(config, device)
    base = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=dtype).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(model_path))
    result: dict = {"reference": f"PEFT on transformers ({device}, {str(dtype).removeprefix('torch.')})"}
    with tempfile.TemporaryDirectory(prefix="loradesk-bench-") as tmp:
        folders = _as_peft(dict(adapter_folders), Path(tmp))
        names = list(folders)
        kw = dict(is_trainable=False, autocast_adapter_dtype=upcast_adapters(device))  # as the engine
        t0 = time.perf_counter_ns()
        model = PeftModel.from_pretrained(base, str(folders[names[0]]), adapter_name=names[0], **kw)
        loads = [_ms(t0)]
        for name in names[1:]:
            t0 = time.perf_counter_ns()
            model.load_adapter(str(folders[name]), adapter_name=name, **kw)
            loads.append(_ms(t0))
        for i in range(rounds):  # more samples: load again under a spare name, then drop it
            t0 = time.perf_counter_ns()
            model.load_adapter(str(folders[names[i % len(names)]]), adapter_name="_spare", **kw)
            loads.append(_ms(t0))
            model.delete_adapter("_spare")
        result["peft_load_adapter_ms"] = round(statistics.median(loads), 2)

        times = []
        for i in range(switches):
            t0 = time.perf_counter_ns()
            model.set_adapter(names[i % len(names)])
            times.append(_ms(t0))
        result["peft_set_adapter_p50_ms"] = round(statistics.median(times), 4)
        result["peft_set_adapter_p99_ms"] = round(percentile(times, 0.99), 4)

        hot = []
        try:
            for i in range(max(rounds, 3)):
                t0 = time.perf_counter_ns()
                hotswap_adapter(model, str(folders[names[(i + 1) % len(names)]]), adapter_name=names[0])
                hot.append(_ms(t0))
            hotswap_adapter(model, str(folders[names[0]]), adapter_name=names[0])  # restore
            result["peft_hotswap_ms"] = round(statistics.median(hot), 2)
        except Exception as e:  # noqa: BLE001 - e.g. adapters of different ranks/targets
            result["peft_hotswap_ms"] = f"n/a ({type(e).__name__}: {str(e)[:80]})"

        if max_tokens > 1:
            model.set_adapter(names[0])
            ids = torch.tensor([tokenizer.encode(prompt)], device=device)
            peft_tps, ours = [], []
            for _ in range(rounds):
                if engine_decode is not None:
                    ours.append(engine_decode())
                peft_tps.append(_peft_decode_tps(model, ids, max_tokens))
            result["reference_adapter"] = names[0]
            result["peft_adapter_decode_tps"] = round(statistics.median(peft_tps), 3)
            if ours:
                o = statistics.median(ours)
                result["engine_adapter_decode_tps"] = round(o, 3)
                result["engine_vs_peft_decode_ratio"] = round(o / statistics.median(peft_tps), 4)
                result["engine_vs_reference_ratio"] = result["engine_vs_peft_decode_ratio"]
            result["reference_decode_tps"] = result["peft_adapter_decode_tps"]
    del model, base
    return result
