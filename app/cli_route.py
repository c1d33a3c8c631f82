"""Auto and mixes on the command line: `loradesk route` and `adapters export-mix` (a mix written
as one PEFT adapter for other servers); `ask --task auto` and `ask --mix` are planned by app.plan."""
from __future__ import annotations
# The app's layers are imported inside the commands: `loradesk --help` imports this module (app/cli.py)
# and would otherwise pay for numpy, the engines and the Hub (python -X importtime -m app --help).

import json
import sys
from pathlib import Path

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
def cmd_route(args) -> int:
    from app.jsonfile import read_jsonl
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


# -- adapters export-mix --------------------------------------------------------------------------
def cmd_export_mix(args) -> int:
    from app.engine.adapter_format import read_adapter
    from app.engine.adapter_write import write_peft
    from app.engine.mix import merge
    from app.store import adapter_folder

    from app.plan import parse_mix_arg

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
