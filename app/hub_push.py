"""Share a task adapter on the Hugging Face Hub (`loradesk adapters push`): the adapter in PEFT
format, with a model card written from its loradesk.json (base model, data and counts, training
settings, the task's latest benchmark scores) and the tags that hub_adapters.search looks for."""
from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from app import store
from app.bench.evals import EVALS
from app.engine.adapter_format import read_adapter
from app.engine.lora import METADATA_FILE
from app.errors import AdapterError
from app.hub import HubUnavailable, check_online, network_error
from app.hub_adapters import base_repo, parse_spec
from app.tasks import get_task

PUSH_TAG = "loradesk"


@dataclass
class PushResult:
    repo: str
    url: str
    commit: str
    files: list[str]
    private: bool


def _bench_rows(task: str, results_file: Path) -> tuple[list[dict], dict]:
    """The benchmark runs of `task`'s evals in a bench-out results.json, and its settings."""
    try:
        results = json.loads(Path(results_file).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read the benchmark results {results_file}: {e}") from None
    evals = {n for n, ev in EVALS.items() if ev.task == task}
    return [r for r in results.get("runs", []) if r.get("task") in evals], results.get("meta", {})


def model_card(task: str, repo: str, base: str, meta: dict, bench: tuple[list[dict], dict] | None = None) -> str:
    """README.md for a pushed adapter: YAML metadata (base_model, library_name, tags search finds)
    and what loradesk.json says about its training."""
    t = get_task(task)
    data = meta.get("datasets") or {}
    dataset_ids = [d for d in data if "/" in d] if isinstance(data, dict) else []
    dataset_ids = dataset_ids or [d.id for d in t.datasets]
    short = [d.rsplit("/", 1)[-1].lower() for d in dataset_ids]
    tags = list(dict.fromkeys([f"base_model:adapter:{base}", "lora", "peft", PUSH_TAG, task, *short]))
    head = {"base_model": base, "library_name": "peft", "pipeline_tag": "text-generation",
            "datasets": dataset_ids, "tags": tags}
    lines = ["---", *(_yaml(k, v) for k, v in head.items()), "---", "",
             f"# {repo.rsplit('/', 1)[-1]}: a LoRA adapter for {t.label.lower()} on {base}", "",
             f"A LoRA adapter for LoRA Desk's **{t.label}** task ({t.metric}), made for [{base}]"
             f"(https://huggingface.co/{base}).", "", "## Use it", "", "```sh",
             f"loradesk adapters get {repo} --task {task}", "```", "", "```python",
             "from peft import PeftModel", "from transformers import AutoModelForCausalLM", "",
             f'model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("{base}"), "{repo}")', "```", ""]
    train = meta.get("training") or {}
    if train or data:
        lines += ["## Training", ""]
        ex = meta.get("examples") or {}
        for sid, s in (data.items() if isinstance(data, dict) else []):
            n = s.get("train") if isinstance(s, dict) else None
            lines.append(f"- data: {sid}" + (f" ({n} training examples)" if n is not None else ""))
        if ex:
            lines.append(f"- examples: {ex.get('train')} train, {ex.get('valid')} validation, {ex.get('test')} test")
        recipe = meta.get("recipe") if isinstance(meta.get("recipe"), dict) else {}
        if recipe:
            seen = recipe.get("rows_seen") or {}
            lines.append(f"- recipe `loradesk recipe {recipe.get('name')}`: {recipe.get('source')}; trained on "
                         f"{recipe.get('train')}, held out {recipe.get('heldout')} (never trained on); rows seen: "
                         f"train {seen.get('train') or '-'}, validation {seen.get('valid') or '-'}"
                         + (f"; targets: {recipe['targets']}" if recipe.get("targets") else ""))
        elif meta.get("rows_seen"):
            for part, files in meta["rows_seen"].items():
                for origin, spec in files.items():
                    lines.append(f"- {part} rows of {Path(origin).name}: {spec}")
        keys = ("rank", "alpha", "dropout", "target_modules", "learning_rate", "lr_schedule", "batch_size",
                "max_seq_length", "seed")
        shown = {k: ", ".join(map(str, v)) if isinstance(v, list) else v for k, v in train.items()}
        settings = "; ".join(f"{k} {shown[k]}" for k in keys if train.get(k) is not None)
        if settings:
            lines.append(f"- settings: {settings}")
        facts = [f"{meta['steps']} steps" if meta.get("steps") else "",
                 f"engine {meta['engine']}" if meta.get("engine") else "",
                 f"final train loss {meta['final_train_loss']:.3f}" if meta.get("final_train_loss") else "",
                 f"validation loss {meta['final_valid_loss']:.3f}" if meta.get("final_valid_loss") else "",
                 f"{meta['tokens_per_s']:.0f} tokens/s" if meta.get("tokens_per_s") else ""]
        if any(facts):
            lines.append("- run: " + ", ".join(f for f in facts if f))
        lines.append("")
    if bench and bench[0]:
        runs, bmeta = bench
        lines += ["## Benchmark", "",
                  f"LoRA Desk's quality benchmark (limit {bmeta.get('limit')}, seed {bmeta.get('seed')}, engine "
                  f"{bmeta.get('engine', '?')}):", "", "| eval | configuration | model | items | score |",
                  "|---|---|---|---|---|"]
        for r in runs:
            score = (r.get("metrics") or {}).get(r.get("primary"))
            shown = f"{r.get('primary')} {score:.3f}" if isinstance(score, (int, float)) else "-"
            model = str(r.get("model") or "")
            model = base if model.startswith(("/", ".", "~")) or Path(model).expanduser().exists() else model
            lines.append(f"| {r.get('task')} | {r.get('config')} | {model} | {r.get('n')} | {shown} |")
        lines.append("")
    lines += ["Made with LoRA Desk (`loradesk adapters push`).", ""]
    return "\n".join(lines)


def _yaml(key: str, value) -> str:
    if isinstance(value, list):
        return f"{key}:\n" + "\n".join(f"- {json.dumps(v)}" for v in value) if value else f"{key}: []"
    return f"{key}: {json.dumps(value)}"


def _public_metadata(meta: dict, base: str) -> dict:
    """loradesk.json as published: local paths (model folders, data files) left out."""
    out = {k: v for k, v in meta.items() if k not in ("base_model_path",)}
    out["base_model"] = base
    if isinstance(out.get("training"), dict):
        tr = dict(out["training"])
        tr["model"] = base
        tr["data"] = [Path(str(d).split("=")[-1]).name for d in tr.get("data") or []]
        out["training"] = tr
    if isinstance(out.get("datasets"), dict):  # per source: its local files (training's report) by name only
        out["datasets"] = {k: ({**v, "files": [Path(str(f)).name for f in v["files"]]}
                               if isinstance(v, dict) and isinstance(v.get("files"), list) else v)
                           for k, v in out["datasets"].items()}
    return out


def push(task: str, repo: str, private: bool = True, base: str | None = None,
         bench_results: str | Path | None = None) -> PushResult:
    """Upload `task`'s adapter in use to `repo` in PEFT format, with a model card."""
    from huggingface_hub import HfApi, get_token


    get_task(task)
    parse_spec(repo)
    what = f"adapters push {repo}"
    check_online(what)
    folder = store.adapter_folder(task)
    if folder is None:
        raise AdapterError(f"task {task!r} has no adapter to push; train one (loradesk train --task {task}) or get one")
    weights = read_adapter(folder)
    base_id = base_repo(weights.base_model, base)
    bench = _bench_rows(task, Path(bench_results)) if bench_results else None
    if get_token() is None:
        raise HubUnavailable(f"{what} needs a Hugging Face token with write access: run `hf auth login` or set "
                             "HF_TOKEN")
    with tempfile.TemporaryDirectory(prefix="loradesk-push-") as tmp:
        out = Path(tmp) / "adapter"
        store.export(task, out, "peft", base_model=base_id)
        meta = _public_metadata(weights.metadata, base_id)
        (out / METADATA_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")
        (out / "README.md").write_text(model_card(task, repo, base_id, meta, bench), encoding="utf-8")
        files = sorted(p.name for p in out.iterdir())
        try:
            api = HfApi()
            url = api.create_repo(repo, private=private, exist_ok=True)
            commit = api.upload_folder(repo_id=repo, folder_path=str(out),
                                       commit_message=f"LoRA Desk {task} adapter for {base_id}")
        except Exception as e:  # noqa: BLE001
            raise network_error(what, e) from None
    return PushResult(repo, str(url), commit.oid, files, private)
