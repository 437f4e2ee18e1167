"""A distill run's OUT/report.json, OUT/report.md and PNG plots, and the quality benchmark's Markdown table.

Plots are drawn on matplotlib `Figure` objects rendered by the Agg canvas, never through pyplot:
no GUI backend is chosen and no global state is touched, so this works headless, in Ray workers,
and next to a user's own pyplot session.
"""
import json
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from train.scoring import bucket_start

PLOTS = {"loss": "loss.png", "intervention_by_position": "intervention_by_position.png", "rouge_by_length": "rouge_by_length.png"}
NOTE = ("ROUGE-L (0-100) of student samples against the references: higher is better. "
        "Teacher NLL (nats per token) of the student's samples under the teacher: lower is better.")


def write_report(out_dir: str | Path, report: dict) -> dict:
    """Write report.json, report.md and the plots into out_dir; returns {"json", "md", "plots": {name: path}}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots = {name: out / file for name, file in PLOTS.items()}
    method = report.get("method") or "?"
    _plot_loss(report.get("loss_curve") or [], method, plots["loss"])
    _plot_interventions(report.get("intervention_by_position") or {}, method, plots["intervention_by_position"])
    _plot_rouge_by_length(report.get("before") or {}, report.get("after") or {}, method, plots["rouge_by_length"])
    json_path, md_path = out / "report.json", out / "report.md"
    json_path.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    md_path.write_text(_markdown(report), encoding="utf-8")
    return {"json": str(json_path), "md": str(md_path), "plots": {name: str(path) for name, path in plots.items()}}


def write_quality_table(path_md: str | Path, rows: list[dict]) -> str:
    """The quality benchmark's table: one row per method, overall and for the longest-answer bucket."""
    lines = [
        "| Method | ROUGE-L | Teacher NLL | Longest bucket | ROUGE-L (longest) | Teacher NLL (longest) | Tokens/s | Steps | Train tokens |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['method']} | {_num(r['rouge_l'], 2)} | {_num(r['teacher_nll'], 3)} | {r.get('longest_bucket') or '-'} "
                     f"| {_num(r['rouge_l_longest'], 2)} | {_num(r['teacher_nll_longest'], 3)} | {_num(r['tokens_per_s'], 1)} "
                     f"| {r['steps']} | {r['train_tokens']} |")
    path = Path(path_md)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n\n" + NOTE + "\n", encoding="utf-8")
    return str(path)


# Markdown

def _markdown(r: dict) -> str:
    data, staleness = r.get("data") or {}, r.get("staleness_steps") or {}
    curve = r.get("loss_curve") or []
    lines = [
        f"# Distillation report: {r.get('method')}",
        "",
        f"- **Method:** `{r.get('method')}`, preset `{r.get('preset')}`",
        f"- **Training:** {r.get('steps')} steps in {_num(r.get('seconds'), 1)} s, {_num(r.get('tokens_per_s'), 1)} tokens/s",
        f"- **Data:** {data.get('source')}: {data.get('train_examples')} training and {data.get('val_examples')} held-out examples",
        f"- **References:** {data.get('references')}",
        f"- **Student:** `{r.get('student_dir')}` (loads with `AutoModelForCausalLM.from_pretrained`)",
        "",
        "## Held-out quality, before and after training",
        "",
        *_quality_table(r.get("before") or {}, r.get("after") or {}),
        "",
        NOTE + " Length buckets are by reference length in tokens.",
        "",
        "## Training",
        "",
        f"- **Loss:** {_num(curve[0]['loss'], 4)} at step {curve[0]['step']} to {_num(curve[-1]['loss'], 4)} at step {curve[-1]['step']}"
        if curve else "- **Loss:** no steps recorded",
        _held_out_kl(r.get("val_kl_to_teacher") or {}),
        f"- **Staleness of the generation actor's weights:** mean {_num(staleness.get('mean'), 2)} steps, max {staleness.get('max', '-')} steps",
        f"- **Teacher-pass saving:** {_flat(r.get('teacher_pass_saving')) or 'none recorded'}",
        f"- **Teacher share by position:** {_shares(r.get('intervention_by_position'))}",
        "",
        "## Plots",
        "",
        "![Training loss](loss.png)",
        "",
        "![Teacher share by position](intervention_by_position.png)",
        "",
        "![ROUGE-L by reference length, before and after](rouge_by_length.png)",
        "",
        "## Config",
        "",
        "```json",
        json.dumps(r.get("config") or {}, indent=2, default=str),
        "```",
        "",
    ]
    return "\n".join(lines)


def _quality_table(before: dict, after: dict) -> list[str]:
    lines = ["| Slice | Samples | ROUGE-L before | ROUGE-L after | Δ ROUGE-L | Teacher NLL before | Teacher NLL after | Δ NLL |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    slices = [("all", before, after)] + [(f"{b} tokens", (before.get("by_length") or {}).get(b) or {}, (after.get("by_length") or {}).get(b) or {})
                                         for b in _buckets(before, after)]
    for name, b, a in slices:
        lines.append(f"| {name} | {a.get('samples', b.get('samples', '-'))} "
                     f"| {_num(b.get('rouge_l'), 2)} | {_num(a.get('rouge_l'), 2)} | {_delta(b.get('rouge_l'), a.get('rouge_l'), 2)} "
                     f"| {_num(b.get('teacher_nll'), 3)} | {_num(a.get('teacher_nll'), 3)} | {_delta(b.get('teacher_nll'), a.get('teacher_nll'), 3)} |")
    return lines


