"""What each Ray Train worker runs: the student under DeepSpeed, fed by the rollout actor.

  loop: records <- rollout.batch(step)  ->  loss  ->  engine.backward / engine.step
        every push_every steps: rank 0 puts the weights in the object store for the generation actor
        ray.train.report(metrics [, checkpoint])

With train.max_staleness >= 1 the rollout makes the next batches while this loop trains, each with
the newest weights pushed before it started (one step old at most, with max_staleness=1).
"""
import contextlib
import dataclasses
import json
import math
import os
import time
from pathlib import Path

import ray
import ray.train
import torch
import torch.distributed as dist

from actors.models import load_model, load_tokenizer
from actors.weights import pack
from studyhall.config import Config
from studyhall.threads import trainer_threads
from studyhall.unlikelihood import OWN_GREEDY
from train.answer_logits import AnswerLogitsLM
from train.attention import choose as choose_attention
from train.checkpoint_target import checkpoint_target
from train.cores import NodeCores
from train.objective import Cross, answer_loss, collate, micro_batches, with_own_greedy
from train.phases import PhaseTimer
from train.precision import resolve as resolve_precision

PROGRESS_FILE = "progress.json"
DS_TAG = "deepspeed"


@dataclasses.dataclass(frozen=True)
class WorkerArgs:
    """What the driver hands every Ray Train worker (as train_loop_config={"args": ...})."""
    cfg: Config
    rollout: object  # the Rollout actor's handle: batches in, weights and metrics out
    loss: str  # the resolved train.loss
    pad_id: int
    eos_ids: list[int]  # written into the saved student's generation config
    student_dir: str  # where rank 0 saves the HF student
    cross: Cross | None = None  # the teacher's and student's tokenizers differ (train/objective.Cross)
    resume_from: str | None = None  # a checkpoint folder from --resume


def trainer_student(cfg: Config, device: torch.device, use_gpu: bool) -> AnswerLogitsLM:
    """The student as the trainer steps it: fp32 weights (DeepSpeed keeps the masters and casts for bf16
    itself; CPU autocast casts per op), train.attention's kernel, logits at answer positions only."""
    model = load_model(dataclasses.replace(cfg.student, dtype="float32"), device).train()
    model.config.use_cache = False
    model.set_attn_implementation(choose_attention(cfg.train.attention, use_gpu))
    return AnswerLogitsLM(model, enabled=cfg.train.answer_logits)


def deepspeed_config(t, world: int, bf16: bool) -> dict:
    """ZeRO stage, precision, AdamW (torch's own, so CPUs build nothing; fused, one kernel over all
    parameters: 4x faster than the foreach step on one CPU thread), LR schedule, clipping, accumulation."""
    # DeepSpeed's schedulers want >= 1 warmup step; starting it at the full lr means no warmup at all.
    warmup, start = max(t.warmup_steps, 1), (0.0 if t.warmup_steps else t.lr)
    schedulers = {
        "constant": {"type": "WarmupLR", "params": {"warmup_min_lr": start, "warmup_max_lr": t.lr, "warmup_num_steps": warmup}},
        "linear": {"type": "WarmupDecayLR", "params": {"warmup_min_lr": start, "warmup_max_lr": t.lr, "warmup_num_steps": warmup,
                                                       "total_num_steps": t.steps}},
        "cosine": {"type": "WarmupCosineLR", "params": {"total_num_steps": t.steps, "warmup_num_steps": warmup,
                                                        "warmup_min_ratio": start / t.lr, "cos_min_ratio": 0.1}},
    }
    return {
        "train_batch_size": t.global_batch,
        "train_micro_batch_size_per_gpu": t.micro_batch,
        "gradient_accumulation_steps": t.global_batch // (t.micro_batch * world),
        "gradient_clipping": t.grad_clip,
        "optimizer": {"type": "AdamW", "params": {"lr": t.lr, "weight_decay": t.weight_decay, "betas": [0.9, 0.95], "torch_adam": True,
                                                  "fused": True}},
        "scheduler": schedulers[t.lr_schedule],
        "zero_optimization": {"stage": t.zero_stage},
        "bf16": {"enabled": bf16},
        "steps_per_print": 10 ** 9,
        "wall_clock_breakdown": False,
    }


