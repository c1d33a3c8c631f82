"""The quality report: results JSON + CSV, Markdown and HTML with the milestone table, PNG charts,
and — separately, clearly labelled — published reference figures with their sources.

Measured cells come only from this run's results; the published figures never enter them.
"""
from __future__ import annotations

import csv
import html
import json
import os
from pathlib import Path

# Conventional metric names, in display order. Accuracies are fractions (shown as %), ROUGE/BLEU 0-100.
METRIC_ORDER = ("pass@1", "exact_match", "acc", "acc_norm", "rouge1", "rouge2", "rougeL", "bleu", "chrf", "copy_bleu",
                "annotation_accuracy")
FRACTIONS = {"pass@1", "exact_match", "acc", "acc_norm", "annotation_accuracy"}

# Published figures (percent) for reference only, each with its source. Not measured here; settings
# (shots, prompts, harness) differ from this benchmark's, so they are not comparable cell by cell.
PUBLISHED = (
    {"model": "Mistral 7B (v0.1 base)", "benchmark": "HumanEval pass@1", "value": 30.5,
     "source": "Jiang et al., 'Mistral 7B', arXiv:2310.06825, Table 2", "url": "https://arxiv.org/abs/2310.06825"},
    {"model": "Mistral 7B (v0.1 base)", "benchmark": "GSM8K (maj@8)", "value": 52.2,
     "source": "Jiang et al., 'Mistral 7B', arXiv:2310.06825, Table 2", "url": "https://arxiv.org/abs/2310.06825"},
    {"model": "Mistral 7B (v0.1 base)", "benchmark": "HellaSwag (0-shot)", "value": 81.3,
     "source": "Jiang et al., 'Mistral 7B', arXiv:2310.06825, Table 2", "url": "https://arxiv.org/abs/2310.06825"},
    {"model": "Mistral 7B (v0.1 base)", "benchmark": "MMLU (5-shot)", "value": 60.1,
     "source": "Jiang et al., 'Mistral 7B', arXiv:2310.06825, Table 2", "url": "https://arxiv.org/abs/2310.06825"},
    {"model": "Qwen2.5-Coder-0.5B-Instruct", "benchmark": "HumanEval pass@1", "value": 61.6,
     "source": "Hui et al., 'Qwen2.5-Coder Technical Report', arXiv:2409.12186 (instruct models table)",
     "url": "https://arxiv.org/abs/2409.12186"},
    {"model": "Qwen2.5-Coder-0.5B-Instruct", "benchmark": "MBPP pass@1", "value": 52.4,
     "source": "Hui et al., 'Qwen2.5-Coder Technical Report', arXiv:2409.12186 (instruct models table)",
     "url": "https://arxiv.org/abs/2409.12186"},
    {"model": "Qwen2.5-Coder-1.5B-Instruct", "benchmark": "HumanEval pass@1", "value": 70.7,
     "source": "Hui et al., 'Qwen2.5-Coder Technical Report', arXiv:2409.12186 (instruct models table)",
     "url": "https://arxiv.org/abs/2409.12186"},
    {"model": "Qwen2.5-Coder-1.5B-Instruct", "benchmark": "MBPP pass@1", "value": 69.2,
     "source": "Hui et al., 'Qwen2.5-Coder Technical Report', arXiv:2409.12186 (instruct models table)",
     "url": "https://arxiv.org/abs/2409.12186"},
)
# Mistral-7B-Instruct-v0.3's model card publishes no benchmark table; the figures above are the v0.1
# base model's from its paper. Qwen2.5-0.5B/1.5B-Instruct figures are left out until checked at the source.


def _fmt(metric: str, v) -> str:
    if v is None:
        return "—"
    return f"{100 * v:.1f}%" if metric in FRACTIONS else f"{v:.1f}"


def _row_name(run: dict) -> str:
    return run["task"]


def _columns(results: dict) -> list[str]:
    return list(results["meta"]["configs"])


