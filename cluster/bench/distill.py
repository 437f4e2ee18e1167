"""`studyhall bench distill`: where a distillation step's time goes, one full `studyhall distill` run
per setting compared (e.g. `--vary train.max_staleness=0,1`), each phase in seconds per step.

The figures are the runs' own `report.json` → `phases` (train/phases.py): rank 0's steady-state
mean (the steps after the first), the end-to-end train tokens/s, and the run's wall time.
"""
import json
import sys
from pathlib import Path

from studyhall.config import ConfigError, load_config
from train.distill import run_distill
from train.phases import PHASES


def settings(vary: str | None) -> list[list[str]]:
    """`key=v1,v2` -> [[key=v1], [key=v2]]; no --vary: one run as configured."""
    if not vary:
        return [[]]
    key, sep, values = vary.partition("=")
    if not sep or not key or not values:
        raise ConfigError(f"--vary {vary!r}: expected key=value1,value2 (e.g. train.max_staleness=0,1)")
    return [[f"{key}={v.strip()}"] for v in values.split(",") if v.strip()]


def run_bench(preset: str, method: str, out: str, vary: str | None, overrides: list[str]) -> dict:
    out_path = Path(out)
    runs = []
    for setting in settings(vary):
        # the phases of the method's own steps: no warm stage before it unless asked for (train.warm_start=kd)
        cfg = load_config(preset, ["train.warm_start=", *overrides, f"train.method={method}", *setting])
        label = " ".join(setting) or "as configured"
        run_dir = out_path.parent / f"{out_path.stem}_runs" / (label.replace(" ", "_").replace("=", "-") or "default")
        print(f"bench distill: {method} on {preset}, {label} -> {run_dir}", file=sys.stderr, flush=True)
        report = run_distill(cfg, str(run_dir), progress=True)
        runs.append({"setting": label, "report": str(run_dir / "report.json"), "seconds": report["seconds"],
                     "tokens_per_s": report["tokens_per_s"], "train_tokens": report["train_tokens"], "padding_share": report["padding_share"],
                     "staleness_steps": report["staleness_steps"], "weight_push": report["weight_push"],
                     "generation": report["generation"],
                     "phases": report["phases"]["steady_state"]})
    result = {"preset": preset, "method": method, "overrides": overrides, "runs": runs}
    result["table"] = markdown(result)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2) + "\n")
    out_path.with_suffix(".md").write_text(result["table"] + "\n")
    return result


def markdown(result: dict) -> str:
    runs = result["runs"]
    lines = [f"Distillation time per step, `{result['method']}` on `{result['preset']}` "
             f"(steady state: the steps after the first; rank 0; seconds)", "",
             "| phase | " + " | ".join(r["setting"] for r in runs) + " |", "|---|" + "---|" * len(runs)]
    for phase in PHASES:
        lines.append(f"| {phase} | " + " | ".join(f"{r['phases'].get(phase, 0):.3f}" for r in runs) + " |")
    lines.append("| **seconds per step** | " + " | ".join(f"**{r['phases'].get('seconds_per_step', 0):.3f}**" for r in runs) + " |")
    cores = [r["phases"].get("cores") or {} for r in runs]  # {} for a report from before the CPU clocks
    lines.append("| trainer CPU s in forward_backward (per wall s) | " + " | ".join(
        f"{c['trainer_cpu']['forward_backward']:.3f} ({c['forward_backward_cpu_per_wall']})" if c else "-" for c in cores) + " |")
    lines.append("| trainer page faults in forward_backward | " + " | ".join(
        f"{c['trainer_page_faults']['forward_backward']}" if "trainer_page_faults" in c else "-" for c in cores) + " |")
    lines.append("| node cores busy over the step | " + " | ".join(
        f"{c['node_busy_share']:.0%}" if "node_busy_share" in c else "-" for c in cores) + " |")
    for role in sorted({role for c in cores for role in c.get("cpu_by_role", {})}):
        lines.append(f"| CPU s per step: {role} | " + " | ".join(
            f"{c['cpu_by_role'].get(role, 0.0):.3f}" if "cpu_by_role" in c else "-" for c in cores) + " |")
    lines.append("| train tokens/s (end to end) | " + " | ".join(f"{r['tokens_per_s']}" for r in runs) + " |")
    lines.append("| padding share of the micro-batches | " + " | ".join(f"{r['padding_share']}" for r in runs) + " |")
    lines.append("| weights into the generation actor (MB, s per load) | " + " | ".join(
        f"{r['weight_push']['packet_mb']}, {r['weight_push']['seconds_per_load']}" for r in runs) + " |")
    lines.append("| generation (tokens, s, SWITCH pipeline groups) | " + " | ".join(
        f"{r['generation']['tokens']}, {r['generation']['seconds']}, {r['generation']['pipeline_groups']}" for r in runs) + " |")
    lines.append("| staleness (mean, max) | " + " | ".join(
        f"{r['staleness_steps']['mean']}, {r['staleness_steps']['max']}" for r in runs) + " |")
    return "\n".join(lines)
