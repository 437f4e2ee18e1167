"""`studyhall bench train`: DeepSpeed training tokens/s against a plain PyTorch loop, same model,
same batches, same loss and optimizer settings, measured inside one Ray Train worker in one run.

Both loops step the student as the distillation trainer does: its thread count (studyhall.threads),
train.precision, train.attention and the LM head on answer positions only (train.answer_logits). The DeepSpeed loop's
forward and backward seconds per step are the isolated counterpart of `bench distill`'s
forward_backward phase, which runs beside the generation actors."""
import json
import os
import tempfile
import time
from pathlib import Path

import ray
import torch
from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from actors.models import model_config
from studyhall.config import Config, load_config
from studyhall.record import Record
from studyhall.threads import trainer_threads
from train.methods import loss_for
from train.objective import answer_loss, collate
from train.precision import resolve as resolve_precision
from train.train_loop import deepspeed_config, skip_shm_build, trainer_student

WARMUP_STEPS = 2


def synthetic_records(vocab: int, n: int, prompt_len: int, response_len: int, topk: int, seed: int) -> list[Record]:
    """Fixed random sequences with random teacher top-k: what the loss sees, without generation."""
    g = torch.Generator().manual_seed(seed)
    records = []
    for _ in range(n):
        logp = torch.log_softmax(torch.randn(response_len, vocab, generator=g), -1).topk(topk, -1)
        records.append(Record(f"synthetic{len(records)}", torch.randint(0, vocab, (prompt_len,), generator=g).tolist(),
                              torch.randint(0, vocab, (response_len,), generator=g).tolist(),
                              teacher_topk_ids=logp.indices.tolist(), teacher_topk_logprobs=logp.values.tolist()))
    return records


def _bench_worker(config: dict) -> None:
    cfg: Config = config["cfg"]
    t = cfg.train
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed  # after DS_ACCELERATOR: DeepSpeed picks its accelerator on import

    skip_shm_build(deepspeed)
    torch.set_num_threads(trainer_threads(cfg))
    precision = resolve_precision(t.precision, False)
    cpu = torch.device("cpu")

    loss_name, steps = config["loss"], config["steps"]
    batches = [collate(config["records"][i:i + t.micro_batch], 0, loss_name != "ce")
               for i in range(0, len(config["records"]), t.micro_batch)]
    tokens_per_step = sum(b.tokens for b in batches)

    def fresh_model():
        torch.manual_seed(0)
        return trainer_student(cfg, cpu, use_gpu=False)

    def loss_of(model, b):
        with precision.forward_context(cpu):
            logits = model(input_ids=b.input_ids, attention_mask=b.attention_mask, positions=b.logit_positions)
        return answer_loss(logits, b, loss_name, t.beta, t.alpha, 1.0)

    def timed(step_fn) -> float:
        for _ in range(WARMUP_STEPS):
            step_fn()
        started = time.perf_counter()
        for _ in range(steps):
            step_fn()
        return steps * tokens_per_step / (time.perf_counter() - started)

    ds_config = deepspeed_config(t, 1, precision.deepspeed_bf16)
    model = fresh_model()
    # the trainer's own AdamW settings (betas, decay, fused), less DeepSpeed's switch for torch's optimizer
    adam = {k: v for k, v in ds_config["optimizer"]["params"].items() if k != "torch_adam"}
    optimizer = torch.optim.AdamW(model.parameters(), **adam)

    def plain_step():
        optimizer.zero_grad(set_to_none=True)
        for b in batches:
            (loss_of(model, b) / len(batches)).backward()
        if t.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        optimizer.step()

    plain = timed(plain_step)
    model = optimizer = None  # free the plain copy before DeepSpeed builds its own

    model = fresh_model()
    engine, *_ = deepspeed.initialize(model=model, model_parameters=list(model.parameters()),
                                      config=ds_config, dist_init_required=False)
    forward_backward = []  # seconds per DeepSpeed step in forward and backward alone

    def deepspeed_step():
        seconds = 0.0
        for b in batches:
            started = time.perf_counter()
            engine.backward(loss_of(engine, b))
            seconds += time.perf_counter() - started
            engine.step()
        forward_backward.append(seconds)

    ds = timed(deepspeed_step)
    timed_fb = forward_backward[WARMUP_STEPS:]
    with tempfile.TemporaryDirectory() as tmp:  # Ray Train v2 keeps metrics with a checkpoint
        ray.train.report({"plain_tokens_per_s": plain, "deepspeed_tokens_per_s": ds, "tokens_per_step": tokens_per_step,
                          "forward_backward_s_per_step": sum(timed_fb) / len(timed_fb), "threads": torch.get_num_threads(),
                          "precision": precision.dtype, "precision_why": precision.why, "answer_logits_only": model.split},
                         checkpoint=ray.train.Checkpoint.from_directory(tmp))


def run_bench(preset: str, out: str, steps: int, overrides: list[str]) -> dict:
    cfg = load_config(preset, ["num_workers=1", *overrides])
    t = cfg.train
    loss = loss_for(t.method, t.loss)
    vocab = model_config(cfg.student).vocab_size
    records = synthetic_records(vocab, t.global_batch, 64, t.answer_tokens, max(t.teacher_topk, 1), cfg.seed)
    if not ray.is_initialized():
        ray.init(log_to_driver=False)
    out_path = Path(out).resolve()
    trainer = TorchTrainer(
        _bench_worker, train_loop_config={"cfg": cfg, "records": records, "loss": loss, "steps": steps},
        torch_config=TorchConfig(backend="gloo"),
        scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": max(t.cpus_per_worker, 1.0)}),
        run_config=RunConfig(name="bench_train", storage_path=str(out_path.parent / "ray_train_bench")))
    metrics = trainer.fit().metrics
    result = {
        "preset": preset, "model": cfg.student.path, "loss": loss, "zero_stage": t.zero_stage,
        "global_batch": t.global_batch, "micro_batch": t.micro_batch, "sequence_tokens": 64 + t.answer_tokens,
        "timed_steps": steps, "warmup_steps": WARMUP_STEPS, "tokens_per_step": metrics["tokens_per_step"],
        "plain_tokens_per_s": round(metrics["plain_tokens_per_s"], 1),
        "deepspeed_tokens_per_s": round(metrics["deepspeed_tokens_per_s"], 1),
        "ratio": round(metrics["deepspeed_tokens_per_s"] / metrics["plain_tokens_per_s"], 3),
        "goal": ">= 0.9",
        "deepspeed_forward_backward_s_per_step": round(metrics["forward_backward_s_per_step"], 3),
        "threads": metrics["threads"], "precision": metrics["precision"], "precision_why": metrics["precision_why"],
        "answer_logits_only": metrics["answer_logits_only"],
    }
    result["goal_met"] = result["ratio"] >= 0.9
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2))
    out_path.with_suffix(".md").write_text(
        "| model | ZeRO | loss | precision, threads | batch | plain tokens/s | DeepSpeed tokens/s | ratio | DeepSpeed forward+backward s/step |\n"
        "|---|---|---|---|---|---|---|---|---|\n"
        f"| {result['model']} | {t.zero_stage} | {loss} | {result['precision']}, {result['threads']} | {t.global_batch}x{result['sequence_tokens']} | "
        f"{result['plain_tokens_per_s']} | {result['deepspeed_tokens_per_s']} | {result['ratio']} | "
        f"{result['deepspeed_forward_backward_s_per_step']} |\n")
    return result
