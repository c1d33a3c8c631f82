"""The layers point down (STYLE.md, 14): checked on the source with `ast`, so a late import inside a
function counts as much as one at the top of a file."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 450
# What the engine must not know about: naming and downloading models, the store, the Hub, the
# request planner and everything that drives it.
ABOVE_ENGINE = ("app.models", "app.hub", "app.store", "app.session", "app.plan", "app.cli", "app.ui",
                "app.serve", "app.bench", "app.router", "training")


def _sources():
    return sorted(p for d in ("app", "training") for p in (ROOT / d).rglob("*.py"))


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in the file, top-level or inside a function; `from X import
    y` also counts X.y (y may be a module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    here = _module(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            out += [(node.lineno, base)] + [(node.lineno, f"{base}.{a.name}") for a in node.names]
    return out


def _under(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") or (p.endswith("cli") and name.startswith(p)) for p in prefixes)


def _violations(where, forbidden) -> list[str]:
    found = []
    for path in _sources():
        rel = path.relative_to(ROOT).as_posix()
        if not where(rel):
            continue
        for line, name in _imports(path):
            if _under(name, forbidden):
                found.append(f"{rel}:{line} imports {name}")
    return sorted(set(found))


def test_nothing_outside_the_gui_package_imports_it():
    assert _violations(lambda rel: not rel.startswith("app/ui/"), ("app.ui",)) == []


def test_the_engine_imports_nothing_above_it():
    assert _violations(lambda rel: rel.startswith("app/engine/"), ABOVE_ENGINE) == []


def test_the_gui_imports_no_command_line_module():
    assert _violations(lambda rel: rel.startswith("app/ui/"), ("app.cli",)) == []


def test_the_task_tab_does_not_import_its_subclasses():
    """CodeTab is a TaskTab; task_tabs.make_tab picks a task's tab class, so the two never import each other."""
    assert _violations(lambda rel: rel == "app/ui/task_tab.py", ("app.ui.code_tab", "app.ui.task_tabs")) == []


def test_no_source_file_is_over_the_size_limit():
    long = {p.relative_to(ROOT).as_posix(): n for p in _sources()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert long == {}, f"split these by concern (at most {MAX_LINES} lines each): {long}"


def test_no_import_circles():
    """Strongly connected components of the import graph of app/ and training/ (Tarjan): none
    larger than one module, so every layer can be read and tested without the ones above it."""
    modules = {_module(p): p for p in _sources()}

    def owner(name):
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name

    graph = {m: {o for _, n in _imports(p) if (o := owner(n)) and o != m and o not in ("app", "training")}
             for m, p in modules.items()}
    index, low, stack, on, circles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
                on.discard(component[-1])
            if len(component) > 1:
                circles.append(sorted(component))

    for m in sorted(modules):
        if m not in index:
            visit(m)
    assert circles == []
