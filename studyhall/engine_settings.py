"""The SWITCH engine's settings for one run, built once from the keys that own them.

The `switch` section holds the gate and the sampling; the run's seed (`seed`), the teacher's
recorded top-k (`train.teacher_topk`) and, in distillation, the answer length (`train.answer_tokens`)
live where they belong. Every `auto` of the engine is resolved here and nowhere else:
- `pipeline_groups=0`: two groups keep the teacher and the student busy at once; one when a trainer
  stepping beside them would compete for the cores (studyhall/threads.py; on 2 cores, smol switch at
  max_staleness=1 ran 9.205 s/step with one group, 9.877 with two: docs/benchmarks.md);
- `mode=auto`: one-token rounds for a lone group of writer=both, whose scorer then runs beside the
  drafter (actors/switch_round.py); blocks otherwise, and always when one model writes alone
  (every drafted token stands, so blocks grow to gamma_max).
"""
import dataclasses

from studyhall.config import Config, SwitchConfig
from studyhall.threads import pair_contends_with_trainer


def pipeline_groups(cfg: Config, beside_trainer: bool) -> int:
    """switch.pipeline_groups, or for auto: one group for batches made while a trainer steps on the
    same cores, else two."""
    if cfg.switch.pipeline_groups:
        return cfg.switch.pipeline_groups
    return 1 if beside_trainer and pair_contends_with_trainer(cfg) else 2


def engine_settings(cfg: Config, beside_trainer: bool = False, answer_tokens: int | None = None, **changes) -> SwitchConfig:
    """cfg.switch with the run's seed, top-k and answer length filled in, `changes` applied (e.g.
    writer, seed, temperature), and pipeline_groups and mode resolved. `answer_tokens` is the answer
    length (distillation passes train.answer_tokens); without it, switch.max_new_tokens."""
    settings = dataclasses.replace(cfg.switch, seed=cfg.seed, teacher_topk=cfg.train.teacher_topk,
                                   max_new_tokens=answer_tokens or cfg.switch.max_new_tokens)
    settings = dataclasses.replace(settings, **changes)
    groups = settings.pipeline_groups or pipeline_groups(cfg, beside_trainer)
    mode = settings.mode
    if mode == "auto":
        mode = "per_token" if groups == 1 and settings.writer == "both" else "block"
    return dataclasses.replace(settings, pipeline_groups=groups, mode=mode)
