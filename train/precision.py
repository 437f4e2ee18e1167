"""train.precision: which precision the trainer computes in, and how.

`auto` picks bf16 where the device runs bf16 matmuls fast: a CUDA GPU that supports bf16, or a CPU
that reports AVX512-BF16 or AMX (x86) or the BF16 extension (Arm); fp32 elsewhere, where bf16 would
be emulated and slower. Master weights and the optimizer stay fp32 either way, and the loss's
log-softmax and divergence math run in fp32 (train.objective):
  - on a GPU, DeepSpeed's bf16 mode (bf16 parameters for compute, fp32 masters in its optimizer);
  - on a CPU, torch autocast around the forward: fp32 parameters, bf16 matmuls.
"""
import contextlib
import platform
from dataclasses import dataclass

import torch

from studyhall.hardware import bf16_flags, cpu_flags


@dataclass(frozen=True)
class Precision:
    dtype: str  # "bf16" | "fp32"
    how: str  # "deepspeed_bf16" | "autocast" | "fp32"
    why: str  # one line for the report

    @property
    def deepspeed_bf16(self) -> bool:
        return self.how == "deepspeed_bf16"

    def forward_context(self, device: torch.device):
        if self.how == "autocast":
            return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()


def choose(setting: str, on_gpu: bool, gpu_bf16: bool, flags: set[str], cpu_name: str = "") -> Precision:
    """The precision for train.precision=`setting`, given what the device reports."""
    if setting == "fp32":
        return Precision("fp32", "fp32", "train.precision=fp32")
    if on_gpu:
        if setting == "bf16" or gpu_bf16:
            return Precision("bf16", "deepspeed_bf16", f"train.precision={setting}: a GPU" + (" with bf16" if gpu_bf16 else ""))
        return Precision("fp32", "fp32", "train.precision=auto: this GPU does not support bf16")
    fast = bf16_flags(flags)
    if setting == "bf16":
        return Precision("bf16", "autocast", "train.precision=bf16 on the CPU" + (f" ({', '.join(fast)})" if fast else
                                                                              ", which reports no bf16 instructions (emulated, slow)"))
    if fast:
        return Precision("bf16", "autocast", f"train.precision=auto: the CPU reports {', '.join(fast)}")
    return Precision("fp32", "fp32", f"train.precision=auto: the CPU{f' ({cpu_name})' if cpu_name else ''} reports no bf16 "
                                     "instructions (AVX512-BF16, AMX or Arm BF16), so bf16 would be emulated")


def resolve(setting: str, use_gpu: bool) -> Precision:
    """choose() for this process's device."""
    gpu_bf16 = bool(use_gpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    return choose(setting, use_gpu, gpu_bf16, set() if use_gpu else cpu_flags(), platform.processor())
