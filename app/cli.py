"""`loradesk`: the command line. Plain `loradesk` starts the desktop app.

Each command group lives in its own module exposing `register(subparsers, common)`; this file only
assembles them, so a group can be added without touching the others.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

# Modules that add subcommands; a missing optional module (e.g. no Qt in a server install) is skipped.
# All are imported to build the parser, so they import the app's layers inside their commands.
COMMAND_MODULES = (
    "app.cli_core",      # ask, adapters, info, models
    "app.cli_route",     # route, adapters export-mix (after cli_core: joins its adapters group)
    "app.cli_chats",     # chats list / show / export / delete / bench
    "app.bench.cli",     # bench speed / quality
    "training.cli",      # train, data preview
    "app.ui.cli",        # gui
    "app.selftest",      # self-test
    "app.serve.cli",     # serve (OpenAI-compatible API)
)


def common_parser() -> argparse.ArgumentParser:
    """Options every model-using command takes."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--model", help="base model: hub repo id, local folder or registered name "
                   "(default: the app's current model)")
    from app.engine import ENGINES

    p.add_argument("--engine", choices=ENGINES,
                   help="inference engine (default: mlx on Apple Silicon, torch with CUDA, llamacpp elsewhere; "
                   "`loradesk info` says which and why)")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loradesk", description="One small language model, one hot-swapped LoRA adapter per task.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug output to stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    common = common_parser()
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name and (e.name == name or name.startswith(e.name + ".")):
                continue  # the group is not built (yet)
            raise
        module.register(sub, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if args.command is None:
        if "gui" in parser._subparsers._group_actions[0].choices:  # noqa: SLF001
            args = parser.parse_args(["gui"])
        else:
            parser.print_help()
            return 0
    from app.errors import EngineError

    try:
        return int(args.func(args) or 0)
    except EngineError as e:
        print(f"loradesk: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nloradesk: interrupted", file=sys.stderr)
        return 130
    except ValueError as e:  # bad arguments found past argparse (e.g. an unknown task option)
        print(f"loradesk: error: {e}", file=sys.stderr)
        return 2
    finally:
        sys.stdout.flush()
        from app.jsonfile import pop_notices

        for notice in pop_notices():  # a damaged registry or settings file that was recovered
            print(f"loradesk: note: {notice}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
