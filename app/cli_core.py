"""Core commands: ask, adapters, info, models."""
from __future__ import annotations
# The app's layers are imported inside the commands: `loradesk --help` imports this module (app/cli.py)
# and would otherwise pay for numpy, the engines and the Hub (python -X importtime -m app --help).

import sys
import threading

from app.format import human_bytes


def register(sub, common):
    from app.tasks import task_names

    p = sub.add_parser("ask", parents=[common], help="answer one input with a task's adapter (streams)")
    p.add_argument("--task", choices=task_names() + ["auto"],
                   help="the task; auto: the router picks it from the input (loradesk route)")
    p.add_argument("--mix", metavar="TASK=W,...",
                   help="a weighted mix of task adapters, e.g. math=0.7,code=0.3 (the prompt is --task's, "
                        "else the heaviest task's)")
    p.add_argument("--no-adapter", action="store_true", help="use the base model alone")
    p.add_argument("--max-tokens", type=int, help="answer length limit (default: the task's)")
    p.add_argument("--temperature", type=float)
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a task option, e.g. length=short for summarize")
    p.add_argument("--stats", action="store_true", help="print speed and memory to stderr")
    p.add_argument("--force", action="store_true",
                   help="use the task's adapter even if it was made for another base model")
    p.add_argument("--chat", metavar="NAME",
                   help="continue (or start) the stored conversation NAME; its task is remembered (loradesk chats)")
    p.add_argument("text", help="the input; - reads stdin")
    p.set_defaults(func=cmd_ask)

    a = sub.add_parser("adapters", help="list, add or remove task adapters")
    asub = a.add_subparsers(dest="adapters_command", metavar="ACTION", required=True)
    lp = asub.add_parser("list", parents=[common], help="each task's adapters: base model, rank, size, source")
    lp.set_defaults(func=cmd_adapters_list)
    ap = asub.add_parser("add", parents=[common],
                         help="register an adapter folder (MLX or PEFT format) for a task; checked against --model")
    ap.add_argument("task", choices=task_names())
    ap.add_argument("folder")
    ap.add_argument("--name", help="name in the store (default: the folder's name)")
    ap.add_argument("--force", action="store_true",
                    help="add it even if it was made for another base model than the app's (it then loads with a warning)")
    ap.set_defaults(func=cmd_adapters_add)
    rp = asub.add_parser("remove", help="delete an adapter from the store")
    rp.add_argument("task", choices=task_names())
    rp.add_argument("name")
    rp.set_defaults(func=cmd_adapters_remove)
    a.set_defaults(adapters_sub=asub, common=common)

    i = sub.add_parser("info", parents=[common], help="engine, device, model, adapters and versions")
    i.add_argument("--no-load", action="store_true", help="do not load the model")
    i.set_defaults(func=cmd_info)

    m = sub.add_parser("models", help="supported and local base models")
    msub = m.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    ml = msub.add_parser("list", parents=[common], help="the supported models and the ones on this machine")
    ml.set_defaults(func=cmd_models_list)
    m.set_defaults(models_sub=msub)

    from app.cli_convert import add_commands  # models import, adapters export

    add_commands(msub, asub)
    from app.cli_hub import add_commands as add_hub_commands  # adapters search, get, push

    add_hub_commands(asub, common)


def _read_text(text: str) -> str:
    if text == "-":
        text = sys.stdin.read()
    if not text.strip():
        raise ValueError("the input is empty")
    return text


def parse_options(pairs: list[str]) -> dict[str, str]:
    """`--option NAME=VALUE` pairs as a dict; anything else is a clear error."""
    options = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key.strip() or not value.strip():
            raise ValueError(f"--option {pair!r}: expected the form --option NAME=VALUE (e.g. --option length=short)")
        options[key.strip()] = value.strip()
    return options


def cmd_ask(args) -> int:
    from app.plan import answer, parse_mix_arg, plan
    from app.session import open_session

    text = _read_text(args.text)
    chat = None
    if args.chat:
        from app.cli_chats import ChatTurn

        chat = ChatTurn.open(args)  # fills in --task from the conversation
    mix = parse_mix_arg(args.mix) if getattr(args, "mix", None) else None
    # task, auto or mix; validated before loading
    todo = plan(text, args.task, mix, args.no_adapter, parse_options(args.option))
    messages = chat.messages(todo.messages) if chat else todo.messages
    settings = todo.settings.replace(max_tokens=args.max_tokens, temperature=args.temperature)
    if todo.note:
        print(todo.note, file=sys.stderr)
    session = open_session(args.model, args.engine, tasks=todo.tasks, with_adapters=bool(todo.tasks), force=args.force)
    engine = session.engine
    if chat:
        messages = chat.fit(engine, messages, settings.max_tokens)
    cancel = threading.Event()
    last, text_out = None, []
    try:  # one answer and the process ends: the adapter stays active for --stats and the chat record
        for chunk in answer(engine, todo.selection(engine), messages, settings, cancel, restore=False):
            sys.stdout.write(chunk.text)
            sys.stdout.flush()
            last = chunk
            text_out.append(chunk.text)
    except KeyboardInterrupt:
        cancel.set()
        raise
    sys.stdout.write("\n")
    if chat:
        chat.save(text, todo, engine, settings, "".join(text_out), last)
    if last is not None and last.truncated_tokens:
        print(f"note: the input was {last.truncated_tokens} tokens too long for the model's context; its end was "
              "cut (the start is kept)", file=sys.stderr)
    if args.stats and last is not None:
        print(f"[{engine.kind} | adapter: {engine.active or 'none'} | prompt {last.prompt_tokens} tok "
              f"{last.prompt_tps:.1f} tok/s | {last.generation_tokens} tok {last.generation_tps:.1f} tok/s | "
              f"first token {last.time_to_first_token:.2f}s | peak {last.peak_memory:.2f} GB | {last.finish_reason}]",
              file=sys.stderr)
    return 0


