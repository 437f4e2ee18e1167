"""`studyhall distill`: evaluate the student, train it with a method under Ray Train + DeepSpeed,
evaluate again, save it as an HF folder and write the report.
"""
import dataclasses
import glob
import json
import re
import threading
import time
import uuid
from pathlib import Path

import ray
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer
from tqdm import tqdm

from actors.models import eos_ids
from actors.pair import check_pair, release_group
from studyhall.config import Config, ConfigError
from studyhall.threads import trainer_threads
from train.allocator import worker_env
from train.bootstrap import compare
from train.cross_vocab import VocabBridge, pair_bridge, refuse_token_by_token
from train.data import examples_digest, load_examples, prompt_token_ids, references_cache_path, split_validation
from train.methods import ENGINE_METHODS, loss_for
from train.objective import Cross
from train.phases import postfix, steady_state
from train.report import headline, write_report
from train.rollout import Rollout
from train.scoring import labels, summarize
from train.train_loop import PROGRESS_FILE, WorkerArgs, train_loop_per_worker


class TrainingFailed(RuntimeError):
    """The run stopped (e.g. a non-finite loss); the message says why and where the last checkpoint is."""


@dataclasses.dataclass
class Plan:
    tokenizer: object
    train: list
    val: list
    references_path: str
    loss: str
    source: str
    bridge: VocabBridge | None = None  # the teacher's and student's tokenizers differ (train/cross_vocab.py)


def prepare(cfg: Config, training: bool = True) -> Plan:
    """Everything that can fail on user input, before any actor or worker starts."""
    t = cfg.train
    loss = loss_for(t.method, t.loss)
    if t.method == "sft" and loss != "ce":
        raise ConfigError(f"train.loss={loss}: sft trains on the answers alone with cross-entropy; use method=kd for a distillation loss")
    if loss != "ce" and t.teacher_topk < 1:
        raise ConfigError(f"train.loss={loss} needs the teacher's top-k log-probs: set train.teacher_topk >= 1")
    tokenizer, context, bridge = check_models(cfg, training)
    examples = load_examples(t.data or None)
    train, val = split_validation(examples, 0.1, min(t.val_size, len(examples) - 1), cfg.seed)
    plan = plan_for(cfg, tokenizer, context, examples, train, val, loss, t.data or "embedded prompts (studyhall/data/prompts.jsonl)")
    return dataclasses.replace(plan, bridge=bridge)


def check_models(cfg: Config, training: bool = True):
    """(the student's tokenizer, context length, bridge): both models resolve; the bridge between
    their vocabularies when their tokenizers differ (None when they share one). When `training`, the
    run's methods must be ones that can run across tokenizers (one line naming those for the others)."""
    try:
        return (*check_pair(cfg), None)
    except ConfigError as err:
        if "vocab" not in str(err):
            raise
    for method in (cfg.train.method, cfg.train.warm_start) if training else ():
        refuse_token_by_token(method, cfg.teacher.path, cfg.student.path)
    return (*check_pair(cfg, across_tokenizers=True), pair_bridge(cfg))


def plan_for(cfg: Config, tokenizer, context: int, examples: list, train: list, val: list, loss: str, source: str) -> Plan:
    """Every prompt fits the context with the answer budget; where the examples lack references, the
    teacher writes them once, cached per (teacher, prompt set, budget)."""
    budget = cfg.train.answer_tokens
    for e in examples:
        n = len(prompt_token_ids(tokenizer, e))
        if n + budget > context:
            raise ConfigError(f"{source}: example {e.id!r} has a {n}-token prompt; "
                              f"with answer_tokens={budget} it exceeds the model context of {context}")
    has_refs = all(e.response is not None for e in examples)
    refs = references_cache_path(cfg.teacher.path, examples_digest(examples), budget)
    return Plan(tokenizer, train, val, str(refs), loss,
                source if has_refs else f"{source}; references teacher-written ({cfg.teacher.path}), cached at {refs}")