def skip_shm_build(deepspeed) -> None:
    """On the CPU, DeepSpeed's comm backend JIT-compiles a shared-memory all-reduce kernel when it starts
    (minutes on a fresh machine, every new venv path). It serves inference all-reduce only; training
    reduces through the gloo group Ray Train made, so mark the op unavailable and skip the build."""
    if deepspeed.accelerator.get_accelerator().device_name() == "cpu":
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def gathered(engine, zero_stage: int):
    """The whole model's parameters present on every rank: under ZeRO-3 one gather of all of them
    (every rank must join it), else nothing to do."""
    import deepspeed  # the worker set DS_ACCELERATOR before DeepSpeed's first import (train_loop_per_worker)

    if zero_stage != 3:
        return contextlib.nullcontext()
    return deepspeed.zero.GatheredParameters(list(engine.module.parameters()), modifier_rank=None)


def student_of(engine):
    """The HF model inside the engine (the engine wraps train.answer_logits.AnswerLogitsLM around it)."""
    return engine.module.lm


def full_state_dict(engine, zero_stage: int) -> dict:
    """The whole model's weights on CPU, in float32."""
    with gathered(engine, zero_stage):
        return {k: v.detach().float().cpu().clone() for k, v in student_of(engine).state_dict().items()}


def weights_packet(engine, zero_stage: int, rank: int, step: int, wire_dtype: torch.dtype):
    """Rank 0's weights of `step` as an actors.weights.Packet, in the generation actor's dtype, each
    tied tensor once; None on other ranks. Its arrays share memory with the model: it must reach the
    object store (the push) before the next optimizer step."""
    if rank != 0 and zero_stage != 3:
        return None
    with gathered(engine, zero_stage):
        return pack(student_of(engine).state_dict(), step, wire_dtype) if rank == 0 else None


def push(rollout, packet) -> None:
    """Put the packet in the object store once, here, and hand the rollout its reference: passed by
    value, the arrays would reach the rollout, and the student actor only through a second copy."""
    ray.get(rollout.push_weights.remote([ray.put(packet)]))


class RolloutGone(RuntimeError):
    """The rollout actor died. Every rank leaves together and returns: a raise would have Ray Train
    retry the group against a rollout that is not coming back. The driver reports it."""


def _on_rank0(rank: int, work, timer: PhaseTimer | None = None) -> None:
    """Rank 0 does `work` (calls to the rollout actor); then every rank learns whether the rollout
    is still there. This is also the barrier: no rank goes on before rank 0 is done. With a timer,
    the work counts as the weight push and the wait as the barrier."""
    timer = timer or PhaseTimer()
    gone = torch.tensor([0.0])
    if rank == 0:
        with timer("weight_push"):
            try:
                work()
            except ray.exceptions.RayActorError:
                gone[0] = 1.0
    with timer("barrier"):
        dist.all_reduce(gone)
    if gone.item():
        raise RolloutGone()


def _from_rollout(call):
    """A rollout call every rank makes at the same point (so all of them see it fail together)."""
    try:
        return ray.get(call)
    except ray.exceptions.RayActorError:
        raise RolloutGone() from None


def train_loop_per_worker(config: dict) -> None:
    try:
        _train(config["args"])
    except RolloutGone:
        return


