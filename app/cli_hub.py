"""`loradesk adapters search|get|push`: task adapters on the Hugging Face Hub (app/hub_adapters.py).

They join the `adapters` group that app/cli_core.py creates. Each needs the network; offline or
unreachable, it says so in one line and exits 2 (app.cli turns EngineError into that).
"""
from __future__ import annotations
# The app's layers are imported inside the commands: `loradesk --help` imports this module (app/cli.py)
# and would otherwise pay for numpy, the engines and the Hub (python -X importtime -m app --help).

import sys


def add_commands(adapters_sub, common) -> None:
    from app.tasks import task_names

    base_help = ("the base model's hub repo, when --model is a local folder or GGUF that does not name it "
                 "(e.g. Qwen/Qwen2.5-0.5B-Instruct)")
    sp = adapters_sub.add_parser("search", parents=[common],
                                 help="find Hub LoRA adapters that fit the model, ranked for a task "
                                      "(needs the network)")
    sp.add_argument("--task", required=True, choices=task_names())
    sp.add_argument("--query", help="words the repo name must contain")
    sp.add_argument("--base", metavar="REPO", help=base_help)
    sp.add_argument("--limit", type=int, default=10, help="results to show (default 10)")
    sp.add_argument("--show-unfit", action="store_true", help="also list the candidates that do not fit, and why")
    sp.set_defaults(func=cmd_search)

    gp = adapters_sub.add_parser("get", parents=[common],
                                 help="download a Hub adapter (REPO[@REVISION]), check it and register it for a task")
    gp.add_argument("spec", metavar="REPO[@REVISION]")
    gp.add_argument("--task", required=True, choices=task_names())
    gp.add_argument("--name", help="name in the store (default: the repo's name)")
    gp.add_argument("--base", metavar="REPO", help=base_help)
    gp.add_argument("--force", action="store_true", help="register it even if it records another base model")
    gp.set_defaults(func=cmd_get)

    pp = adapters_sub.add_parser("push", help="upload a task's adapter (PEFT format, with a model card) to the Hub")
    pp.add_argument("task", choices=task_names())
    pp.add_argument("--repo", required=True, metavar="USER/NAME")
    vis = pp.add_mutually_exclusive_group()
    vis.add_argument("--private", dest="private", action="store_true", default=True,
                     help="a private repo (the default)")
    vis.add_argument("--public", dest="private", action="store_false", help="a public repo")
    pp.add_argument("--base", metavar="REPO", help="the base model's hub repo, when the adapter records a local folder")
    pp.add_argument("--bench-results", metavar="PATH", help="a bench-out results.json: its scores for the task go "
                    "into the model card")
    pp.set_defaults(func=cmd_push)


def _model(args) -> str:
    from app.session import choose_engine, choose_model

    return choose_model(args.model, choose_engine(args.engine))


def _size(n: int) -> str:
    from app.format import human_bytes

    return human_bytes(n)


def cmd_search(args) -> int:
    from app.hub_adapters import search

    r = search(args.task, _model(args), query=args.query, base=args.base, limit=args.limit)
    shapes = "" if r.shapes_checked else " (its config could not be read: shapes unchecked)"
    print(f"Hub LoRA adapters for {r.base}{shapes}, ranked for {args.task}:")
    if not r.adapters:
        print("  none fit" + (f" ({len(r.skipped)} candidates do not; --show-unfit lists them)" if r.skipped else ""))
    head = ("#", "repo", "downloads", "likes", "size", "rank", "license", "matches", "datasets")
    rows = [head] + [(str(i), a.repo, str(a.downloads), str(a.likes), _size(a.size), str(a.rank), a.license or "-",
                      ",".join(a.matches) or "-", ",".join(a.datasets) or "-") for i, a in enumerate(r.adapters, 1)]
    if r.adapters:
        widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
        for row in rows:
            print("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
        print(f"get one: loradesk adapters get {r.adapters[0].repo} --task {args.task}")
    if args.show_unfit and r.skipped:
        print("do not fit:")
        for repo, why in r.skipped:
            print(f"  {repo}: {why}")
    elif r.skipped:
        print(f"({len(r.skipped)} more candidates do not fit this model; --show-unfit says why)")
    return 0


def cmd_get(args) -> int:
    from app.hub_adapters import get

    r = get(args.spec, args.task, _model(args), base=args.base, name=args.name, force=args.force)
    for w in r.warnings:
        print(f"warning: {w}", file=sys.stderr)
    print(f"got {r.repo}@{r.revision[:12]} ({r.entry.format.upper()}): registered as {r.entry.name!r} for task "
          f"{args.task} ({r.entry.path})")
    for name, sha in r.files.items():
        print(f"  {name}  sha256 {sha}")
    return 0


def cmd_push(args) -> int:
    from app.hub_push import push

    r = push(args.task, args.repo, private=args.private, base=args.base, bench_results=args.bench_results)
    print(f"pushed the {args.task} adapter to {r.url} ({'private' if r.private else 'public'}), commit {r.commit}: "
          + ", ".join(r.files))
    return 0
