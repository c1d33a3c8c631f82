"""Conversion commands: `loradesk models import FILE.gguf` and `loradesk adapters export TASK`.

They join the `models` and `adapters` groups that app/cli_core.py creates (it calls
`add_commands` with those groups' subparsers).
"""
from __future__ import annotations
# The app's layers are imported inside the commands: `loradesk --help` imports this module (app/cli.py)
# and would otherwise pay for numpy, the engines and the Hub (python -X importtime -m app --help).

import sys

from app.engine import ENGINES as ENGINE_CHOICES


def add_commands(models_sub, adapters_sub) -> None:
    from app.store import EXPORT_FORMATS
    from app.tasks import task_names

    ip = models_sub.add_parser("import", help="import a GGUF model file: kept as it is for llamacpp, "
                               "dequantized for torch/mlx")
    ip.add_argument("file", help="the .gguf file (Q4_K_M, Q8_0, F16, ...; qwen2, llama or gemma2)")
    ip.add_argument("--name", help="name to use with --model (default: the file's name)")
    ip.add_argument("--no-mlx", action="store_true", help="skip the 4-bit MLX copy (torch engine only)")
    ip.add_argument("--engine", choices=ENGINE_CHOICES,
                    help="the engine to import for (default: this machine's); llamacpp keeps the GGUF as it is")
    ip.set_defaults(func=cmd_models_import)

    ep = adapters_sub.add_parser("export", help="write a task's adapter as a PEFT or MLX folder")
    ep.add_argument("task", choices=task_names())
    ep.add_argument("--format", choices=EXPORT_FORMATS, required=True,
                    help="peft: loads with PeftModel.from_pretrained (vLLM, LoRAX); mlx: mlx-lm")
    ep.add_argument("--out", required=True, help="the folder to write (must not exist or be empty)")
    ep.add_argument("--base-model", help="base_model_name_or_path to record (default: the adapter's own)")
    ep.set_defaults(func=cmd_adapters_export)


def cmd_models_import(args) -> int:
    from app.gguf_import import import_gguf
    from app.session import choose_engine

    engine = choose_engine(args.engine)
    import_gguf(args.file, name=args.name, mlx=False if args.no_mlx else None,
                say=lambda s: print(s, file=sys.stderr, flush=True), engine=engine)
    return 0


def cmd_adapters_export(args) -> int:
    from app.store import export

    print(export(args.task, args.out, args.format, base_model=args.base_model))
    return 0