def _train(args: WorkerArgs) -> None:
    cfg, rollout = args.cfg, args.rollout
    t = cfg.train
    use_gpu = torch.cuda.is_available() and t.gpus_per_worker > 0
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if use_gpu else "cpu")
    import deepspeed  # after DS_ACCELERATOR: DeepSpeed picks its accelerator on import

    skip_shm_build(deepspeed)
    torch.set_num_threads(trainer_threads(cfg))
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(cfg.seed + rank)
    precision = resolve_precision(t.precision, use_gpu)
    device = ray.train.torch.get_device() if use_gpu else torch.device("cpu")
    student = trainer_student(cfg, device, use_gpu)
    engine, _, _, scheduler = deepspeed.initialize(model=student, model_parameters=[p for p in student.parameters() if p.requires_grad],
                                                   config=deepspeed_config(t, world, precision.deepspeed_bf16), dist_init_required=False)
    how = {"precision": precision.dtype, "precision_how": precision.how, "precision_why": precision.why,
           "answer_logits_only": student.split, "attention": student.lm.config._attn_implementation,
           "malloc": os.environ.get("GLIBC_TUNABLES", "")}  # as this worker process started with it (train/allocator.py)

    wire_dtype = getattr(torch, _from_rollout(rollout.weights_dtype.remote()))
    step, replaced = _resume(engine, rollout, rank, t.zero_stage, args.resume_from, wire_dtype)
    pad_id = args.pad_id
    # KL to the teacher on held-out answers, before and after: the plainest sign of distillation.
    # Every rank runs the forward (under ZeRO-3 it gathers parameters collectively); rank 0 reports.
    measure_kl = cfg.train.teacher_topk > 0
    if measure_kl and not replaced:  # a replacement group continues the run: its start was measured
        kl_start = _val_loss(engine, args, precision, "fkl")
        if rank == 0:
            rollout.log_val_kl.remote("start", step, kl_start)
    with_teacher = args.loss != "ce"
    distill_own = t.unlikelihood_teacher  # the teacher scored the greedy answers too (RecordMaker.own_greedy_records)
    started, trained_tokens, run_positions = time.perf_counter(), 0, 0
    timer = PhaseTimer(node=NodeCores() if rank == 0 else None)  # rank 0 reports the phases
    while step < t.steps:
        step += 1
        with timer("waiting"):
            records = _from_rollout(rollout.batch.remote(step, rank, world))
        step_loss, step_tokens, step_repeats = 0.0, 0, 0
        distill_records = [r for r in records if r.source != OWN_GREEDY]
        for part in with_own_greedy(micro_batches(distill_records, t.micro_batch, t.group_by_length), records):
            with timer("forward_backward"):
                batch = _to(collate(part, pad_id, with_teacher, t.unlikelihood_ngram, distill_own), engine.device)
                loss = answer_loss(_forward(engine, batch, precision), batch, args.loss, t.beta, t.alpha, t.loss_temperature,
                                   t.unlikelihood, args.cross)
            if not _all_finite(loss):
                # Stop every rank before the bad update. Returning, not raising: Ray Train would
                # retry a raise from the last checkpoint (FailureConfig), for a loss that diverged.
                seen = f"{loss.item()}" if not torch.isfinite(loss) else "non-finite on another rank"
                _on_rank0(rank, lambda: ray.get(rollout.stop.remote(
                    f"NonFiniteLoss: the loss became {seen} at step {step}; stopped before the update. "
                    "The last good checkpoint is kept; try a lower lr or grad_clip.")))
                return
            with timer("forward_backward"):
                engine.backward(loss)
            with timer("optimizer"):
                engine.step()
            step_loss += loss.item() / math.ceil(len(distill_records) / t.micro_batch)
            step_tokens += batch.tokens
            step_repeats += int(batch.repeats.sum()) if batch.repeats is not None else 0
            run_positions += batch.positions
        trained_tokens += step_tokens
        mean_loss = _mean_over_ranks(step_loss, world)

        with timer("weight_push"):
            weights = (weights_packet(engine, t.zero_stage, rank, step, wire_dtype)
                       if step % t.push_every == 0 or step == t.steps else None)
        val = None
        if t.method == "distillm" and step % t.val_every == 0:  # timed only when it runs: the others report 0
            with timer("validation"):
                val = _val_loss(engine, args, precision, args.loss)

        def to_rollout():
            if weights is not None:
                push(rollout, weights)
            if val is not None:
                ray.get(rollout.observe_val_loss.remote(step, val))

        _on_rank0(rank, to_rollout, timer)  # pushed before the next batch is asked for
        del weights

        elapsed = time.perf_counter() - started
        metrics = {"step": step, "loss": mean_loss, "lr": scheduler.get_last_lr()[0] if scheduler else t.lr,
                   "tokens": trained_tokens * world, "tokens_per_s": trained_tokens * world / max(elapsed, 1e-9),
                   "padding_share": 1 - trained_tokens / max(run_positions, 1),  # rank 0's micro-batches so far
                   "repeats": step_repeats}  # this rank's looping tokens in the student's greedy answers (train.unlikelihood)
        with timer("checkpoint"):
            if step % t.checkpoint_every == 0 or step == t.steps:
                _report_with_checkpoint(engine, metrics, rank)
            else:
                ray.train.report(metrics)
        phases = timer.take()  # rank 0's: the rollout adds the generation inside its wait
        if rank == 0:
            rollout.log_metrics.remote({**metrics, "phases": phases, **how})

    if measure_kl:
        kl_end = _val_loss(engine, args, precision, "fkl")
        _on_rank0(rank, lambda: ray.get(rollout.log_val_kl.remote("end", step, kl_end)))
    if rank == 0 or t.zero_stage == 3:
        _save_student(engine, args, rank, t.zero_stage)


