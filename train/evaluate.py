"""`studyhall eval`: a student on held-out prompts: ROUGE-L against the references, the teacher's NLL of
its samples, their repetition and looping share, and the full-vocabulary KL to the teacher on the
references, overall, by reference length and per prompt; the same for its greedy answers, beside the
teacher's own greedy answers.

The prompts are the held-out split distill uses (same data, seed and size), or every prompt of a
file given with `prompts` (any format `--data` takes). Where the prompts come without answers, the
teacher writes the references once and they are cached, as for training.
"""
import dataclasses

import ray

from studyhall.config import Config, ConfigError
from train.data import load_examples
from train.distill import check_models, close, evaluate, plan_for, prepare, start_rollout, teacher_yardstick, tokenizers_summary
from train.scoring import labels


def run_evaluate(cfg: Config, prompts: str | None = None) -> dict:
    if prompts and cfg.train.data:
        raise ConfigError(f"--prompts {prompts} and --data {cfg.train.data}: give one (--data evaluates its held-out split, --prompts every prompt)")
    if prompts:
        tokenizer, context, bridge = check_models(cfg, training=False)
        examples = load_examples(prompts)
        plan = dataclasses.replace(plan_for(cfg, tokenizer, context, examples, [], examples, "", prompts), bridge=bridge)
    else:
        plan = prepare(cfg, training=False)
    if not ray.is_initialized():
        ray.init(log_to_driver=False)
    rollout, pair_name = start_rollout(cfg, [], plan.val, plan.references_path, plan.bridge)
    try:
        result = evaluate(rollout, plan.val, cfg.train.eval_samples, cfg.seed)
        result["teacher_greedy"] = teacher_yardstick(rollout, plan.val)
    finally:
        close(rollout, pair_name)
    return {"student": cfg.student.path, "teacher": cfg.teacher.path, "tokenizers": tokenizers_summary(cfg, plan.bridge),
            "data": plan.source, "prompts": len(plan.val),
            **result, "metrics": labels(result), "config": dataclasses.asdict(cfg)}
