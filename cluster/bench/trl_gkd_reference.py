"""The single-process reference issue 13 measures `gkd` against: Hugging Face TRL's GKDTrainer, same models
and settings (batch 4, 32 new tokens, every example on-policy, JSD beta 0.5, temperature 0.9, lr 5e-4, fp32
on CPU), seconds per optimizer step. Run it in the same session as `bench distill`: times on a shared
machine are only comparable within one run.

    pip install trl==1.16.0     # not a studyhall dependency
    python -m cluster.bench.trl_gkd_reference --out out/bench/trl_gkd.json [--steps 8]
"""

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

from actors.models import resolve_path
from studyhall.prompts import embedded_messages


class StepTimer(TrainerCallback):
    """Wall seconds of each optimizer step (generation, teacher forward, student forward/backward, update)."""

    def __init__(self):
        self.seconds, self._started = [], 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.seconds.append(time.perf_counter() - self._started)


def main() -> None:
    try:
        from trl.experimental.gkd import GKDConfig, GKDTrainer
    except ImportError:
        raise SystemExit("trl_gkd_reference: needs TRL (pip install trl==1.16.0); it is not a studyhall dependency") from None
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()

    teacher_path, student_path = resolve_path("embedded:teacher"), resolve_path("embedded:student")
    tokenizer = AutoTokenizer.from_pretrained(student_path)
    # Every example is regenerated on-policy (lmbda=1), so the assistant turn is only a slot for the collator.
    dataset = Dataset.from_list([{"messages": [*m, {"role": "assistant", "content": "."}]} for m in embedded_messages()])
    timer = StepTimer()
    with tempfile.TemporaryDirectory() as scratch:
        config = GKDConfig(output_dir=scratch, max_steps=args.steps, per_device_train_batch_size=4,
                           gradient_accumulation_steps=1, learning_rate=5e-4, lmbda=1.0, beta=0.5, temperature=0.9,
                           max_new_tokens=32, use_cpu=True, report_to="none", save_strategy="no", logging_steps=1,
                           dataloader_num_workers=0, seed=0)
        trainer = GKDTrainer(model=AutoModelForCausalLM.from_pretrained(student_path),
                             teacher_model=AutoModelForCausalLM.from_pretrained(teacher_path), args=config,
                             train_dataset=dataset, processing_class=tokenizer, callbacks=[timer])
        started = time.perf_counter()
        trainer.train()
        total = time.perf_counter() - started
    steady = timer.seconds[1:]  # the first step pays one-off costs, as bench distill's steady state leaves it out
    result = {"trainer": "trl.experimental.gkd.GKDTrainer", "steps": args.steps, "batch": 4, "max_new_tokens": 32,
              "lmbda": 1.0, "beta": 0.5, "temperature": 0.9, "lr": 5e-4,
              "seconds_per_step": [round(s, 3) for s in timer.seconds],
              "steady_state_seconds_per_step": round(statistics.mean(steady), 3) if steady else None,
              "train_seconds": round(total, 2)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