def _forward(engine, batch, precision, module=None):
    """The student's logits at the batch's response positions, [N, V] (train.answer_logits)."""
    with precision.forward_context(engine.device):
        return (module or engine)(input_ids=batch.input_ids, attention_mask=batch.attention_mask, positions=batch.logit_positions)


def _to(batch, device):
    for name in ("input_ids", "attention_mask", "targets", "loss_mask", "teacher_ids", "teacher_logp", "repeats"):
        value = getattr(batch, name)
        if value is not None:
            setattr(batch, name, value.to(device))
    return batch


def _all_finite(loss: torch.Tensor) -> bool:
    """Whether every rank's loss is finite: all ranks learn of a NaN/inf on any of them."""
    bad = torch.tensor([0.0 if torch.isfinite(loss) else 1.0])
    dist.all_reduce(bad)
    return bad.item() == 0


def _mean_over_ranks(value: float, world: int) -> float:
    tensor = torch.tensor([value])
    dist.all_reduce(tensor)
    return tensor.item() / world


@torch.no_grad()
def _val_loss(engine, args: WorkerArgs, precision, loss: str) -> float:
    """The loss on held-out references the teacher scored (DistiLLM's validation signal, and the report's KL)."""
    records = _from_rollout(args.rollout.val_records.remote())
    t = args.cfg.train
    total, n = 0.0, 0
    for part in micro_batches(records, t.micro_batch):
        batch = _to(collate(part, args.pad_id, True), engine.device)
        logits = _forward(engine, batch, precision, module=engine.module)
        total += answer_loss(logits, batch, loss, t.beta, t.alpha, t.loss_temperature, cross=args.cross).item() * len(part)
        n += len(part)
    return total / max(n, 1)


def _report_with_checkpoint(engine, metrics: dict, rank: int) -> None:
    """Each rank writes its DeepSpeed shard (train/checkpoint_target.py: all into one folder of the run's
    own storage when it is a local path, else each into a temporary folder Ray Train uploads in the
    background); rank 0's progress file goes in last. A failure before Ray Train registers it restarts from the
    checkpoint before it."""
    folder, upload = checkpoint_target(ray.train.get_context().get_storage(), metrics["step"])
    engine.save_checkpoint(folder, tag=DS_TAG)
    if rank == 0:
        Path(folder, PROGRESS_FILE).write_text(json.dumps({"step": metrics["step"], "loss": metrics["loss"]}))
    ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder), checkpoint_upload_mode=upload)


def _resume(engine, rollout, rank: int, zero_stage: int, resume_from: str | None, wire_dtype: torch.dtype) -> tuple[int, bool]:
    """(step to continue from, whether this worker group replaces one that failed).

    The step comes from Ray Train's own checkpoint when it restarted the workers after a failure
    (FailureConfig), else from the one `--resume` found, else 0. The generation actor then gets these
    weights: after a failure it holds ones trained past the checkpoint (or past the start)."""
    checkpoint = ray.train.get_checkpoint() or (ray.train.Checkpoint.from_directory(resume_from) if resume_from else None)
    step = 0
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            engine.load_checkpoint(folder, tag=DS_TAG)
            step = json.loads(Path(folder, PROGRESS_FILE).read_text())["step"]
    replaced = torch.tensor([0.0])  # the rollout actor outlives worker groups: it knows whether one trained before
    _on_rank0(rank, lambda: replaced.fill_(float(ray.get(rollout.trainer_started.remote(step)))))
    dist.broadcast(replaced, 0)
    if step > 0 or replaced.item():
        weights = weights_packet(engine, zero_stage, rank, step, wire_dtype)
        _on_rank0(rank, lambda: push(rollout, weights))
        del weights
    return step, bool(replaced.item())


def _save_student(engine, args: WorkerArgs, rank: int, zero_stage: int) -> None:
    """An HF folder that AutoModelForCausalLM.from_pretrained loads: safetensors, config, tokenizer, generation config."""
    state = full_state_dict(engine, zero_stage)
    if rank != 0:
        return
    out = Path(args.student_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = student_of(engine)
    model.config.use_cache = True
    model.save_pretrained(out, state_dict=state, safe_serialization=True)
    cfg = args.cfg
    load_tokenizer(cfg.student.path, cfg.student.trust_remote_code).save_pretrained(out)
    generation = model.generation_config
    generation.eos_token_id = sorted(args.eos_ids)
    generation.save_pretrained(out)
