"""The local OpenAI-compatible server: a thin layer over the engine and the task records.

api.py (routes, parsing, errors), queue.py (the single-engine request queue), catalog.py (model
ids), runner.py (uvicorn), cli.py (`loradesk serve`). No torch or mlx import in this package.
"""
