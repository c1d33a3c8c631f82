"""Build the LoRA Desk bundle with PyInstaller, then (with --check) prove it works headless.

    python packaging/build.py            # dist/loradesk/ (macOS: dist/LoRA Desk.app)
    python packaging/build.py --check    # ... and run the bundle's self-test and open its window

PyInstaller's work folder (build/pyinstaller) is kept between builds, so a rebuild after a code
change reuses the analysis of the unchanged libraries. --check runs, with QT_QPA_PLATFORM=offscreen
and a throw-away LORADESK_HOME: `loradesk self-test --gui` (tiny model, two adapters, every engine
in the bundle, then the main window loading the tiny model), then the plain app as a user starts it
(no model on this machine: it opens on the model manager) for a few seconds.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "packaging" / "loradesk.spec"


def bundle_paths(dist: Path) -> tuple[Path, Path]:
    """(folder to measure, executable) of the built bundle."""
    if sys.platform == "darwin":
        app = dist / "LoRA Desk.app"
        return app, app / "Contents" / "MacOS" / "loradesk"
    exe = dist / "loradesk" / ("loradesk.exe" if sys.platform == "win32" else "loradesk")
    return dist / "loradesk", exe


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file() and not f.is_symlink())


def build(dist: Path, work: Path, clean: bool) -> float:
    cmd = [sys.executable, "-m", "PyInstaller", "--noconfirm", "--log-level", "WARN",
           "--distpath", str(dist), "--workpath", str(work), str(SPEC)]
    if clean:
        cmd.insert(3, "--clean")
    print("+", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT)
    return time.perf_counter() - t0


def mlx_kernel_report(folder: Path) -> list[str]:
    """Every libmlx copy in the bundle, and whether MLX's Metal kernels sit beside it (macOS)."""
    lines = []
    for lib in sorted(folder.rglob("libmlx*")):
        beside = (lib.parent / "mlx.metallib").exists()
        note = "" if sys.platform != "darwin" else (" (mlx.metallib beside it)" if beside else " (NO mlx.metallib beside it)")
        lines.append(f"  {lib.relative_to(folder)}{note}")
    return lines


def run_bundle(exe: Path, args: list[str], home: Path, timeout: float) -> tuple[int, str, float]:
    env = {**os.environ, "QT_QPA_PLATFORM": os.environ.get("QT_QPA_PLATFORM", "offscreen"),
           "LORADESK_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run([str(exe), *args], capture_output=True, text=True, env=env, timeout=timeout)
    return proc.returncode, proc.stdout + proc.stderr, time.perf_counter() - t0


def check(exe: Path, shot: Path) -> bool:
    ok = True
    with tempfile.TemporaryDirectory(prefix="loradesk-bundle-") as tmp:
        home = Path(tmp)
        rc, out, secs = run_bundle(exe, ["--help"], home, 300)
        print(f"bundle --help: exit {rc} in {secs:.2f} s (first run; start-up of the executable)")
        rc, out, secs = run_bundle(exe, ["--help"], home, 300)
        print(f"bundle --help: exit {rc} in {secs:.2f} s (warm)")
        ok &= rc == 0
        rc, out, secs = run_bundle(exe, ["self-test", "--gui"], home, 900)
        print(out.rstrip())
        print(f"bundle self-test --gui: exit {rc} in {secs:.1f} s")
        ok &= rc == 0
        # --quit-after is a timeout: with no model to load the window settles and quits at once.
        rc, out, secs = run_bundle(exe, ["gui", "--quit-after", "120", "--screenshot", str(shot)], home, 300)
        print(out.rstrip())
        print(f"bundle gui (no model on this machine) opened and quit: exit {rc} in {secs:.1f} s; window: {shot}")
        # No model here: the window opens on the model manager (offline message), which is not a failure.
        ok &= "gui: window shown" in out and "Traceback" not in out and shot.exists()
    return ok


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dist", type=Path, default=ROOT / "dist")
    p.add_argument("--work", type=Path, default=ROOT / "build" / "pyinstaller")
    p.add_argument("--clean", action="store_true", help="drop PyInstaller's cache and rebuild everything")
    p.add_argument("--check", action="store_true", help="run the bundle's self-test and open its window")
    p.add_argument("--no-build", action="store_true", help="only check an existing bundle")
    args = p.parse_args(argv)
    folder, exe = bundle_paths(args.dist)
    if not args.no_build:
        secs = build(args.dist, args.work, args.clean)
        print(f"built in {secs / 60:.1f} min")
    if not exe.exists():
        print(f"build.py: no bundle at {exe}", file=sys.stderr)
        return 1
    print(f"bundle: {folder} ({folder_bytes(folder) / 1e9:.2f} GB)")
    print("\n".join(mlx_kernel_report(folder)) or "  (no MLX in this bundle)")
    if args.check and not check(exe, args.dist / "bundle-gui.png"):
        print("build.py: the bundle FAILED its checks", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
