"""`loradesk gui` (and plain `loradesk`): start the desktop app."""
from __future__ import annotations


def register(sub, common):
    p = sub.add_parser("gui", parents=[common], help="start the desktop app (the default command)")
    p.add_argument("--quit-after", type=float, metavar="SECONDS",
                   help="smoke test: quit once the model has loaded or failed (prints start-up times), at the "
                        "latest SECONDS after the window shows (then exit 1)")
    p.add_argument("--screenshot", metavar="PNG",
                   help="with --quit-after: save the window as a PNG when the model has loaded, just before quitting")
    p.set_defaults(func=cmd_gui)


def cmd_gui(args) -> int:
    from app.ui.app import run

    return run(model=args.model, engine=args.engine, quit_after=args.quit_after,
               screenshot=args.screenshot)