def cmd_adapters_list(args) -> int:
    from app.store import adapter_rows

    rows = adapter_rows(every=True)
    head = ("", "task", "adapter", "format", "rank", "size", "base model", "source")
    table = [head] + [("*" if r["active"] else "", r["task"], r["name"] or "-", r["format"], str(r["rank"]),
                       r["size"], r["base_model"], r["source"]) for r in rows]
    widths = [max(len(str(row[i])) for row in table[:]) for i in range(len(head) - 1)]
    for row in table:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)) + "  " + row[-1])
    print("* the adapter in use for its task (the one added last; adding one again makes it the one in use)")
    return 0


def cmd_adapters_add(args) -> int:
    from app import store

    from app.session import choose_engine, choose_model

    # The app's model (or --model/--engine): refuse adapters made for another.
    model = choose_model(args.model, choose_engine(args.engine))
    entry = store.add(args.task, args.folder, name=args.name, model=model, force=args.force)
    print(f"found a {entry.format.upper()} adapter in {args.folder}; registered as {entry.name!r} for "
          f"task {args.task} ({entry.path})")
    return 0


def cmd_adapters_remove(args) -> int:
    from app import store

    store.remove(args.task, args.name)
    print(f"removed adapter {args.name!r} of task {args.task}")
    return 0


def cmd_info(args) -> int:
    import importlib.metadata as md
    import platform

    from app import paths
    from app.engine import default_engine
    from app.session import choose_engine, choose_model

    kind = choose_engine(args.engine)
    auto, why = default_engine()
    print(f"engine:   {kind}" + (f" ({why})" if kind == auto and not args.engine else " (chosen)"))
    print(f"model:    {choose_model(args.model, kind)}")
    print(f"home:     {paths.home()}")
    print(f"platform: {platform.system()} {platform.machine()}, Python {platform.python_version()}")
    versions = []
    for pkg in ("llama-cpp-python", "mlx", "mlx-lm", "torch", "transformers", "peft", "PySide6-Essentials"):
        try:
            versions.append(f"{pkg} {md.version(pkg)}")
        except md.PackageNotFoundError:
            versions.append(f"{pkg} -")
    print("versions: " + ", ".join(versions))
    if not args.no_load:
        from app.errors import EngineError
        from app.session import open_session

        try:
            s = open_session(args.model, args.engine, warn=False)
        except EngineError as e:
            # A first run offline, or before any model is downloaded: say what is missing, not fail.
            print(f"loaded:   nothing: {e}")
            print("missing:  a model; pick one in the app's Models panel, or pass --model with a local folder "
                  "or .gguf file (loradesk models list shows the supported ones)")
            return 0
        info = s.engine.model_info
        print(f"device:   {getattr(s.engine, 'device', 'cpu' if kind == 'torch' else 'mlx default')}")
        print(f"loaded:   {info.path} ({info.model_type}, {info.quantization or 'unquantized'}, {human_bytes(info.bytes)})")
        print(f"answers:  {s.engine.scheduling()}")
        for name, a in s.engine.adapters.items():
            print(f"adapter:  {name}: {a.format}, rank {a.rank}, {a.modules} layers, {human_bytes(a.bytes)}")
        for task, why in s.problems.items():
            print(f"adapter:  {task}: {why}")
        if hasattr(s.engine, "merge_status"):
            print(f"merging:  {s.engine.merge_status()}")
    return 0


def cmd_models_list(args) -> int:
    from app.model_choices import DEFAULT_INDEX, SUPPORTED
    from app.models import local_repo_folder, registered_models, shipped_tasks

    from app.session import choose_engine

    kind = choose_engine(args.engine)
    print(f"engine {kind}: --model takes the {kind} repo (or the original repo id, or a registered name)")
    for i, m in enumerate(SUPPORTED):
        here = (local_repo_folder(m.repo_for(kind)) / ".complete").exists()
        mark = "*" if i == DEFAULT_INDEX else " "
        shipped = shipped_tasks(m)
        print(f"{mark} {m.label:28} {kind}: {m.repo_for(kind):45} original: {m.torch_repo:36}"
              + (f" [adapters shipped: {', '.join(shipped)}]" if shipped else "") + (" [downloaded]" if here else ""))
    for name, folder in registered_models().items():
        print(f"  {name:24} local: {folder}")
    return 0
