# Usage: python docs/experiments/idle_kv.py MODEL.gguf  (issue 23: the resident tax was idle KV, not adapters)
"""Does KV held by idle slots (other adapter sets' caches) slow decoding in another slot? Same
engine, base model, interleaved: with the other slots cleared, and with them holding answers."""
import sys, tempfile
from pathlib import Path
import numpy as np
from app.engine import create_engine
from app.tasks import get_task, GenerationSettings
from app.bench.speed import stream_decode, _adapters_for

eng = create_engine("llamacpp"); eng.merge_after = None
eng.load(sys.argv[1])
tmp = Path(tempfile.mkdtemp())
folders, _ = _adapters_for(eng, tmp, 16, print)
for name, folder in list(folders.items())[:3]:
    eng.add_adapter(name, folder, force=True)
names = list(folders)[:3]
msgs = get_task("math").messages("What is 12 times 13? Explain every step in detail.")
long_in = get_task("summarize").messages(get_task("summarize").example_input)
s200 = GenerationSettings(max_tokens=200)
rates = {"clean": [], "idle_kv": []}
for _ in range(3):
    eng._slots.clear()
    tps, n = stream_decode(eng, msgs, s200); rates["clean"].append(tps)
    for name in names:
        eng.generate(long_in, GenerationSettings(max_tokens=300), adapter=name)
    held = eng.slots_report()["tokens"]
    tps, n2 = stream_decode(eng, msgs, s200); rates["idle_kv"].append(tps)
    print(f"tokens {n}/{n2}; idle cells held before the second run: {held}", flush=True)
print({k: [round(x, 1) for x in v] for k, v in rates.items()})
print("ratio idle/clean", round(np.median(rates["idle_kv"]) / np.median(rates["clean"]), 3))
