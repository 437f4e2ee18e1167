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

from train.allocator import KEEP_FREED
from train.methods import ENGINE_METHODS
from train.phases import PHASES
from train.scoring import BETTER, METRICS, bucket_start, labels

PLOTS = {"loss": "loss.png", "intervention_by_position": "intervention_by_position.png", "rouge_by_length": "rouge_by_length.png"}
NOTE = ("ROUGE-L (0-100) of student samples against the references: higher is better. "
        "Teacher NLL (nats per token) of the student's samples under the teacher: lower is better. "
        "Repetition: the share of a sample's word 3-grams that already occurred earlier in it: lower is better. "
        "KL: full-vocabulary KL(teacher||student) in nats per token on the held-out references: lower is better.")
DIGITS = {"rouge_l": 2, "teacher_nll": 3, "repetition": 3, "distinct_2": 3, "looping": 3, "kl": 3, "top1_agreement": 3}
SHORT = {"rouge_l": "ROUGE-L", "teacher_nll": "Teacher NLL", "repetition": "Repetition", "distinct_2": "Distinct-2", "looping": "Looping",
         "kl": "KL (full vocab)", "top1_agreement": "Top-1"}
QUALITY_COLUMNS = ("rouge_l", "teacher_nll", "repetition", "kl", "top1_agreement")  # the bench table, overall
LONGEST_COLUMNS = ("rouge_l", "teacher_nll", "repetition")  # ... and in the longest-answer bucket
GREEDY_COLUMNS = ("rouge_l", "repetition", "looping")  # ... and of the greedy answers, overall


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
    """The quality benchmark's table: one row per method, overall and for the longest-answer bucket.

    A row: {"method", "longest_bucket", "all": {metric: {"value", and for a trained method "diff",
    "low", "high" against the student before training}}, "longest": the same, "tokens_per_s",
    "steps", "train_tokens"}."""
    header = ["Method", *(SHORT[m] for m in QUALITY_COLUMNS), *(f"Greedy {SHORT[m]}" for m in GREEDY_COLUMNS), "Longest bucket",
              *(f"{SHORT[m]} (longest)" for m in LONGEST_COLUMNS), "Tokens/s", "Steps", "Train tokens"]
    lines = ["| " + " | ".join(header) + " |",
             "|---|" + "---:|" * (len(QUALITY_COLUMNS) + len(GREEDY_COLUMNS)) + "---|" + "---:|" * (len(LONGEST_COLUMNS) + 3)]
    for r in rows:
        cells = [r["method"], *(_cell(m, (r.get("all") or {}).get(m)) for m in QUALITY_COLUMNS),
                 *(_cell(m, (r.get("greedy") or {}).get(m)) for m in GREEDY_COLUMNS), r.get("longest_bucket") or "-",
                 *(_cell(m, (r.get("longest") or {}).get(m)) for m in LONGEST_COLUMNS),
                 _num(r.get("tokens_per_s"), 1), str(r["steps"]), str(r["train_tokens"])]
        lines.append("| " + " | ".join(cells) + " |")
    path = Path(path_md)
    path.parent.mkdir(parents=True, exist_ok=True)
    note = NOTE + (" Greedy columns: the same of one greedy answer per prompt; looping: the share of answers whose repetition "
                   "is above 0.3. A trained method's cell: its value (after training - before [95% interval of the difference, "
                   "paired bootstrap over prompts]).")
    path.write_text("\n".join(lines) + "\n\n" + note + "\n", encoding="utf-8")
    return str(path)


def headline(before: dict, after: dict | None = None, difference: dict | None = None) -> str:
    """One line of the main figures: "ROUGE-L 8.83 -> 12.10 [+1.02, +5.40], ..." (or one side's alone)."""
    parts = []
    for m, name in (("rouge_l", "ROUGE-L"), ("teacher_nll", "teacher NLL"), ("repetition", "repetition"), ("kl", "full-vocab KL"),
                    ("top1_agreement", "top-1")):
        if after is None:
            parts.append(f"{name} {_num(before.get(m), DIGITS[m])}")
            continue
        interval = ((difference or {}).get("all") or {}).get(m)
        ci = f" [{interval['low']:+.{DIGITS[m]}f}, {interval['high']:+.{DIGITS[m]}f}]" if interval else ""
        parts.append(f"{name} {_num(before.get(m), DIGITS[m])} -> {_num(after.get(m), DIGITS[m])}{ci}")
    return ", ".join(parts)


