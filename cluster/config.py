"""Configuration: plain dataclasses, YAML presets, `key=value` overrides, validated before any actor starts."""
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from studyhall.distill_math import DIVERGENCES, SCHEDULES

PRESET_DIR = Path(__file__).parent / "presets"
DTYPES = ("auto", "float32", "float64", "bfloat16", "float16")


class ConfigError(ValueError):
    """A user mistake in configuration or input; the CLI prints it as one line, without a trace."""


@dataclass
class ModelConfig:
    # "embedded:teacher", "embedded:student", "tiny:teacher", "tiny:student", a local folder or a hub id.
    path: str = "embedded:teacher"
    dtype: str = "auto"  # auto = bfloat16 on GPU, float32 on CPU
    trust_remote_code: bool = False
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    resources: dict = field(default_factory=dict)  # custom Ray resources, e.g. {"teacher_gpu": 1}


@dataclass
class SwitchConfig:
    divergence: str = "js"  # js | kl_ts | kl_st | tv | skd
    schedule: str = "exponential"  # exponential | constant | linear
    tau0: float = 0.3
    lam: float = 0.01  # decay per answer position
    skd_top_k: int = 25  # only for divergence=skd: tau is fixed at K - 0.5 on the teacher rank
    mode: str = "block"  # block | per_token (the reference: gamma = 1, student drafts)
    gamma: int = 4  # first block length
    gamma_max: int = 12
    adaptive_gamma: bool = True
    sample: bool = True  # False = greedy
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 128
    batch_size: int = 16  # sequences in flight, split across the pipeline groups
    pipeline_groups: int = 2  # groups take turns, so one model drafts for one while the other scores another
    seed: int = 0
    teacher_topk: int = 20  # teacher log-probs kept per position, beside the chosen token's own
    wire_dtype: str = "float32"  # distributions between actors: float32 (exact) or float16

    def tau_for_skd(self) -> float:
        return self.skd_top_k - 0.5


@dataclass
class Config:
    preset: str = "smol"
    teacher: ModelConfig = field(default_factory=ModelConfig)
    student: ModelConfig = field(default_factory=lambda: ModelConfig(path="embedded:student"))
    switch: SwitchConfig = field(default_factory=SwitchConfig)
    placement_timeout_s: float = 60.0  # how long actors may wait for resources before we give up


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_config(preset: str, overrides: list[str] = ()) -> Config:
    """Preset YAML, then overrides, then validation."""
    path = PRESET_DIR / f"{preset}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(preset_names())}")
    raw = yaml.safe_load(path.read_text()) or {}
    cfg = _build(Config, raw, where=str(path))
    cfg.preset = preset
    for item in overrides:
        apply_override(cfg, item)
    validate(cfg)
    return cfg


def _build(cls, raw: dict, where: str):
    known = {f.name: f for f in dataclasses.fields(cls)}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of fields for {cls.__name__}, got {raw!r}")
    defaults, kwargs = cls(), {}
    for key, value in raw.items():
        if key not in known:
            raise ConfigError(f"{where}: unknown field {key!r} for {cls.__name__}; known: {', '.join(known)}")
        sub = known[key].type
        if dataclasses.is_dataclass(sub):
            kwargs[key] = _build(sub, value, f"{where}: {key}")
        else:
            kwargs[key] = _coerce(getattr(defaults, key), value, str(value), f"{where}: {key}={value!r}")
    return cls(**kwargs)


def _leaf_paths(obj, prefix=()) -> dict[str, tuple]:
    out = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out.update(_leaf_paths(value, prefix + (f.name,)))
        else:
            out[".".join(prefix + (f.name,))] = prefix + (f.name,)
    return out


def apply_override(cfg: Config, item: str) -> None:
    """`switch.tau0=0.2`, or a leaf name that is unique, like `tau0=0.2`. Values parse as YAML."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not key=value")
    key, text = item.split("=", 1)
    paths = _leaf_paths(cfg)
    matches = [p for dotted, p in paths.items() if dotted == key or dotted.endswith("." + key)]
    if len(matches) != 1:
        hint = "ambiguous, use one of " + ", ".join(".".join(m) for m in matches) if matches else "unknown key"
        raise ConfigError(f"override {item!r}: {hint}")
    *parents, leaf = matches[0]
    target = cfg
    for name in parents:
        target = getattr(target, name)
    old = getattr(target, leaf)
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = text
    setattr(target, leaf, _coerce(old, value, text, f"override {item!r}"))


def _coerce(old, value, text: str, label: str):
    """Give the override the type of the field it replaces."""
    if isinstance(value, str) and isinstance(old, (int, float)) and not isinstance(old, bool):
        try:
            value = float(value)  # YAML 1.1 reads "1e9" as a string
        except ValueError:
            pass
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(old, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{label}: must be true or false")
        return value
    if isinstance(old, int):
        if not is_number or not float(value).is_integer():
            raise ConfigError(f"{label}: must be a whole number")
        return int(value)
    if isinstance(old, float):
        if not is_number:
            raise ConfigError(f"{label}: must be a number")
        return float(value)
    if isinstance(old, dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{label}: must be a mapping like {{name: 1}}")
        return value
    return text


def validate(cfg: Config) -> None:
    s = cfg.switch
    checks = [
        (s.divergence in DIVERGENCES, f"switch.divergence={s.divergence!r}: choose one of {', '.join(DIVERGENCES)}"),
        (s.schedule in SCHEDULES, f"switch.schedule={s.schedule!r}: choose one of {', '.join(SCHEDULES)}"),
        (s.mode in ("block", "per_token"), f"switch.mode={s.mode!r}: choose block or per_token"),
        (math.isfinite(s.tau0) and s.tau0 >= 0, f"switch.tau0={s.tau0}: must be >= 0"),
        (math.isfinite(s.lam) and s.lam >= 0, f"switch.lam={s.lam}: must be >= 0"),
        (s.gamma >= 1, f"switch.gamma={s.gamma}: must be >= 1"),
        (s.gamma_max >= s.gamma, f"switch.gamma_max={s.gamma_max}: must be >= gamma ({s.gamma})"),
        (not s.sample or s.temperature > 0, f"switch.temperature={s.temperature}: must be > 0 when sampling (or set sample=false for greedy)"),
        (0 < s.top_p <= 1, f"switch.top_p={s.top_p}: must be in (0, 1]"),
        (s.max_new_tokens >= 1, f"switch.max_new_tokens={s.max_new_tokens}: must be >= 1"),
        (s.batch_size >= 1, f"switch.batch_size={s.batch_size}: must be >= 1"),
        (s.pipeline_groups >= 1, f"switch.pipeline_groups={s.pipeline_groups}: must be >= 1"),
        (s.skd_top_k >= 1, f"switch.skd_top_k={s.skd_top_k}: must be >= 1"),
        (s.teacher_topk >= 0, f"switch.teacher_topk={s.teacher_topk}: must be >= 0"),
        (s.wire_dtype in ("float32", "float16"), f"switch.wire_dtype={s.wire_dtype!r}: choose float32 or float16"),
    ]
    checks.append((cfg.placement_timeout_s > 0, f"placement_timeout_s={cfg.placement_timeout_s}: must be > 0"))
    for role in ("teacher", "student"):
        m = getattr(cfg, role)
        checks += [
            (m.dtype in DTYPES, f"{role}.dtype={m.dtype!r}: choose one of {', '.join(DTYPES)}"),
            (m.num_cpus >= 0 and m.num_gpus >= 0, f"{role}: num_cpus and num_gpus must be >= 0"),
            (isinstance(m.resources, dict), f"{role}.resources must be a mapping"),
        ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
