"""Auto and mixes on the command line: `loradesk route`, `ask --task auto`, `ask --mix`, and
`adapters export-mix` (a mix written as one PEFT adapter for other servers)."""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

AUTO = "auto"


def register(sub, common):
    r = sub.add_parser("route", help="which task Auto picks for a prompt, and how sure it is (no model is loaded)")
    r.add_argument("prompt", nargs="?", help="the prompt; - reads stdin")
    r.add_argument("--jsonl", metavar="FILE",
                   help='route every {"prompt": ...} line of FILE (- for stdin); writes {"prompt", "task", '
                        '"confidence"} lines to stdout')
    r.add_argument("--scores", action="store_true", help="print every label's probability too")
    r.set_defaults(func=cmd_route)

    adapters = sub.choices.get("adapters")
    asub = adapters.get_default("adapters_sub") if adapters is not None else None
    if asub is not None:
        ep = asub.add_parser("export-mix", help="write a weighted mix of task adapters as one PEFT adapter "
                             "(ranks concatenated: exactly the mix, for vLLM, LoRAX or PEFT)")
        ep.add_argument("--mix", required=True, metavar="TASK=W,...", help="e.g. math=0.7,code=0.3")
        ep.add_argument("--out", required=True, help="the folder to write (must not exist or be empty)")
        ep.add_argument("--base-model", help="base_model_name_or_path to record (default: the adapters' own)")
        ep.set_defaults(func=cmd_export_mix)


# -- route --------------------------------------------------------------------------------------
def read_jsonl(path: str | Path, need=("prompt",)) -> list[dict]:
    """JSON objects, one a line ('-': stdin); a bad line is an error naming its number."""
    if str(path) == "-":
        lines = sys.stdin.read().splitlines()
    else:
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except OSError as e:
            raise ValueError(f"cannot read {path}: {e.strerror}") from None
    rows = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{i}: not JSON ({e.msg})") from None
        missing = [k for k in need if not isinstance(row, dict) or not isinstance(row.get(k), str)]
        if missing:
            raise ValueError(f"{path}:{i}: expected an object with a string {missing[0]!r}, got {line[:80]!r}")
        rows.append(row)
    return rows


def cmd_route(args) -> int:
    from app.router import default_router

    router = default_router()
    if args.jsonl:
        if args.prompt:
            raise ValueError("give a prompt or --jsonl FILE, not both")
        for row in read_jsonl(args.jsonl):
            r = router.route(row["prompt"]) if row["prompt"].strip() else None
            out = {"prompt": row["prompt"], "task": r.task if r else None,
                   "confidence": round(r.confidence, 4) if r else 0.0}
            if args.scores and r:
                out["scores"] = {k: round(v, 4) for k, v in r.scores.items()}
            print(json.dumps(out, ensure_ascii=False))
        return 0
    if args.prompt is None:
        raise ValueError('give a prompt (loradesk route "PROMPT"), - for stdin, or --jsonl FILE')
    text = sys.stdin.read() if args.prompt == "-" else args.prompt
    r = router.route(text)
    print(f"{r.task}\t{r.confidence:.2f}")
    if args.scores:
        for label, p in r.scores.items():
            print(f"  {label:11} {p:.3f}")
    return 0


# -- ask --task auto / --mix ---------------------------------------------------------------------
@dataclass
class AskPlan:
    """What `ask` runs: the chat messages, settings, the adapters to load and which to activate."""

    messages: list[dict]
    settings: object  # GenerationSettings
    tasks: list[str]  # adapters to load (named after their tasks)
    mix: dict[str, float] = field(default_factory=dict)  # {} unless --mix
    note: str = ""  # said on stderr (Auto's choice)
    task: str = ""  # the task whose prompt it is ("" for Auto's general chat)

    def selection(self, engine):
        """The argument for engine.activate: the mix, the task's adapter, or None (base model)."""
        if self.mix:
            return self.mix
        return self.tasks[0] if self.tasks and self.tasks[0] in engine.adapters else None


def parse_mix_arg(text: str) -> dict[str, float]:
    """--mix TASK=W,...: a clear error for bad syntax or a name that is no task."""
    from app.engine.mix import parse
    from app.tasks import task_names

    weights = parse(text)
    unknown = [n for n in weights if n not in task_names()]
    if unknown:
        raise ValueError(f"--mix {text!r}: {', '.join(map(repr, unknown))} is not a task; the adapters are "
                         f"named after their tasks: {', '.join(task_names())}")
    return weights


def ask_plan(args, text: str, options: dict) -> AskPlan:
    """The plan for `ask`: --task TASK, --task auto (the router picks), or --mix (validated before
    any model loads)."""
    from app.router import NONE, default_router, plan
    from app.tasks import get_task

    mix = parse_mix_arg(args.mix) if getattr(args, "mix", None) else {}
    if mix and args.no_adapter:
        raise ValueError("--mix and --no-adapter contradict each other; give one")
    name = args.task
    note = ""
    if name == AUTO:
        r = default_router().route(text)
        note = f"auto: {r.task} ({r.confidence:.0%})"
        if r.task == NONE:
            if mix:
                raise ValueError("Auto chose general chat (no task) for this prompt; give --task with --mix")
            _, messages, settings = plan(r, text)
            return AskPlan(messages, settings, [], note=note, task=NONE)
        name = r.task
    if name is None:
        if not mix:
            raise ValueError("say what to run: --task TASK, --task auto, or --mix TASK=W,...")
        name = max(mix, key=lambda n: mix[n])  # the prompt of the heaviest adapter's task
    task = get_task(name)
    messages = task.messages(text, **options)
    tasks = [] if args.no_adapter else (list(mix) if mix else [task.name])
    return AskPlan(messages, task.generation, tasks, mix, note, task.name)


# -- adapters export-mix --------------------------------------------------------------------------
def cmd_export_mix(args) -> int:
    from app.engine.adapter_format import read_adapter, write_peft
    from app.engine.mix import merge
    from app.engine.store import adapter_folder

    weights = parse_mix_arg(args.mix)
    if not weights:
        raise ValueError(f"--mix {args.mix!r}: every weight is zero; nothing to export")
    parts = {}
    for task, w in weights.items():
        folder = adapter_folder(task)
        if folder is None:
            raise ValueError(f"task {task!r} has no adapter to mix (train one: loradesk train --task {task})")
        parts[task] = (w, read_adapter(folder))
    bases = {lw.base_model for _, lw in parts.values() if lw.base_model}
    if len(bases) > 1 and not args.base_model:
        raise ValueError(f"the adapters were made for different base models ({', '.join(sorted(bases))}); "
                         "a mix needs one base (pass --base-model to record the one you mean)")
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} exists and is not empty; choose a new folder")
    merged = merge(parts)
    write_peft(merged, out, base_model_name=args.base_model)
    rank = next(iter(merged.modules.values())).rank
    print(f"wrote {out}: PEFT LoRA, rank {rank} (concatenated), scale 1, {len(merged.modules)} modules, "
          f"mix {args.mix}")
    return 0