def latest_checkpoint(storage: Path):
    """The checkpoint with the highest step under a run's storage folder, or None."""
    found = []
    for progress in glob.glob(str(storage / "**" / PROGRESS_FILE), recursive=True):
        found.append((json.loads(Path(progress).read_text())["step"], Path(progress).parent))
    return max(found)[1] if found else None


def evaluate(rollout, val, samples: int, seed: int) -> dict:
    """The student generation actor's weights of this moment, on the held-out prompts: its samples
    (ROUGE-L, teacher NLL, repetition, looping) and the full-vocabulary KL to the teacher on the
    references; under "greedy", the same for its greedy answers, which are kept under "answers"."""
    sampled = rollout.sample_student.remote(val, samples, seed)
    greedy = rollout.greedy_answers.remote(val, "student")
    heldout = rollout.heldout_kl.remote(val)
    return {**summarize(ray.get(sampled), ray.get(heldout)), **greedy_summary(ray.get(greedy))}


def greedy_summary(answers: list[dict]) -> dict:
    """{"greedy": the scoring summary of one greedy answer per prompt, "answers": {prompt id: text}}."""
    return {"greedy": summarize(answers), "answers": {a["prompt_id"]: a["prediction"] for a in answers}}


def teacher_yardstick(rollout, val) -> dict:
    """The teacher's own greedy answers, scored as the student's are: what a good answer looks like."""
    return greedy_summary(ray.get(rollout.greedy_answers.remote(val, "teacher")))


WARM_DIR = "warm_start"


def run_distill(cfg: Config, out_dir: str, resume: bool = False, progress: bool = True) -> dict:
    """One run of train.method; with train.warm_start, first the warm stage into OUT/warm_start, whose
    student the method then starts from. Each stage writes its own report; the method's names the warm stage."""
    if not cfg.train.warm_start:
        return run_stage(cfg, out_dir, resume, progress)
    out = Path(out_dir).resolve()
    if resume and not any(latest_checkpoint(d / "ray_train") or (d / "report.json").is_file() for d in (out, out / WARM_DIR)):
        raise ConfigError(f"--resume: no checkpoint or finished stage under {out}; run without --resume first")
    warm_cfg, method_cfg = stages(cfg, out / WARM_DIR)
    say = print if progress else (lambda *a, **k: None)
    warm = reusable_stage(out / WARM_DIR, warm_cfg)
    if warm is None:
        say(f"warm start: {warm_cfg.train.method} for {warm_cfg.train.steps} steps into {out / WARM_DIR} ...")
        warm = run_stage(warm_cfg, str(out / WARM_DIR), resume and latest_checkpoint(out / WARM_DIR / "ray_train") is not None, progress)
    else:
        say(f"warm start: reusing {out / WARM_DIR} (a finished stage of the same config; delete it to train it again)")
    say(f"{cfg.train.method} from the warm-started student ...")
    return run_stage(method_cfg, str(out), resume and latest_checkpoint(out / "ray_train") is not None, progress, warm_start=warm)


def stages(cfg: Config, warm_dir: Path) -> tuple[Config, Config]:
    """(the warm stage's config, the method's): the warm stage trains the configured student with
    train.warm_start; the method trains the student the warm stage saved."""
    t = cfg.train
    warm = dataclasses.replace(t, method=t.warm_start, loss="auto", steps=t.warm_steps, lr=t.warm_lr or t.lr,
                               warmup_steps=min(t.warmup_steps, t.warm_steps - 1), unlikelihood=t.warm_unlikelihood,
                               unlikelihood_teacher=False, warm_start="", warm_steps=0, warm_lr=0.0, warm_unlikelihood=0.0)
    method = dataclasses.replace(t, warm_start="", warm_steps=0, warm_lr=0.0, warm_unlikelihood=0.0)
    student = dataclasses.replace(cfg.student, path=str(warm_dir / "student"))
    return dataclasses.replace(cfg, train=warm), dataclasses.replace(cfg, student=student, train=method)


