"""The errors every layer raises and catches. Its own module, importing nothing of the app, so a
helper (the JSON files, names, the store, the Hub) never reaches into the engine for them."""
from __future__ import annotations


class EngineError(RuntimeError):
    """A problem the user can act on; the message says what to do. The engine keeps its state."""


class AdapterError(EngineError):
    """An adapter folder that cannot be used with the loaded model."""


class ModelUnavailable(EngineError):
    """The model is not on this machine and cannot be downloaded now."""