def _buckets(before: dict, after: dict) -> list[str]:
    return sorted(set(before.get("by_length") or {}) | set(after.get("by_length") or {}), key=bucket_start)


def _num(x, digits: int) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _delta(before, after, digits: int) -> str:
    return "-" if before is None or after is None else f"{after - before:+.{digits}f}"


def _flat(value, prefix: str = "") -> str:
    """A nested dict as "a: 1, b.c: 2" for one Markdown line."""
    if not isinstance(value, dict):
        return f"{prefix}: {value}" if prefix else str(value)
    return ", ".join(_flat(v, f"{prefix}.{k}" if prefix else str(k)) for k, v in value.items())


def _shares(shares: dict | None) -> str:
    if not shares:
        return "no teacher interventions for this method"
    return ", ".join(f"{b}: {100 * shares[b]:.1f}%" for b in sorted(shares, key=bucket_start))


# Plots

def _save(fig: Figure, path: Path) -> None:
    FigureCanvasAgg(fig)  # the Agg canvas renders the PNG; no display needed
    fig.savefig(path, dpi=110)


def _plot_loss(curve: list[dict], method: str, path: Path) -> None:
    fig = Figure(figsize=(6.4, 4), layout="constrained")
    ax = fig.add_subplot()
    if curve:
        steps = [p["step"] for p in curve]
        ax.plot(steps, [p["loss"] for p in curve], color="tab:blue", marker="." if len(curve) < 50 else None, label="loss")
        ax.set_ylabel("loss", color="tab:blue")
        if any(p.get("lr") is not None for p in curve):
            lr = ax.twinx()
            lr.plot(steps, [float("nan") if p.get("lr") is None else p["lr"] for p in curve], color="tab:gray", linestyle="--", label="learning rate")
            lr.set_ylabel("learning rate", color="tab:gray")
    else:
        ax.text(0.5, 0.5, "no training steps recorded", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(f"{method}: training loss")
    _save(fig, path)


def _plot_interventions(shares: dict, method: str, path: Path) -> None:
    fig = Figure(figsize=(6.4, 4), layout="constrained")
    ax = fig.add_subplot()
    if shares:
        buckets = sorted(shares, key=bucket_start)
        bars = ax.bar(buckets, [100 * shares[b] for b in buckets], color="tab:orange")
        ax.bar_label(bars, fmt="%.1f%%")
        ax.set_xlabel("position in the answer (tokens)")
        ax.set_ylabel("teacher-written tokens (%)")
        ax.set_ylim(0, max(100 * max(shares.values()) * 1.15, 1))
    else:
        ax.text(0.5, 0.5, f"no teacher interventions recorded for {method}:\nthe student's answers hold no teacher-written tokens",
                ha="center", va="center", wrap=True, transform=ax.transAxes)
        ax.set_axis_off()
    ax.set_title(f"{method}: teacher share by position")
    _save(fig, path)


def _plot_rouge_by_length(before: dict, after: dict, method: str, path: Path) -> None:
    groups = ["all", *_buckets(before, after)]

    def values(summary: dict) -> list[float]:
        slices = [summary] + [(summary.get("by_length") or {}).get(b) or {} for b in groups[1:]]
        return [float("nan") if s.get("rouge_l") is None else s["rouge_l"] for s in slices]

    fig = Figure(figsize=(6.4, 4), layout="constrained")
    ax = fig.add_subplot()
    width, xs = 0.38, range(len(groups))
    top = 1.0
    for offset, label, summary, color in ((-width / 2, "before", before, "tab:gray"), (width / 2, "after", after, "tab:green")):
        heights = values(summary)
        bars = ax.bar([x + offset for x in xs], heights, width, label=label, color=color)
        ax.bar_label(bars, fmt="%.1f", fontsize=8)
        top = max([top, *(h for h in heights if h == h)])  # h == h skips NaN (a bucket one side lacks)
    ax.set_ylim(0, top * 1.25)  # room for the labels and the legend
    ax.set_xticks(list(xs), groups)
    ax.set_xlabel("reference length (tokens)")
    ax.set_ylabel("ROUGE-L")
    ax.set_title(f"{method}: ROUGE-L by reference length")
    ax.legend(loc="upper left", ncols=2)
    _save(fig, path)


def _held_out_kl(kl: dict) -> str:
    """The trainer's forward KL to the teacher on the held-out references, at the first and last step."""
    if "start" not in kl or "end" not in kl:
        return "- **Held-out KL(teacher || student):** not measured"
    return (f"- **Held-out KL(teacher || student)** on the references (top-k + rest buckets): "
            f"{_num(kl['start']['kl'], 3)} at step {kl['start']['step']} to {_num(kl['end']['kl'], 3)} at step {kl['end']['step']}")