# The SWITCH gate's settings: only the engine methods' records depend on them (evaluation fixes its own).
GATE_KEYS = ("writer", "divergence", "schedule", "tau0", "lam", "skd_top_k", "adaptive_k", "adaptive_window")
GATE_TRAIN_KEYS = ("switch_data_share",)  # the train settings that only the engine methods read


def reusable_stage(stage_dir: Path, cfg: Config) -> dict | None:
    """The report of a finished stage in stage_dir that ran this config (and saved its student), or
    None. For a method that does not run the SWITCH gate, the gate's settings do not count: a warm
    kd stage is the same whatever tau0 or switch_data_share the method after it uses."""
    try:
        report = json.loads((stage_dir / "report.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    same = _what_counts(report.get("config") or {}) == _what_counts(json.loads(json.dumps(dataclasses.asdict(cfg), default=str)))
    return report if same and (stage_dir / "student" / "config.json").is_file() else None


def _what_counts(config: dict) -> dict:
    if (config.get("train") or {}).get("method") in ENGINE_METHODS:
        return config
    return {**config, "switch": {k: v for k, v in (config.get("switch") or {}).items() if k not in GATE_KEYS},
            "train": {k: v for k, v in (config.get("train") or {}).items() if k not in GATE_TRAIN_KEYS}}


def warm_start_summary(warm: dict, after: dict, seed: int) -> dict:
    """What the method's report says of the warm stage: where it is, what it did, and the change from
    the student before it (as the run was given it) to the student after the method."""
    return {"dir": str(Path(warm["student_dir"]).parent), "method": warm["method"], "steps": warm["steps"],
            "lr": warm["config"]["train"]["lr"], "student": warm["config"]["student"]["path"],
            "weights": warm["evaluated_weights"], "before": warm["before"], "after": warm["after"],
            "difference": warm["difference"],
            "from_start": compare(warm["before"], after, seed=seed),
            "from_start_greedy": compare(warm["before"]["greedy"], after["greedy"], seed=seed)}


def run_stage(cfg: Config, out_dir: str, resume: bool = False, progress: bool = True, warm_start: dict | None = None) -> dict:
    """Evaluate, train train.method, evaluate again, save the student and write the report."""
    plan = prepare(cfg)
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    storage = out / "ray_train"
    resume_from = latest_checkpoint(storage) if resume else None
    if resume and resume_from is None:
        raise ConfigError(f"--resume: no checkpoint under {storage}; run without --resume first")
    if not ray.is_initialized():
        ray.init(log_to_driver=False)
    check_training_fits(cfg)
    t, started = cfg.train, time.perf_counter()
    say = print if progress else (lambda *a, **k: None)

    say(f"starting teacher {cfg.teacher.path} and student {cfg.student.path} ...")
    rollout, pair_name = start_rollout(cfg, plan.train, plan.val, plan.references_path, plan.bridge)
    try:
        start_weights = ray.get(rollout.generation_weights.remote())
        if warm_start and warm_start["evaluated_weights"]["sha256"] == start_weights["sha256"]:
            # the warm stage evaluated these very weights on these prompts with these seeds as its "after"
            before, teacher = warm_start["after"], warm_start["teacher_greedy"]
            say(f"the student before training is the warm stage's after: {headline(before)}")
        else:
            say(f"evaluating the student before training ({len(plan.val)} held-out prompts x {t.eval_samples} samples) ...")
            before = evaluate(rollout, plan.val, t.eval_samples, cfg.seed)
            teacher = teacher_yardstick(rollout, plan.val)
            say(f"  before: {headline(before)}")

        writing = time.perf_counter()  # before the trainer shares the cores: the answers the steps read that the cache lacks
        written = ray.get(rollout.write_references.remote())
        if written:
            say(f"the teacher wrote {written} training answers into the cache ({time.perf_counter() - writing:.0f} s)")

        use_gpu = t.gpus_per_worker > 0
        resources = {"CPU": t.cpus_per_worker, **({"GPU": t.gpus_per_worker} if use_gpu else {})}
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config={"args": WorkerArgs(
                cfg, rollout, plan.loss, _pad_id(plan.tokenizer), _eos(plan.tokenizer, cfg), str(out / "student"),
                cross=Cross(plan.bridge.unreached, t.uld_weight, t.cross_loss) if plan.bridge else None,
                resume_from=str(resume_from) if resume_from else None)},
            torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
            scaling_config=ScalingConfig(num_workers=t.num_workers, use_gpu=use_gpu, resources_per_worker=resources),
            # A failed worker group is replaced and restarts from the last checkpoint (train_loop._resume).
            run_config=RunConfig(name="distill", storage_path=str(storage), checkpoint_config=CheckpointConfig(num_to_keep=2),
                                 failure_config=FailureConfig(max_failures=t.max_failures),
                                 worker_runtime_env={"env_vars": worker_env(t.keep_freed_memory)}),
        )
        error = _fit_with_progress(trainer, rollout, t.steps, progress) or _stop_reason(rollout)
        if error is not None:
            kept = latest_checkpoint(storage)
            resume = f"; `studyhall distill --resume --out {out}` continues from it" if kept else ""
            raise TrainingFailed(f"training stopped: {error}; last good checkpoint: {kept or 'none yet'}{resume}")

        # The trainer pushed its last step's weights to the generation actor before fit() returned
        # (train_loop: every push_every steps and at the last), so this evaluates the trained student.
        say("evaluating the student after training ...")
        after = evaluate(rollout, plan.val, t.eval_samples, cfg.seed)
        say(f"  after:  {headline(after)}")
        evaluated = ray.get(rollout.generation_weights.remote())
        summary = ray.get(rollout.summary.remote())
        metrics = ray.get(rollout.progress.remote())
        saving = ray.get(rollout.measure_second_pass.remote(ray.get(rollout.last_batch.remote())))
        counts = summary["counts"]
        report = {
            "method": t.method, "loss": plan.loss, "preset": cfg.preset, "steps": t.steps,
            "tokens_per_s": round(metrics[-1]["tokens_per_s"], 2) if metrics else 0.0,
            "train_tokens": metrics[-1]["tokens"] if metrics else 0,
            # the share of the micro-batches' positions that are padding: the decoder runs over them for nothing
            "padding_share": round(metrics[-1]["padding_share"], 4) if metrics else None,
            "seconds": round(time.perf_counter() - started, 1),
            "precision": ({"dtype": metrics[-1]["precision"], "how": metrics[-1]["precision_how"], "why": metrics[-1]["precision_why"],
                           "answer_logits_only": metrics[-1]["answer_logits_only"],
                           "attention": metrics[-1]["attention"], "generation": summary["generation_dtype"],
                           "malloc": metrics[-1]["malloc"]}
                          if metrics else None),
            "data": {"source": plan.source, "train_examples": len(plan.train), "val_examples": len(plan.val),
                     "references": "teacher-written, cached" if "teacher-written" in plan.source else "from the data file"},
            "before": before, "after": after,
            "difference": compare(before, after, seed=cfg.seed),
            "teacher_greedy": teacher,
            "difference_greedy": compare(before["greedy"], after["greedy"], seed=cfg.seed),
            "prompts": {e.id: e.messages[-1]["content"] for e in plan.val},
            "metrics": labels(after),
            "loss_curve": [{"step": m["step"], "loss": round(m["loss"], 5), "lr": m["lr"], "repeats": m.get("repeats", 0)} for m in metrics],
            "intervention_by_position": summary["intervention_by_position"],
            "staleness_steps": summary["staleness_steps"],
            "start_weights": {"label": "the weights the student generation actor started with (actors.weights.digest)", **start_weights},
            "warm_start": warm_start_summary(warm_start, after, cfg.seed) if warm_start else None,
            "evaluated_weights": {"label": "the weights the student generation actor had for the evaluation after "
                                           "training: the optimizer step they came from, and a digest (actors.weights.digest)",
                                  **evaluated},
            "faults": summary["faults"],
            "val_kl_to_teacher": {**held_out_loss_label(cfg, plan.bridge), **summary["val_kl_to_teacher"]},
            "tokenizers": tokenizers_summary(cfg, plan.bridge),
            "teacher_pass_saving": {"reused_positions": counts["reused_positions"], "extra_pass_positions": counts["extra_pass_positions"],
                                    "extra_pass_seconds": counts["extra_pass_seconds"], **saving},
            "generation": {"seconds": counts["generation_seconds"], "tokens": counts["generated_tokens"],
                           "pipeline_groups": summary["batch_pipeline_groups"]["groups"],
                           "rows_by_group": summary["batch_pipeline_groups"]["rows_by_group"]},
            "weight_push": {"label": "the trainer's weights as they reach the student generation actor: the packet "
                                     "(actors.weights) and the seconds the actor took to take each one, between batches",
                            "packet_mb": round(counts["weight_packet_mb"], 1), "loads": counts["weight_loads"],
                            "seconds_per_load": round(counts["weight_load_seconds"] / max(counts["weight_loads"], 1), 3)},
            "phases": {"label": "seconds per step on rank 0 (train/phases.py); steady_state leaves out the first step",
                       "steady_state": steady_state([m["phases"] for m in metrics]),
                       "per_step": [{"step": m["step"], **m["phases"]} for m in metrics]},
            "method_state": summary["method_state"],
            # every `auto` of the config as this run resolved it, each in the one place that resolves it
            "resolved": {"train.loss": plan.loss, "train.precision": metrics[-1]["precision"] if metrics else None,
                         "train.torch_threads": trainer_threads(cfg),
                         "teacher.dtype": summary["generation_dtype"]["teacher"], "student.dtype": summary["generation_dtype"]["student"],
                         "switch.pipeline_groups": summary["batch_pipeline_groups"]["groups"],
                         "switch.mode": summary["batch_pipeline_groups"]["mode"]},
            "student_dir": str(out / "student"),
            "resumed_from": str(resume_from) if resume_from else None,
            "config": dataclasses.asdict(cfg),
        }
        report["files"] = write_report(out, report)
    finally:
        close(rollout, pair_name)
    return report


def held_out_loss_label(cfg: Config, bridge: VocabBridge | None) -> dict:
    """What the trainer's held-out loss at the first and last step is: the top-k KL, or across tokenizers its hybrid."""
    if bridge is None:
        return {"title": "Held-out KL (top-k lower bound)",
                "label": f"top-{cfg.train.teacher_topk} + rest-bucket KL(teacher||student), nats/token, from the trainer: "
                         "a lower bound of the full-vocabulary KL"}
    if cfg.train.cross_loss == "uld":
        return {"title": "Held-out cross-tokenizer loss",
                "label": f"ULD: cross-entropy + {cfg.train.uld_weight} x the sorted-probability distance to the teacher's top-"
                         f"{cfg.train.teacher_topk}, nats per aligned position, from the trainer (in place of the full-vocabulary KL, "
                         "which is not defined across tokenizers)"}
    return {"title": "Held-out cross-tokenizer loss",
            "label": f"forward KL over the teacher's top-{cfg.train.teacher_topk} tokens that are student tokens too (+ a rest bucket) "
                     f"+ {cfg.train.uld_weight} x ULD over its other top-k tokens, nats per aligned position, from the trainer "
                     "(in place of the full-vocabulary KL, which is not defined across tokenizers)"}


def tokenizers_summary(cfg: Config, bridge: VocabBridge | None) -> dict:
    """One tokenizer, or the two and how much of the teacher's vocabulary the student shares."""
    if bridge is None:
        return {"shared": True}
    return {"shared": False, "teacher": cfg.teacher.path, "student": cfg.student.path, "teacher_vocab": len(bridge.id_map),
            "student_vocab": len(bridge.unreached), "teacher_tokens_with_a_student_twin": bridge.shared}


def start_rollout(cfg: Config, train: list, val: list, references_path: str | None, bridge: VocabBridge | None = None):
    """(the rollout actor, the name of its pair's placement group, for `close`)."""
    pair_name = f"studyhall-pair-{uuid.uuid4().hex[:12]}"
    return Rollout.remote(cfg, train, val, references_path, pair_name, bridge), pair_name


def close(rollout, pair_name: str) -> None:
    try:
        ray.get(rollout.close.remote())
    except ray.exceptions.RayError:
        release_group(pair_name)  # the rollout died; its actors went with it, their placement group did not
    ray.kill(rollout)


def check_training_fits(cfg: Config) -> None:
    """Ray Train would wait forever for workers the cluster cannot hold: say so before starting."""
    t, have = cfg.train, ray.cluster_resources()
    need = {"CPU": cfg.teacher.num_cpus + cfg.student.num_cpus + t.num_workers * t.cpus_per_worker,
            "GPU": cfg.teacher.num_gpus + cfg.student.num_gpus + t.num_workers * t.gpus_per_worker}
    for name, amount in need.items():
        if amount > have.get(name, 0) + 1e-9:
            raise ConfigError(f"teacher, student and {t.num_workers} training workers need {amount:g} {name} together "
                              f"but the Ray cluster has {have.get(name, 0):g}; lower train.num_workers or *.num_{name.lower()}s")


ROLLOUT_DIED = "the rollout actor died (it owns the teacher, the student and the step's batch)"


def _stop_reason(rollout) -> str | None:
    """Why the trainer ended the run on purpose (e.g. a non-finite loss), or that the rollout died
    (the workers then leave without an error of their own: train_loop.RolloutGone)."""
    try:
        return ray.get(rollout.stopped.remote())
    except ray.exceptions.RayActorError:
        return ROLLOUT_DIED


def _fit_with_progress(trainer, rollout, steps: int, progress: bool):
    """Run trainer.fit() in a thread and show a bar fed by the rollout actor's metrics."""
    outcome = {}

    def fit():
        try:
            outcome["result"] = trainer.fit()
        except Exception as err:  # Ray Train wraps worker errors; the first line says what happened
            outcome["error"] = err

    thread = threading.Thread(target=fit, daemon=True)
    thread.start()
    with tqdm(total=steps, desc="train", unit="step", disable=not progress) as bar:
        while thread.is_alive():
            thread.join(timeout=2.0)
            try:
                metrics = ray.get(rollout.progress.remote())
            except ray.exceptions.RayActorError:
                thread.join(timeout=300)  # the workers leave at their next call to it (train_loop.RolloutGone)
                return ROLLOUT_DIED
            if metrics and metrics[-1]["step"] != bar.n:
                bar.n = metrics[-1]["step"]
                bar.set_postfix(loss=f"{metrics[-1]['loss']:.4f}", tok_s=f"{metrics[-1]['tokens_per_s']:.0f}",
                                **postfix(metrics[-1]["phases"]))  # seconds of the last step's phases
                bar.refresh()
    if "error" in outcome:
        return _first_cause(outcome["error"])
    return None


def _first_cause(err: Exception) -> str:
    """The worker's own exception line out of Ray Train's wrapped traceback."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    raised = [line for line in lines if re.match(r"^[\w.]+(Error|Exception|Loss)\b", line)]
    if raised:
        return raised[-1]
    return " | ".join(lines[:1] + lines[-1:]) if lines else type(err).__name__  # the headline and the worker's last word


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def _eos(tokenizer, cfg) -> list[int]:
    return sorted(eos_ids(tokenizer, cfg.teacher.path) | eos_ids(tokenizer, cfg.student.path))