def _cell(metric: str, entry: dict | None) -> str:
    """"12.10" or, with an interval, "12.10 (+3.27 [+1.02, +5.40])"."""
    if not entry or entry.get("value") is None:
        return "-"
    return _num(entry["value"], DIGITS[metric]) + (f" ({_interval(entry, DIGITS[metric])})" if entry.get("low") is not None else "")


def _interval(entry: dict, digits: int) -> str:
    return f"{entry['diff']:+.{digits}f} [{entry['low']:+.{digits}f}, {entry['high']:+.{digits}f}]"


# Markdown

def _data_share(r: dict) -> str:
    """What part of an engine method's examples trained on the teacher-scored data instead of a rollout."""
    share = ((r.get("config") or {}).get("train") or {}).get("switch_data_share") or 0
    if not share or r.get("method") not in ENGINE_METHODS:
        return ""
    return f"; {share:.0%} of each step's examples from the teacher-scored data instead of a rollout (`train.switch_data_share`)"


def _malloc(tunables: str | None) -> str:
    """The trainer's malloc, from the GLIBC_TUNABLES its worker started with (train/allocator.py)."""
    if tunables is None:  # a report from before the setting
        return ""
    kept = KEEP_FREED in tunables
    return f"; the trainer's malloc {'keeps freed memory for reuse' if kept else 'returns freed memory to the kernel'} (train.keep_freed_memory)"


