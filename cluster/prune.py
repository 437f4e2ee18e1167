"""`studyhall prune`: a shallower student from any decoder LLM whose layers are a list (Minitron's first step).

`python -m cluster prune ...` is the same, for `ray job submit`. The pruned student starts far below
its source model; distillation (`studyhall distill student.path=OUT`) is what heals it.
Writes OUT: the HF folder (model, tokenizer, generation config), prune.json and prune.png.
"""
import json
from pathlib import Path

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from actors.calibration import ANSWER_TOKENS, batches, greedy_answers, with_reference
from actors.models import load_model, load_tokenizer, pick_device
from actors.pruning import METHODS, angular_start, choose_layers, decoder_layers, prune_to, score_layers
from studyhall.config import ConfigError, ModelConfig
from train.data import load_examples


def run_prune(model_path: str, layers: int, out: str | Path, method: str = "block_influence", data: str | None = None,
              samples: int = 16) -> dict:
    """Score the layers on `samples` calibration prompts, keep `layers` of them, write OUT; returns prune.json's record."""
    out = Path(out)
    if method not in METHODS:
        raise ConfigError(f"--method {method!r}: unknown; use {' or '.join(METHODS)}")
    if layers < 1:
        raise ConfigError(f"--layers {layers}: must keep at least 1 layer")
    if samples < 1:
        raise ConfigError(f"--samples {samples}: must be at least 1")
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"--out {out}: exists and is not empty; choose a new folder")
    examples = load_examples(data)[:samples]  # refuses a missing or malformed file before the model loads
    on_gpu = torch.cuda.is_available()  # bfloat16 there; float32 on a CPU, whose scores the docs' layer choices came from
    spec = ModelConfig(path=model_path, dtype="auto" if on_gpu else "float32", num_gpus=1 if on_gpu else 0)
    device = pick_device(spec)
    model = load_model(spec, device)
    depth = len(decoder_layers(model))
    if layers >= depth:
        raise ConfigError(f"--layers {layers}: {model_path} has {depth} decoder layers; keep fewer")
    if method == "angular" and layers < 2:
        raise ConfigError(f"--layers {layers}: angular keeps the first and last layers, so at least 2")

    tokenizer = load_tokenizer(model_path)
    unanswered = [e.messages for e in examples if e.response is None]
    answers = iter(greedy_answers(model, tokenizer, unanswered))
    sequences = [next(answers) if e.response is None else with_reference(tokenizer, e.messages, e.response) for e in examples]
    scores = score_layers(model, batches(sequences, device=device), removed=depth - layers)
    keep = choose_layers(method, scores, layers)
    prune_to(model, keep)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)

    references = len(examples) - len(unanswered)
    record = {
        "method": method, "source_model": model_path, "layers_before": depth, "kept_layers": keep,
        "removed_layers": [i for i in range(depth) if i not in keep],
        "samples": len(examples), "calibration_data": data or "embedded prompts",
        "calibration_answers": {"references": references, "model_greedy": len(unanswered), "answer_tokens": ANSWER_TOKENS},
        "tokens": scores.tokens,
        "block_influence": scores.block_influence,
        # by first removed layer l: the angular distance between h_l and h_{l+n}, n = layers removed
        "angular_by_start": scores.angular,
    }
    (out / "prune.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    plot_scores(record, scores, out / "prune.png")
    return record


def plot_scores(record: dict, scores, path: Path) -> None:
    """Block influence per layer, kept layers coloured; for angular, also the distance by block start.

    A matplotlib Figure on the Agg canvas, no pyplot: no GUI backend, no global state.
    """
    angular = record["method"] == "angular"
    figure = Figure(figsize=(8, 6 if angular else 3.4))
    FigureCanvasAgg(figure)
    axes = figure.subplots(2 if angular else 1, 1, squeeze=False)[:, 0]
    kept, depth = set(record["kept_layers"]), record["layers_before"]
    axes[0].bar(range(depth), scores.block_influence, color=["tab:blue" if i in kept else "lightgray" for i in range(depth)])
    axes[0].set(xlabel="layer", ylabel="block influence\n1 - cos(h_in, h_out)",
                title=f"{record['source_model']}: {len(kept)} of {depth} layers kept by {record['method']}")
    axes[0].legend(handles=[Patch(color="tab:blue", label="kept"), Patch(color="lightgray", label="removed")])
    if angular:
        start, removed = angular_start(scores), scores.removed
        allowed = range(1, depth - removed)  # the blocks that keep the first and last layers
        axes[1].plot(allowed, [scores.angular[s] for s in allowed], marker="o", color="tab:gray")
        axes[1].plot([start], [scores.angular[start]], marker="o", color="tab:red", label=f"removed: {start}-{start + removed - 1}")
        axes[1].set(xlabel="first removed layer l (the first and last layers are always kept)",
                    ylabel=f"angular distance\nh_l to h_(l+{removed})")
        axes[1].legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