def _cell(results: dict, task: str, config: str) -> str:
    runs = [r for r in results["runs"] if r["task"] == task and r["config"] == config and r["n"]]
    parts = []
    for r in runs:
        ms = r["metrics"]
        shown = [m for m in METRIC_ORDER if m in ms and m != "annotation_accuracy"]
        text = ", ".join(f"{m} {_fmt(m, ms[m])}" for m in shown)
        if r["adapter"] and task == "hellaswag":
            text = f"[{r['adapter']}] {text}"
        parts.append(f"{text} (n={r['n']}" + (", unisolated" if r.get("unisolated") else "") + ")")
    if parts:
        return "; ".join(parts)
    why = [s["reason"] for s in results["skipped"]
           if s["task"] in (task, "*") and s["config"] in (config, "*")]
    return "skipped" if why else "—"


def _model_name(ref: str) -> str:
    """A short name: a repo id as is; a folder by its name (and its parent's, for generic names like hf/)."""
    p = Path(ref)
    if not p.is_absolute() and ref.count("/") == 1:
        return ref
    return f"{p.parent.name}/{p.name}" if p.name in ("hf", "mlx", "mlx-4bit", "model") or len(p.name) < 4 else p.name


def _config_runs(results: dict, config: str) -> list[dict]:
    return [r for r in results["runs"] if r["config"] == config and r["n"]]


def _speed_rows(results: dict) -> list[tuple[str, list[str]]]:
    cols = _columns(results)
    rows = {"model": [], "weights + adapter MB": [], "resident memory MB (after load)": [],
            "peak memory GB": [], "time to first token s (median)": [], "prompt tok/s": [], "decode tok/s": []}
    for c in cols:
        runs = _config_runs(results, c)
        if not runs:
            for v in rows.values():
                v.append("—")
            continue
        gen = [r["speed"] for r in runs if r["speed"].get("decode_tps")]
        adapters = sorted({(r["adapter"], r["adapter_bytes"]) for r in runs if r["adapter"]})
        rows["model"].append(_model_name(runs[0]["model"]) + (f" ({runs[0]['quantization']})" if runs[0].get("quantization") else ""))
        ab = max((b for _, b in adapters), default=0)
        rows["weights + adapter MB"].append(f"{runs[0]['model_bytes'] / 1e6:.0f}" + (f" + {ab / 1e6:.1f}" if ab else ""))
        rows["resident memory MB (after load)"].append(f"{runs[0]['resident_bytes'] / 1e6:.0f}")
        rows["peak memory GB"].append(f"{max(s['peak_memory_gb'] for s in gen):.2f}" if gen else "—")
        rows["time to first token s (median)"].append(
            f"{sorted(s['ttft_median'] for s in gen)[len(gen) // 2]:.2f}" if gen else "—")
        for key, name in (("prompt_tps", "prompt tok/s"), ("decode_tps", "decode tok/s")):
            vals = [s[key] for s in gen if s.get(key)]
            rows[name].append(f"{sum(vals) / len(vals):.1f}" if vals else "—")
    return list(rows.items())