def _markdown(r: dict) -> str:
    data, staleness = r.get("data") or {}, r.get("staleness_steps") or {}
    curve = r.get("loss_curve") or []
    lines = [
        f"# Distillation report: {r.get('method')}",
        "",
        f"- **Method:** `{r.get('method')}`, preset `{r.get('preset')}`{_data_share(r)}",
        f"- **Training:** {r.get('steps')} steps in {_num(r.get('seconds'), 1)} s, {_num(r.get('tokens_per_s'), 1)} tokens/s; "
        f"{_num(100 * r['padding_share'] if r.get('padding_share') is not None else None, 1)}% of the micro-batches' positions padding",
        f"- **Precision:** {(r.get('precision') or {}).get('dtype', '-')} ({(r.get('precision') or {}).get('why', '-')}); "
        f"logits {'at answer positions only' if (r.get('precision') or {}).get('answer_logits_only') else 'at every position'}; "
        f"{(r.get('precision') or {}).get('attention', '-')} attention"
        f"{_generation_dtype((r.get('precision') or {}).get('generation'))}{_malloc((r.get('precision') or {}).get('malloc'))}",
        *_resolved_line(r.get("resolved")),
        f"- **Data:** {data.get('source')}: {data.get('train_examples')} training and {data.get('val_examples')} held-out examples",
        f"- **References:** {data.get('references')}",
        f"- **Student:** `{r.get('student_dir')}` (loads with `AutoModelForCausalLM.from_pretrained`)",
        *_warm_start_lines(r.get("warm_start")),
        *_tokenizer_lines(r.get("tokenizers") or {}),
        "",
        "## Held-out quality, before and after training",
        "",
        *_overall_table(r.get("before") or {}, r.get("after") or {}, r.get("difference") or {}),
        "",
        "### By reference length",
        "",
        *_quality_table(r.get("before") or {}, r.get("after") or {}, r.get("difference") or {}),
        "",
        NOTE + " Each cell: before → after (after - before [95% interval of the difference]). Length buckets are by reference length in tokens.",
        "",
        *_greedy_section(r),
        *_answers_section(r),
        "## Training",
        "",
        f"- **Loss:** {_num(curve[0]['loss'], 4)} at step {curve[0]['step']} to {_num(curve[-1]['loss'], 4)} at step {curve[-1]['step']}"
        if curve else "- **Loss:** no steps recorded",
        _held_out_kl(r.get("val_kl_to_teacher") or {}),
        *_unlikelihood_lines(curve, (r.get("config") or {}).get("train") or {}),
        f"- **Staleness of the generation actor's weights:** mean {_num(staleness.get('mean'), 2)} steps, max {staleness.get('max', '-')} steps",
        f"- **Teacher-pass saving:** {_flat(r.get('teacher_pass_saving')) or 'none recorded'}",
        f"- **Teacher share by position:** {_shares(r.get('intervention_by_position'))}",
        "",
        *phase_table((r.get("phases") or {}).get("steady_state") or {}),
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


def phase_table(steady: dict) -> list[str]:
    """Seconds per step in each phase (train/phases.py), steady state: a Markdown table and a blank line."""
    if not steady:
        return []
    return ["| phase | seconds per step | share |", "|---|---|---|",
            *[f"| {p} | {steady[p]:.3f} | {steady[p] / max(steady['seconds_per_step'], 1e-9):.0%} |" for p in PHASES],
            f"| **total** ({steady['steps']} steps after the first) | {steady['seconds_per_step']:.3f} | |", "", *cores_lines(steady.get("cores"))]


def cores_lines(cores: dict | None) -> list[str]:
    """What the steady-state steps had of the cores (train/phases.py: steady_cores), as sentences."""
    if not cores:
        return []
    share = cores["forward_backward_cpu_per_wall"]
    lines = [f"Cores: the trainer ran {cores['trainer_cpu']['forward_backward']:.3f} CPU seconds per step in forward_backward"
             + (f" ({share:.2f} CPU seconds per wall second)." if share is not None else ".")]
    if "cpu_by_role" in cores:
        roles = ", ".join(f"{role} {seconds:.2f}" for role, seconds in sorted(cores["cpu_by_role"].items(), key=lambda kv: -kv[1]))
        lines.append(f"The node's cores were {cores['node_busy_share']:.0%} busy over the step; CPU seconds per step by process: {roles}.")
    return [" ".join(lines), ""]


def _overall_table(before: dict, after: dict, difference: dict) -> list[str]:
    boot = difference.get("bootstrap") or {}
    intro = (f"{after.get('samples', before.get('samples', '-'))} student samples on {len(after.get('per_prompt') or before.get('per_prompt') or {})} "
             f"held-out prompts. Δ = after - before, with the {round(100 * boot['level'])}% interval of the difference from a paired "
             f"bootstrap over prompts ({boot['resamples']} resamples, seed {boot['seed']})." if boot else "No before/after intervals recorded.")
    lines = [intro, "", "| Metric | Better | Before | After | Δ [95% interval] | References |", "|---|---|---:|---:|---|---:|"]
    names = labels(after or before)
    references = after.get("references") or before.get("references") or {}
    for m in METRICS:
        if before.get(m) is None and after.get(m) is None:
            continue
        entry = (difference.get("all") or {}).get(m)
        lines.append(f"| {_cell_text(names[m])} | {BETTER[m]} | {_num(before.get(m), DIGITS[m])} | {_num(after.get(m), DIGITS[m])} "
                     f"| {_interval(entry, DIGITS[m]) if entry else _delta(before.get(m), after.get(m), DIGITS[m])} "
                     f"| {_num(references.get(m), DIGITS[m]) if references.get(m) is not None else '-'} |")
    if references:
        lines += ["", "References: the same metric of the held-out references themselves (the teacher's answers, or the "
                  "data's), where it applies: how much a good answer repeats itself."]
    return lines


def _resolved_line(resolved: dict | None) -> list[str]:
    """The config's autos as this run resolved them (SWITCH's two for its training batches)."""
    if not resolved:
        return []
    return ["- **Resolved autos:** " + ", ".join(f"`{k}={v}`" for k, v in resolved.items() if v is not None)]


def _generation_dtype(dtypes: dict | None) -> str:
    """The generation actors' dtypes (model dtype=auto: bfloat16 where the device runs it fast)."""
    if not dtypes:
        return ""
    return f"; generation actors: teacher {dtypes['teacher']}, student {dtypes['student']}"


def _tokenizer_lines(tokenizers: dict) -> list[str]:
    """Across tokenizers, what differs in the figures below."""
    if tokenizers.get("shared", True):
        return []
    return [f"- **Tokenizers:** teacher `{tokenizers['teacher']}` ({tokenizers['teacher_vocab']} ids) and student "
            f"`{tokenizers['student']}` ({tokenizers['student_vocab']} ids) tokenize differently; "
            f"{tokenizers['teacher_tokens_with_a_student_twin']} teacher tokens have a student token with the same text. "
            "Distillation compares the two at the answer positions where both start a token after the same text (GOLD's hybrid "
            "loss). The full-vocabulary KL is not defined across tokenizers, so the tables leave it out; the held-out "
            "cross-tokenizer loss under Training stands in for it. Teacher NLL is per teacher token of the student's text."]


def _warm_start_lines(warm: dict | None) -> list[str]:
    """The warm stage this run started from, and the change from the student before it to after this run."""
    if not warm:
        return []
    lines = [f"- **Warm start:** `{warm['method']}` for {warm['steps']} steps at lr {warm['lr']:g} from `{warm['student']}` "
             f"(its report: `{warm['dir']}/report.md`); this run's \"before\" is that stage's student"]
    for label, key, side in (("sampled", "from_start", None), ("greedy", "from_start_greedy", "greedy")):
        before = warm["before"] if side is None else warm["before"].get(side) or {}
        diff = warm.get(key) or {}
        parts = [f"{SHORT[m]} {_num(e['before'], DIGITS[m])} → {_num(e['after'], DIGITS[m])} [{e['low']:+.{DIGITS[m]}f}, {e['high']:+.{DIGITS[m]}f}]"
                 for m, e in (diff.get("all") or {}).items() if m in ("rouge_l", "teacher_nll", "repetition", "looping", "kl") and before]
        lines.append(f"- **From before the warm start to after this run ({label}):** {', '.join(parts) or '-'}")
    return lines


GREEDY_SHOWN = ("rouge_l", "teacher_nll", "repetition", "distinct_2", "looping")
ANSWERS_SHOWN = 6  # held-out prompts whose answers report.md shows
ANSWER_CHARS = 320  # ... each answer cut to about four lines


def _greedy_section(r: dict) -> list[str]:
    """The greedy answers' metrics (what a user's generate() gets), before and after, beside the teacher's own."""
    before, after = (r.get("before") or {}).get("greedy") or {}, (r.get("after") or {}).get("greedy") or {}
    if not before and not after:
        return []
    teacher, difference = (r.get("teacher_greedy") or {}).get("greedy") or {}, r.get("difference_greedy") or {}
    n = len(after.get("per_prompt") or before.get("per_prompt") or {})
    lines = ["## Greedy answers", "",
             f"One greedy answer per held-out prompt ({n} prompts), as `generate(do_sample=False)` writes it; the teacher's own "
             "greedy answers are the yardstick. Δ with the paired-bootstrap 95% interval over prompts.", "",
             "| Metric | Better | Before | After | Δ [95% interval] | Teacher |", "|---|---|---:|---:|---|---:|"]
    names = labels(after or before, greedy=True)
    for m in GREEDY_SHOWN:
        entry = (difference.get("all") or {}).get(m)
        lines.append(f"| {_cell_text(names[m])} | {BETTER[m]} | {_num(before.get(m), DIGITS[m])} | {_num(after.get(m), DIGITS[m])} "
                     f"| {_interval(entry, DIGITS[m]) if entry else _delta(before.get(m), after.get(m), DIGITS[m])} "
                     f"| {_num(teacher.get(m), DIGITS[m])} |")
    return lines + [""]


def _answers_section(r: dict) -> list[str]:
    """For a few held-out prompts, spread over the reference lengths: the prompt, the teacher's greedy
    answer and the student's before and after."""
    before, after = (r.get("before") or {}).get("answers") or {}, (r.get("after") or {}).get("answers") or {}
    teacher, prompts = (r.get("teacher_greedy") or {}).get("answers") or {}, r.get("prompts") or {}
    lengths = {pid: p["reference_tokens"] for pid, p in ((r.get("after") or {}).get("per_prompt") or {}).items()}
    ids = sorted((pid for pid in prompts if pid in after), key=lambda pid: (lengths.get(pid, 0), pid))
    if not ids:
        return []
    step = max(len(ids) / ANSWERS_SHOWN, 1.0)
    chosen = list(dict.fromkeys(ids[int(i * step)] for i in range(min(ANSWERS_SHOWN, len(ids)))))
    lines = ["## Answers", "", f"{len(chosen)} held-out prompts, short to long reference; greedy answers, each cut to {ANSWER_CHARS} characters.", ""]
    for pid in chosen:
        lines += [f"### `{pid}`", "", _quote("Prompt", prompts[pid]), _quote("Teacher", teacher.get(pid)),
                  _quote("Student before", before.get(pid)), _quote("Student after", after.get(pid))]
    return lines


def _quote(who: str, text: str | None) -> str:
    if text is None:
        return f"- **{who}:** -"
    text = " ".join(text.split())
    text = text if len(text) <= ANSWER_CHARS else text[:ANSWER_CHARS - 1] + "…"
    return f"- **{who}:** {text or '(empty answer)'}"


def _cell_text(text: str) -> str:
    """Text for a Markdown table cell: a bare | would end the cell ("KL(teacher||student)")."""
    return text.replace("|", "\\|")


def _quality_table(before: dict, after: dict, difference: dict) -> list[str]:
    shown = ("rouge_l", "teacher_nll", "repetition", "kl")
    lines = ["| Slice | Samples | " + " | ".join(SHORT[m] for m in shown) + " |", "|---|---:|" + "---|" * len(shown)]
    slices = [("all", before, after, difference.get("all") or {})] + [
        (f"{b} tokens", (before.get("by_length") or {}).get(b) or {}, (after.get("by_length") or {}).get(b) or {},
         (difference.get("by_length") or {}).get(b) or {}) for b in _buckets(before, after)]
    for name, b, a, d in slices:
        cells = []
        for m in shown:
            if b.get(m) is None and a.get(m) is None:
                cells.append("-")
                continue
            change = f" ({_interval(d[m], DIGITS[m])})" if m in d else ""
            cells.append(f"{_num(b.get(m), DIGITS[m])} → {_num(a.get(m), DIGITS[m])}{change}")
        lines.append(f"| {name} | {a.get('samples', b.get('samples', '-'))} | " + " | ".join(cells) + " |")
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


def _unlikelihood_lines(curve: list[dict], train: dict) -> list[str]:
    """train.unlikelihood's signal along the run: how many looping tokens the student's greedy answers had."""
    if not train.get("unlikelihood") or not curve:
        return []
    first, last = curve[0], curve[-1]
    return [f"- **Unlikelihood:** weight {train['unlikelihood']} on the tokens of the student's own greedy answers in a "
            f"repeated {train.get('unlikelihood_ngram')}-gram: {first.get('repeats', 0)} such tokens at step {first['step']}, "
            f"{last.get('repeats', 0)} at step {last['step']} (rank 0's share of the step's answers)"
            + ("; the teacher scored those answers and the distillation loss read them too" if train.get("unlikelihood_teacher") else "")]


def _held_out_kl(kl: dict) -> str:
    """The trainer's KL to the teacher on the held-out references over the teacher's top-k + a rest
    bucket, at the first and last step: a lower bound of the full-vocabulary KL above."""
    title = kl.get("title") or "Held-out KL (top-k lower bound)"
    if "start" not in kl or "end" not in kl:
        return f"- **{title}:** not measured"
    return (f"- **{title}:** {kl.get('label') or 'top-k + rest-bucket KL(teacher||student)'}: "
            f"{_num(kl['start']['kl'], 3)} at step {kl['start']['step']} to {_num(kl['end']['kl'], 3)} at step {kl['end']['step']}")
