"""Conversion commands: `loradesk models import FILE.gguf` and `loradesk adapters export TASK`.

They join the `models` and `adapters` groups that app/cli_core.py creates (it calls
`add_commands` with those groups' subparsers).
"""
from __future__ import annotations

import sys
from pathlib import Path


def add_commands(models_sub, adapters_sub) -> None:
    from app.tasks import task_names

    ip = models_sub.add_parser("import", help="import a GGUF model file (llama.cpp) for both engines")
    ip.add_argument("file", help="the .gguf file (Q4_K_M, Q8_0, F16, ...; qwen2, llama or gemma2)")
    ip.add_argument("--name", help="name to use with --model (default: the file's name)")
    ip.add_argument("--no-mlx", action="store_true", help="skip the 4-bit MLX copy (torch engine only)")
    ip.set_defaults(func=cmd_models_import)

    ep = adapters_sub.add_parser("export", help="write a task's adapter as a PEFT or MLX folder")
    ep.add_argument("task", choices=task_names())
    ep.add_argument("--format", choices=("peft", "mlx"), required=True,
                    help="peft: loads with PeftModel.from_pretrained (vLLM, LoRAX); mlx: mlx-lm")
    ep.add_argument("--out", required=True, help="the folder to write (must not exist or be empty)")
    ep.add_argument("--base-model", help="base_model_name_or_path to record (default: the adapter's own)")
    ep.set_defaults(func=cmd_adapters_export)


def cmd_models_import(args) -> int:
    from app.gguf_import import import_gguf

    import_gguf(args.file, name=args.name, mlx=False if args.no_mlx else None,
                say=lambda s: print(s, file=sys.stderr, flush=True))
    return 0


def cmd_adapters_export(args) -> int:
    from app.engine.adapter_format import read_adapter, write_mlx, write_peft
    from app.engine.base import EngineError
    from app.engine.store import adapter_folder

    folder = adapter_folder(args.task)
    if folder is None:
        raise EngineError(f"task {args.task!r} has no adapter to export (add one: loradesk adapters add "
                          f"{args.task} FOLDER)")
    out = Path(args.out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise EngineError(f"{out} already exists and is not an empty folder; choose a new --out")
    weights = read_adapter(folder)
    if args.format == "peft":
        write_peft(weights, out, base_model_name=args.base_model)
    else:
        if args.base_model:
            weights.base_model = args.base_model
        write_mlx(weights, out)
    print(f"wrote {args.task}'s {weights.format.upper()} adapter {folder.name!r} as a {args.format.upper()} "
          f"folder: {out} (rank {weights.rank}, {len(weights.modules)} layers, base {weights.base_model or '?'})")
    return 0
