"""What this machine's CPU can do fast: read once from /proc/cpuinfo, for the precision choices of the
trainer (train/precision.py) and of the model actors (actors.models.pick_dtype)."""
from functools import lru_cache
from pathlib import Path

CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")  # x86 AVX512-BF16, x86 AMX, Arm's BF16 (aarch64 "Features")


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU's feature flags as Linux reports them (empty where /proc/cpuinfo is not there)."""
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        cpuinfo = path.read_text() if path.is_file() else ""
    flags = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return flags


def bf16_flags(flags: set[str]) -> list[str]:
    """Those of `flags` by which a CPU runs bf16 matmuls in hardware (none: bf16 would be emulated, slower than fp32)."""
    return sorted(flags & set(CPU_BF16_FLAGS))


@lru_cache(maxsize=1)
def cpu_bf16_flags() -> tuple[str, ...]:
    """bf16_flags of this machine's CPU."""
    return tuple(bf16_flags(cpu_flags()))
