"""The one check for names that become folder names: adapters (`adapters/<task>/<name>`) and models
(`models/<name>`). Store, model import, CLI and app all call `check_name`, so a name can never point
outside its folder (`..`, `a/b`), be the folder itself (`''`, `.`), or collide with the store's own files.
"""
from __future__ import annotations

import re

from app.errors import EngineError

# Windows device names: a file called CON or nul.txt cannot be created there.
_DEVICES = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))}
_RESERVED = {"registry.json", "registry.json.lock"}  # the stores' own files
# Control characters and what Windows forbids in file names; '/' and '\\' are path separators.
_BAD_CHARS = re.compile(r'[\x00-\x1f<>:"/\\|?*]')
MAX_LEN = 100


class BadName(EngineError):
    """A name that cannot be used for an adapter or model."""


def check_name(name: str | None, kind: str = "adapter") -> str:
    """Return `name` if it is usable as a folder name in the store, else raise a clear error."""
    if name is None or not str(name).strip():
        raise BadName(f"the {kind} name is empty; give one with --name")
    name = str(name)
    why = None
    if name in (".", ".."):
        why = "is a folder reference, not a name"
    elif _BAD_CHARS.search(name):
        bad = _BAD_CHARS.search(name).group()
        why = "contains a path separator" if bad in "/\\" else f"contains {bad!r}, which file names cannot hold"
    elif name.startswith("."):
        why = "starts with '.' (the store uses those for temporary folders)"
    elif name != name.strip() or name.endswith("."):
        why = "starts or ends with a space or ends with '.'"
    elif name.lower() in _RESERVED or name.split(".")[0].lower() in _DEVICES:
        why = "is a reserved name"
    elif len(name) > MAX_LEN:
        why = f"is longer than {MAX_LEN} characters"
    if why:
        raise BadName(f"{kind} name {name!r} {why}; use letters, digits, '-', '_' or '.' "
                         "(e.g. --name math-v2)")
    return name
