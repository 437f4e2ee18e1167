"""`studyhall eval`: a student's ROUGE-L against the references and the teacher's NLL of its samples,
on the held-out split distill uses (same data, seed and size), overall and by reference length."""
import dataclasses

import ray

from studyhall.config import Config
from train.distill import close, evaluate, prepare, with_answer_budget
from train.rollout import Rollout


def run_evaluate(cfg: Config) -> dict:
    cfg = with_answer_budget(cfg)
    plan = prepare(cfg)
    if not ray.is_initialized():
        ray.init(log_to_driver=False)
    rollout = Rollout.remote(cfg, [], plan.val, plan.references_path)
    try:
        result = evaluate(rollout, plan.val, cfg.train.eval_samples, cfg.switch.seed)
    finally:
        close(rollout)
    return {"student": cfg.student.path, "teacher": cfg.teacher.path, "data": plan.source, **result,
            "config": dataclasses.asdict(cfg)}
