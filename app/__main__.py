"""`python -m app`, and the entry point of the PyInstaller bundle (packaging/loradesk.spec)."""
import multiprocessing
import sys

# A bundle has no `python` binary, so the benchmark's sandbox runs its prelude through the bundle's
# own executable: `loradesk --python-c CODE` behaves like `python -I -c CODE` (app/bench/sandbox.py).
PYTHON_C = "--python-c"


def main() -> int:
    # Benchmark and training jobs run in spawned processes; in a bundle these re-enter here and
    # freeze_support() turns them into the worker instead of a second app.
    multiprocessing.freeze_support()
    if len(sys.argv) > 2 and sys.argv[1] == PYTHON_C:
        code, sys.argv = sys.argv[2], ["-c", *sys.argv[3:]]
        exec(compile(code, "<string>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
        return 0
    from app.cli import main as cli_main

    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