def milestone_markdown(results: dict) -> str:
    cols = _columns(results)
    tasks = results["meta"]["tasks"]
    lines = ["| task | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for t in tasks:
        lines.append(f"| {t} | " + " | ".join(_cell(results, t, c) for c in cols) + " |")
    for name, vals in _speed_rows(results):
        lines.append(f"| *{name}* | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def _published_markdown() -> str:
    lines = ["| model | benchmark | published | source |", "|---|---|---|---|"]
    for p in PUBLISHED:
        lines.append(f"| {p['model']} | {p['benchmark']} | {p['value']:.1f}% | [{p['source']}]({p['url']}) |")
    return "\n".join(lines)


def _notes(results: dict) -> list[str]:
    m = results["meta"]
    notes = [f"Engine: {m['engine']}; SLM: {m['slm']}; items: {m['selection']}; "
             f"wall time {m.get('wall_seconds', 0):.0f} s; started {m['started']}, finished {m.get('finished', '?')}"
             + (" (cancelled: partial)" if m.get("cancelled") else "") + "."]
    for r in results["runs"]:
        if r["n"] < r["n_selected"]:
            notes.append(f"{r['task']} / {r['config']}: {r['n']} of {r['n_selected']} selected items done "
                         f"(partial; rerun with --resume).")
    for r in results["runs"]:
        sp = r.get("speed", {})
        if sp.get("item_seconds"):
            notes.append(f"{r['task']} / {r['config']}" + (f" [{r['adapter']}]" if r["adapter"] else "") +
                         f": {r['n']} items in {sp['item_seconds']:.0f} s of item time (all sessions)" +
                         (f", {sp['generated_tokens']} tokens generated at {sp['decode_tps']:.1f} tok/s"
                          if sp.get("decode_tps") else "") + ".")
    for r in results["runs"]:
        ms = r.get("metrics", {})
        if "annotations_total" in ms:
            notes.append(f"{r['task']} / {r['config']}: calculator annotations «a=b» in the answers: "
                         f"{ms['annotations_right']} of {ms['annotations_total']} arithmetically right.")
    seen = set()
    for r in results["runs"]:
        if r["task"] not in seen:
            seen.add(r["task"])
            notes.append(f"{r['task']}: {r['method']}. Data: {r['source']}.")
        if r.get("errors"):
            notes.append(f"{r['task']} / {r['config']}: {r['errors']} item(s) failed with an engine error and scored 0.")
        if r.get("unisolated"):
            notes.append(f"{r['task']} / {r['config']}: unisolated: {r['unisolated']} of {r['n']} program(s) ran in "
                         "the sandbox without OS isolation (this system has no user namespaces / Seatbelt), "
                         "so model code could reach this machine's files and network.")
    for s in results["skipped"]:
        notes.append(f"Skipped {s['task']} / {s['config']}: {s['reason']}")
    return notes


def charts(results: dict, out_dir: Path) -> list[Path]:
    """One PNG bar chart per task (headline metric by configuration) and one of decode speed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    colors = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860"]
    for task in results["meta"]["tasks"]:
        runs = [r for r in results["runs"] if r["task"] == task and r["n"] and r["primary"] in r["metrics"]]
        if not runs:
            continue
        shown = [m for m in METRIC_ORDER if m in runs[0]["metrics"] and m != "annotation_accuracy"]
        labels = [r["config"] + (f"\n[{r['adapter']}]" if r["adapter"] and task == "hellaswag" else "") for r in runs]
        width = 0.8 / len(shown)
        fig, ax = plt.subplots(figsize=(max(4.5, 1.4 * len(runs) + 2), 3.6), dpi=110)
        top = 0.0
        for j, m in enumerate(shown):
            vals = [r["metrics"].get(m, 0.0) * (100 if m in FRACTIONS else 1) for r in runs]
            top = max(top, *vals)
            xs = [i + (j - (len(shown) - 1) / 2) * width for i in range(len(runs))]
            bars = ax.bar(xs, vals, width * 0.95, label=m, color=colors[j % len(colors)])
            for b, v in zip(bars, vals):
                ax.annotate(f"{v:.1f}", (b.get_x() + b.get_width() / 2, b.get_height()), ha="center",
                            va="bottom", fontsize=7)
        ax.set_xticks(range(len(runs)), [f"{lab}\n(n={r['n']})" for lab, r in zip(labels, runs)])
        frac = all(m in FRACTIONS for m in shown)
        ax.set_ylabel("%" if frac else "score (0-100)")
        ax.set_ylim(0, 100 if frac else max(10.0, top * 1.3))
        ax.set_title(f"{task} (measured)")
        ax.legend(fontsize=7, loc="upper right")
        fig.tight_layout()
        p = out_dir / f"chart_{task}.png"
        fig.savefig(p)
        plt.close(fig)
        paths.append(p)
    speeds = [(c, [r["speed"]["decode_tps"] for r in _config_runs(results, c) if r["speed"].get("decode_tps")])
              for c in _columns(results)]
    speeds = [(c, sum(v) / len(v)) for c, v in speeds if v]
    if speeds:
        fig, ax = plt.subplots(figsize=(max(4, 1.3 * len(speeds) + 2), 3.2), dpi=110)
        bars = ax.bar([c for c, _ in speeds], [v for _, v in speeds], color="#4C72B0")
        for b, (_, v) in zip(bars, speeds):
            ax.annotate(f"{v:.1f}", (b.get_x() + b.get_width() / 2, b.get_height()), ha="center", va="bottom", fontsize=8)
        ax.set_ylabel("decode tokens/s")
        ax.set_ylim(0, max(v for _, v in speeds) * 1.2)  # room for the value labels
        ax.set_title("decode speed (measured)")
        fig.tight_layout()
        p = out_dir / "chart_speed.png"
        fig.savefig(p)
        plt.close(fig)
        paths.append(p)
    return paths


def csv_rows(results: dict) -> list[dict]:
    rows = []
    for r in results["runs"]:
        for m, v in r["metrics"].items():
            if m in METRIC_ORDER:
                rows.append({"task": r["task"], "config": r["config"], "adapter": r["adapter"] or "",
                             "model": r["model"], "metric": m, "value": v, "n": r["n"],
                             "unisolated": r.get("unisolated", 0)})
    return rows


def _write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_report(results: dict, out_dir) -> dict[str, Path]:
    """Write results.json, results.csv, report.md, report.html and chart_*.png into `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "results.json", "csv": out_dir / "results.csv",
             "markdown": out_dir / "report.md", "html": out_dir / "report.html"}
    _write(paths["json"], json.dumps(results, indent=2, default=str))
    tmp = paths["csv"].with_suffix(".csv.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["task", "config", "adapter", "model", "metric", "value", "n", "unisolated"])
        w.writeheader()
        w.writerows(csv_rows(results))
    os.replace(tmp, paths["csv"])
    pngs = charts(results, out_dir)
    for p in pngs:
        paths[p.stem] = p

    md = ["# LoRA Desk quality benchmark", "",
          "## Milestone table (measured in this run)", "",
          "Rows: tasks; columns: configurations. Accuracies in %, ROUGE/BLEU/chrF on 0-100.", "",
          milestone_markdown(results), "", "## Notes", ""]
    md += [f"- {n}" for n in _notes(results)]
    md += ["", "## Charts", ""] + [f"![{p.stem}]({p.name})" for p in pngs]
    md += ["", "## Published reference figures (NOT measured here)", "",
           "From the models' papers and model cards; their prompts, shots and harnesses differ from this run's, "
           "so they are context, not entries of the table above.", "", _published_markdown(), ""]
    _write(paths["markdown"], "\n".join(md))
    _write(paths["html"], _html(results, pngs))
    return paths


def _html_table(head: list[str], rows: list[list[str]], cls: str = "") -> str:
    h = "".join(f"<th>{html.escape(c)}</th>" for c in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>'


def _html(results: dict, pngs: list[Path]) -> str:
    cols = _columns(results)
    rows = [[html.escape(t)] + [html.escape(_cell(results, t, c)) for c in cols] for t in results["meta"]["tasks"]]
    rows += [[f"<em>{html.escape(n)}</em>"] + [html.escape(v) for v in vals] for n, vals in _speed_rows(results)]
    pub = [[html.escape(p["model"]), html.escape(p["benchmark"]), f"{p['value']:.1f}%",
            f'<a href="{html.escape(p["url"])}">{html.escape(p["source"])}</a>'] for p in PUBLISHED]
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in _notes(results))
    imgs = "".join(f'<img src="{p.name}" alt="{p.stem}">' for p in pngs)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>LoRA Desk quality benchmark</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #bbb;padding:4px 8px;font-size:14px}}th{{background:#eee}}
table.published{{background:#fff8e6}}img{{margin:6px;border:1px solid #ddd}}</style></head><body>
<h1>LoRA Desk quality benchmark</h1>
<h2>Milestone table (measured in this run)</h2>
<p>Rows: tasks; columns: configurations. Accuracies in %, ROUGE/BLEU/chrF on 0-100.</p>
{_html_table(["task"] + cols, rows)}
<h2>Notes</h2><ul>{notes}</ul>
<h2>Charts</h2>{imgs}
<h2>Published reference figures (NOT measured here)</h2>
<p>From the models' papers and model cards; their prompts, shots and harnesses differ from this run's, so
they are context, not entries of the table above.</p>
{_html_table(["model", "benchmark", "published", "source"], pub, "published")}
</body></html>"""
