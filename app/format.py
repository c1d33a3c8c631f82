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


def clock(s: float) -> str:
    """82 -> '1:22', 3723 -> '1:02:03'."""
    s = int(max(0, round(s)))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def progress_text(p) -> str:
    """A download's progress (app.hub.DownloadProgress): '312.0 MB / 1.0 GB · 8.4 MB/s · ETA 1:22'."""
    parts = [f"{human_bytes(p.done)} / {human_bytes(p.total)}" if p.total else human_bytes(p.done)]
    if p.speed > 0:
        parts.append(f"{human_bytes(p.speed)}/s")
    if p.eta_s is not None and p.total > p.done:
        parts.append(f"ETA {clock(p.eta_s)}")
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
