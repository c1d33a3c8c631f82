"""`loradesk serve`: the OpenAI-compatible API on localhost."""
from __future__ import annotations
# The app's layers are imported inside the commands: `loradesk --help` imports this module (app/cli.py)
# and would otherwise pay for numpy, the engines and the Hub (python -X importtime -m app --help).

import os
import sys


def register(sub, common):
    p = sub.add_parser("serve", parents=[common],
                       help="serve the model and its task adapters over an OpenAI-compatible API")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; any other needs --api-key)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--api-key", default=os.environ.get("LORADESK_API_KEY"),
                   help="require 'Authorization: Bearer KEY' (default: $LORADESK_API_KEY; none on 127.0.0.1)")
    p.add_argument("--max-queue", type=int, default=16, help="requests queued or running before 503 (default 16)")
    p.add_argument("--max-tokens-limit", type=int, default=4096, help="largest max_tokens accepted (default 4096)")
    p.set_defaults(func=cmd_serve)


def cmd_serve(args) -> int:
    try:
        from app.serve.api import Backend, ServeConfig, create_app
        from app.serve.queue import SerialExecutor
        from app.serve.runner import bind, run_foreground, url_of
    except ImportError as e:
        raise ValueError(f"the server needs fastapi and uvicorn ({e}); pip install fastapi uvicorn") from None

    config = ServeConfig(host=args.host, port=args.port, api_key=args.api_key, max_pending=args.max_queue,
                         max_tokens_limit=args.max_tokens_limit)  # refuses a public host without a key
    sock = bind(config.host, config.port)  # an address in use fails before the model loads
    try:
        from app.serve import catalog
        from app.session import open_session

        engine = open_session(args.model, args.engine).engine
        app = create_app(Backend(lambda: engine, SerialExecutor()), config)
        models = ", ".join(m["id"] + ("" if m["adapter"] or m["id"] == "base" else " (no adapter)")
                           for m in catalog.models(engine))
        print(f"serving {engine.model_info.ref} ({engine.kind}) at {url_of(sock)}/v1\nmodels: {models}\n"
              "Ctrl-C stops", file=sys.stderr)
        run_foreground(app, sock)
    finally:
        sock.close()
    return 0
