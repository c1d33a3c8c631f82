"""Numbers as people read them: sizes, durations, download progress, training metadata (Qt-free)."""
from __future__ import annotations


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def human_duration(s: float) -> str:
    s = int(max(0, s))
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 60} min {s % 60:02d} s" if s >= 60 else f"{s} s"


def progress_text(done: int, total: int, elapsed: float) -> str:
    """'312.0 MB of 940.0 MB · 10.4 MB/s · 1 min 00 s left'."""
    speed = done / elapsed if elapsed > 0 else 0.0
    parts = [f"{human_bytes(done)} of {human_bytes(total)}" if total else human_bytes(done)]
    if speed > 0:
        parts.append(f"{human_bytes(speed)}/s")
        if total > done:
            parts.append(f"{human_duration((total - done) / speed)} left")
    return " · ".join(parts)


def training_summary(meta: dict | None) -> str:
    """A short line from an adapter's training metadata (loradesk.json)."""
    if not meta:
        return ""
    parts = []
    steps = meta.get("steps") or meta.get("iters")
    if steps:
        parts.append(f"{steps} steps")
    for key, label in (("final_train_loss", "loss"), ("train_loss", "loss"), ("final_valid_loss", "valid"),
                       ("valid_loss", "valid")):
        v = meta.get(key)
        if isinstance(v, (int, float)) and label not in " ".join(parts):
            parts.append(f"{label} {v:.3f}")
    examples = meta.get("examples")
    if isinstance(examples, dict) and examples.get("train"):
        parts.append(f"{examples['train']} examples")
    data = meta.get("datasets")
    if isinstance(data, dict):
        parts.append(", ".join(data))
    elif isinstance(data, list):
        parts.append(", ".join(str(d.get("id", d)) if isinstance(d, dict) else str(d) for d in data))
    return " · ".join(parts)
