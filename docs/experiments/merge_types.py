"""Usage: python docs/experiments/merge_types.py MODEL.gguf ADAPTER_FOLDER [N] (LORADESK_THREADS=1 recommended)

Issue 23 experiment: the merged copy in Q8_0 vs in the base's own type, with the real shipped math
adapter on the real 0.5B Q4_K_M GGUF: decode speed (interleaved with base and LoRA) and agreement with
the resident LoRA on held-out GSM8K questions."""
import json, sys, time
import numpy as np
from app.engine import create_engine
from app.tasks import get_task, GenerationSettings
from app.bench.speed import stream_decode

G = sys.argv[1]; ADAPTER = sys.argv[2]; N = int(sys.argv[3]) if len(sys.argv) > 3 else 8
from training.recipe import packaged_gsm8k
rows = [json.loads(l) for l in packaged_gsm8k().read_text().splitlines()[1000:1000 + N]]  # held out
task = get_task("math")
eng = create_engine("llamacpp")
eng.merge_after = None
eng.load(G)
eng.add_adapter("math", ADAPTER, force=True)
settings = GenerationSettings(max_tokens=128)
speed_msgs = task.messages(rows[0]["question"])
out = {}

def tps(mode):
    if mode == "base":
        eng.activate(None)
    else:
        eng.activate("math"); eng.use_merged(mode == "merged")
    s, n = stream_decode(eng, speed_msgs, GenerationSettings(max_tokens=200))
    return n / s

def answers(merged):
    eng.activate("math"); eng.use_merged(merged)
    return [eng.generate(task.messages(r["question"]), settings) for r in rows]

def prefix(a, b):
    ta, tb = eng.encode(a), eng.encode(b)
    n = 0
    while n < min(len(ta), len(tb)) and ta[n] == tb[n]:
        n += 1
    return n, max(len(ta), len(tb))

eng.activate("math"); eng.use_merged(False)
lora_answers = answers(False)
for keep in (False, True):
    label = "base_type" if keep else "q8_0"
    with eng._lock:
        eng._drop_merged(wait=True)
    eng.merge_keep_type = keep
    eng.activate("math")
    t0 = time.perf_counter(); copy = eng.merge_now(); secs = time.perf_counter() - t0
    r = {"merge_seconds": round(secs, 1), "merge_bytes": copy.nbytes}
    rates = {"base": [], "lora": [], "merged": []}
    for _ in range(3):
        for mode in rates:
            rates[mode].append(tps(mode))
    med = {k: float(np.median(v)) for k, v in rates.items()}
    r.update({f"{k}_tps": round(v, 2) for k, v in med.items()})
    r["lora_ratio"] = round(med["lora"] / med["base"], 3); r["merged_ratio"] = round(med["merged"] / med["base"], 3)
    corr = []
    for q in rows:
        prompt = eng.chat_prompt(task.messages(q["question"]))
        eng.activate(None); b = eng.next_token_logits(prompt)
        eng.activate("math"); eng.use_merged(False); l = eng.next_token_logits(prompt)
        eng.use_merged(True); m = eng.next_token_logits(prompt)
        corr.append(float(np.corrcoef(l - b, m - b)[0, 1]))
    merged_answers = answers(True)
    pre = [prefix(a, b) for a, b in zip(lora_answers, merged_answers)]
    r["logit_corr_min"] = round(min(corr), 5); r["logit_corr_mean"] = round(float(np.mean(corr)), 5)
    r["same_answers"] = f"{sum(a == b for a, b in zip(lora_answers, merged_answers))}/{len(rows)}"
    r["common_prefix_tokens"] = [p[0] for p in pre]; r["answer_tokens"] = [p[1] for p in pre]
    from app.bench.metrics import exact_match, extract_answer, gsm8k_reference
    right = lambda ans: int(sum(exact_match(extract_answer(a), gsm8k_reference(q["answer"])) for a, q in zip(ans, rows)))
    r["lora_right"], r["merged_right"] = right(lora_answers), right(merged_answers)
    out[label] = r
    print(label, json.dumps(r), flush=True)
print(json.dumps(out, indent=1))
