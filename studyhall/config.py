"""Configuration: plain dataclasses, YAML presets, `key=value` overrides, validated before any actor starts."""
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from studyhall.distill_math import ADAPTIVE, DIVERGENCES, SCHEDULES

PRESET_DIR = Path(__file__).parent / "presets"
DTYPES = ("auto", "float32", "float64", "bfloat16", "float16")
PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")  # Ray's placement group strategies
WRITERS = ("both", "student", "teacher")
# Filled in per engine run by studyhall/engine_settings.py from the keys that own them; not keys themselves.
RUN_FILLED = {"run_filled": True}
# Keys that moved to the section that owns them: the old name stops with one line naming the new one.
MOVED = {"switch.seed": "seed", "switch.teacher_topk": "train.teacher_topk"}


class ConfigError(ValueError):
    """A user mistake in configuration or input; the CLI prints it as one line, without a trace."""


@dataclass
class ModelConfig:
    # "embedded:teacher", "embedded:student", "tiny:teacher", "tiny:student", a local folder or a hub id.
    path: str = "embedded:teacher"
    dtype: str = "auto"  # auto = bfloat16 on a GPU or a CPU that reports AVX512-BF16, AMX or Arm BF16; else float32
    trust_remote_code: bool = False  # run a hub model's own Python code (only for models that need it)
    num_cpus: float = 1.0  # Ray CPUs for this actor; on the CPU also its torch threads (studyhall/threads.py)
    num_gpus: float = 0.0  # Ray GPUs for this actor (a fraction shares one); it runs on CUDA when torch sees one
    resources: dict = field(default_factory=dict)  # custom Ray resources, e.g. {"teacher_gpu": 1}


@dataclass
class SwitchConfig:
    # both = the SWITCH rule picks each token's writer | student | teacher = that model writes every token and the
    # other scores it (its log-probs and the divergence are still recorded, e.g. to calibrate tau0)
    writer: str = "both"
    divergence: str = "js"  # js | kl_ts | kl_st | tv | skd
    # exponential | constant | linear: tau_t from tau0 and lam (SWITCH) | adaptive: AdaSwitch (arXiv 2510.07842), the student
    # writes until a divergence exceeds adaptive_k x its mean over the last adaptive_window positions, then the teacher writes the rest
    schedule: str = "exponential"
    tau0: float = 0.3  # the threshold at answer position 0: the teacher writes a token whose divergence exceeds tau_t
    lam: float = 0.01  # decay per answer position
    skd_top_k: int = 25  # only for divergence=skd: tau is fixed at K - 0.5 on the teacher rank
    adaptive_k: float = 2.0  # schedule=adaptive: the switch comes where the divergence exceeds this many times its moving average
    adaptive_window: int = 8  # schedule=adaptive: positions in that moving average
    # block | per_token (the reference: gamma = 1, student drafts) | auto: per_token for a lone pipeline group
    # of writer=both, whose one-token rounds run both models at once (actors/switch_round.py), else block
    mode: str = "auto"
    gamma: int = 4  # first block length
    gamma_max: int = 12  # the longest block gamma may grow to
    adaptive_gamma: bool = True  # gamma follows the recent run lengths of the drafting model
    sample: bool = True  # False = greedy
    temperature: float = 1.0  # sampling temperature of both models
    top_p: float = 1.0  # nucleus sampling: keep the smallest set of tokens with this much probability
    max_new_tokens: int = 128  # answer length cap of studyhall generate (distill's is train.answer_tokens)
    batch_size: int = 16  # sequences in flight, split across the pipeline groups
    # groups take turns, so one model drafts for one while the other scores another; 0 = auto: 2, but 1 for
    # training batches when a trainer stepping beside them would compete for the cores (studyhall/threads.py)
    pipeline_groups: int = 0
    wire_dtype: str = "float32"  # distributions between actors: float32 (exact) or float16
    seed: int = field(default=0, metadata=RUN_FILLED)  # this engine run's sampling stream (from the run's seed)
    teacher_topk: int = field(default=20, metadata=RUN_FILLED)  # teacher log-probs recorded per position (train.teacher_topk)

    def groups(self) -> int:
        """The pipeline groups to run; auto (0) is resolved once per run by engine_settings."""
        if not self.pipeline_groups:
            raise _unresolved("switch.pipeline_groups=0 (auto)")
        return self.pipeline_groups

    def one_token_rounds(self) -> bool:
        """Every round drafts one token (the student's), scored by the teacher. AdaSwitch's threshold
        depends on the divergences just before each position, so it runs one token at a time."""
        if self.mode == "auto":
            raise _unresolved("switch.mode=auto")
        return self.mode == "per_token" or self.schedule == ADAPTIVE

    def tau_for_skd(self) -> float:
        return self.skd_top_k - 0.5


def _unresolved(setting: str) -> ValueError:
    """A programming error, not a user's: engine settings built without engine_settings, which resolves every auto."""
    return ValueError(f"{setting} reached the engine unresolved: build its settings with studyhall.engine_settings.engine_settings")


@dataclass
class ServedModel(ModelConfig):
    """A model behind one Ray Serve deployment: the ModelConfig fields plus how Serve scales it."""
    num_replicas: int = 1  # Serve replicas of this deployment (when autoscaling_config is not set)
    autoscaling_config: dict = field(default_factory=dict)  # Serve's autoscaling_config; when set it replaces num_replicas
    max_batch_size: int = 32  # rows in a replica's running decode batch; more requests wait for a row to free
    prefill_budget: int = 512  # prompt tokens a replica prefills per step (the first newcomer always gets in)
    max_queued_requests: int = -1  # Serve's queue in front of the replicas; past it a request gets a 503 (-1: no limit)
    prefix_cache_tokens: int = 8192  # KV of recent prompt prefixes a replica keeps for reuse, LRU, in tokens (0: no prefix cache)


@dataclass
class ServeConfig:
    """GKT serving (serve/): the teacher writes the first k tokens of each answer, the student the rest."""
    guide: ServedModel = field(default_factory=lambda: ServedModel(path="embedded:teacher"))  # TeacherGuide
    complete: ServedModel = field(default_factory=lambda: ServedModel(path="embedded:student"))  # StudentComplete
    guidance_tokens: int = 8  # default k per request; 0 = student alone, >= max_tokens = teacher alone
    default_max_tokens: int = 64  # max_tokens of a request that does not set it
    max_tokens_limit: int = 512  # a request asking for more gets a 400
    model_name: str = "studyhall-gkt"  # the one name /v1/models lists and requests must use
    ingress_replicas: int = 1  # replicas of the FastAPI ingress deployment
    ingress_num_cpus: float = 0.0  # the ingress only parses, checks and forwards
    host: str = "127.0.0.1"  # where Serve's HTTP proxy listens; 0.0.0.0 opens it to the network (set an API key then)
    port: int = 8000  # the HTTP port Serve listens on
    api_key_env: str = "STUDYHALL_API_KEY"  # when this variable is set, requests need "Authorization: Bearer <it>"
    sampling_seed: int = 0  # the random stream of a sampled request that gives no seed of its own
    retry_after_s: int = 10  # the Retry-After of a 503 (a replica lost mid-request): about a replica's start time
    prefill_ahead: bool = True  # the student prefills the prompt into its prefix cache while the teacher writes the guidance


METHODS = ("sft", "kd", "seqkd", "gkd", "skd", "distillm", "switch", "adaswitch")
LOSSES = ("fkl", "rkl", "jsd", "skew_fkl", "skew_rkl", "tv", "ce")


@dataclass
class TrainConfig:
    """Distillation (train/): which method makes the data, which loss, and the DeepSpeed run."""
    method: str = "switch"  # sft | kd | seqkd | gkd | skd | distillm | switch | adaswitch
    loss: str = "auto"  # auto = the method's own (ce for sft/seqkd, jsd for gkd, skew_fkl for distillm, switch and adaswitch, fkl else) | fkl | rkl | jsd | skew_fkl | skew_rkl | tv | ce
    beta: float = 0.5  # generalized JSD: 0 = forward KL, 1 = reverse KL
    alpha: float = 0.1  # skew KL mixing weight
    loss_temperature: float = 1.0  # both distributions are softened by this before the loss
    steps: int = 40  # optimizer steps
    global_batch: int = 8  # sequences per optimizer step, over all workers
    micro_batch: int = 4  # sequences per worker per forward; accumulation makes up the rest
    lr: float = 1e-4  # AdamW's peak learning rate
    lr_schedule: str = "cosine"  # cosine | linear | constant (after warmup)
    warmup_steps: int = 0  # steps of linear warmup to lr
    weight_decay: float = 0.0  # AdamW's decoupled weight decay
    grad_clip: float = 1.0  # clip the gradient's global norm to this; 0 = off
    zero_stage: int = 0  # DeepSpeed ZeRO stage 0-3
    # auto = bf16 where the device runs it fast (a GPU with bf16; a CPU with AVX512-BF16, AMX or Arm BF16), else fp32 | fp32 | bf16;
    # masters, optimizer and the loss math stay fp32 (train/precision.py); the report says which was chosen and why
    precision: str = "auto"
    # the trainer's attention kernel: auto = eager on the CPU, whose fused (sdpa) backward is slow at these lengths, sdpa on a
    # GPU | eager | sdpa (train/attention.py); the generation actors keep the model's own
    attention: str = "auto"
    # the training workers' glibc malloc keeps freed memory for the next micro-batch instead of unmapping it and
    # page-faulting it back in (train/allocator.py: GLIBC_TUNABLES in the workers' environment); false = glibc's defaults
    keep_freed_memory: bool = True
    answer_logits: bool = True  # the student's LM head runs on the answer positions only (train/answer_logits.py); false = every position
    # a step's records go into micro-batches in order of length, so rows of like length pad each other little (HF's
    # group_by_length); off: on the demo it cuts the padding but not the step, which generation bounds (docs/benchmarks.md)
    group_by_length: bool = False
    num_workers: int = 1  # Ray Train workers (data-parallel ranks)
    cpus_per_worker: float = 1.0  # Ray CPUs per training worker
    gpus_per_worker: float = 0.0  # Ray GPUs per training worker: with one, training runs on CUDA (nccl)
    torch_threads: int = 0  # CPU threads per worker; 0 = auto (studyhall/threads.py): its CPU share, plus the idle generation side's with max_staleness=0
    push_every: int = 1  # steps between pushes of the trained weights to the generation actor
    max_staleness: int = 1  # batches made ahead of the trainer: step s+1's is generated while step s trains, with step s-1's weights; 0 = strict alternation
    checkpoint_every: int = 10  # steps between DeepSpeed checkpoints (ray.train.report): what a worker failure can redo
    max_failures: int = 2  # Ray Train restarts of the worker group, each from the last checkpoint; 0 = none
    gkd_lambda: float = 0.5  # gkd: probability that an example is a fresh student sample
    # switch, skd, adaswitch: probability that an example trains on the teacher-scored ground truth instead of a rollout
    switch_data_share: float = 0.0
    distillm_p_init: float = 0.0  # distillm: starting probability of student samples
    distillm_p_step: float = 0.1  # ... raised by this when the validation loss rises
    distillm_p_max: float = 0.8  # ... up to this
    replay_size: int = 64  # distillm: student samples kept for replay
    val_every: int = 5  # distillm: steps between validation losses
    data: str = ""  # JSONL/JSON/Parquet (Dolly, Alpaca, messages, prompt); empty = embedded prompts, teacher references
    val_size: int = 32  # held-out prompts
    answer_tokens: int = 128  # new tokens per training and evaluation answer (studyhall generate's cap is switch.max_new_tokens)
    teacher_topk: int = 20  # teacher log-probs recorded per answer position beside the chosen token's: what the token-level losses read
    eval_samples: int = 2  # student samples per held-out prompt
    # A first stage before train.method, as the SWITCH, GKD and DistiLLM papers start from a student fine-tuned on the
    # task data: "" = none | sft | kd | any method. It trains warm_steps steps into OUT/warm_start (its own report and
    # student), and train.method then starts from that student; a finished warm stage of the same config is reused.
    warm_start: str = ""
    warm_steps: int = 0  # optimizer steps of the warm_start stage
    warm_lr: float = 0.0  # peak learning rate of the warm_start stage; 0 = train.lr
    # Sequence-level unlikelihood (Welleck et al., arXiv 1908.04319) against the student's greedy loops: each step the
    # student also answers the step's prompts greedily, and this weight x the sum of -log(1 - p) over the tokens of those
    # answers in a token n-gram already in them, per answer token, is added to the loss (studyhall/unlikelihood.py); 0 = off
    unlikelihood: float = 0.0
    warm_unlikelihood: float = 0.0  # the same weight in the warm_start stage (train.unlikelihood is the method's); 0 = off
    unlikelihood_ngram: int = 4  # n of those repeated token n-grams
    # The teacher also scores those greedy answers, and the method's distillation loss reads them too: where the term
    # pushes a looping token down, the teacher says where its probability goes (one teacher pass per step; token-level
    # losses only, as sft's cross-entropy would train on the loops; the method's stage, not the warm_start stage)
    unlikelihood_teacher: bool = False
    # A teacher and student with different tokenizers (kd, gkd, distillm; train/cross_vocab.py): the loss is GOLD's
    # hybrid, the method's divergence over the tokens whose text both vocabularies share plus this weight x ULD's
    # sorted-probability distance (Boizard et al., arXiv 2402.12030) over the teacher's other top-k tokens
    uld_weight: float = 1.0
    cross_loss: str = "hybrid"  # hybrid (GOLD's, above) | uld (ULD's own: cross-entropy + uld_weight x the distance over the whole top-k, at the aligned positions)


@dataclass
class Config:
    preset: str = "smol"  # the preset the run was built from (set by --preset, not by an override)
    seed: int = 0  # the run's seed: sampling streams, the order of the data, the held-out split, the evaluation's samples
    teacher: ModelConfig = field(default_factory=ModelConfig)
    student: ModelConfig = field(default_factory=lambda: ModelConfig(path="embedded:student"))
    switch: SwitchConfig = field(default_factory=SwitchConfig)
    placement_timeout_s: float = 60.0  # how long actors may wait for resources before we give up
    # How the teacher's and the student's bundles spread over nodes: PACK (default: one laptop works),
    # SPREAD, STRICT_PACK (one node), STRICT_SPREAD (separate nodes, e.g. a GPU node each).
    placement_strategy: str = "PACK"
    # Fault tolerance of the SWITCH engine: Ray restarts a lost teacher or student actor up to this
    # many times each; the run waits for it (placement and model reload) at most restart_timeout_s.
    max_restarts: int = 3
    restart_timeout_s: float = 300.0  # how long a restarted actor may take to be placed and load its model
    serve: ServeConfig = field(default_factory=ServeConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_config(preset: str, overrides: list[str] = ()) -> Config:
    """Preset YAML, then overrides, then validation."""
    path = PRESET_DIR / f"{preset}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(preset_names())}")
    raw = yaml.safe_load(path.read_text()) or {}
    cfg = _build(Config, raw, where=str(path), prefix="")
    cfg.preset = preset
    for item in overrides:
        apply_override(cfg, item)
    validate(cfg)
    return cfg


def _build(cls, raw: dict, where: str, prefix: str):
    known = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("run_filled")}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of fields for {cls.__name__}, got {raw!r}")
    defaults, kwargs = cls(), {}
    for key, value in raw.items():
        if prefix + key in MOVED:
            raise ConfigError(f"{where}: {prefix + key} moved to {MOVED[prefix + key]}")
        if key not in known:
            raise ConfigError(f"{where}: unknown field {key!r} for {cls.__name__}; known: {', '.join(known)}")
        sub = known[key].type
        if dataclasses.is_dataclass(sub):
            kwargs[key] = _build(sub, value, f"{where}: {key}", f"{prefix}{key}.")
        else:
            kwargs[key] = _coerce(getattr(defaults, key), value, str(value), f"{where}: {key}={value!r}")
    return cls(**kwargs)


def _leaf_paths(obj, prefix=()) -> dict[str, tuple]:
    out = {}
    for f in dataclasses.fields(obj):
        if f.metadata.get("run_filled"):
            continue
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
    if key in MOVED:
        raise ConfigError(f"override {item!r}: {key} moved to {MOVED[key]}; set {MOVED[key]}={text}")
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
        (s.writer in WRITERS, f"switch.writer={s.writer!r}: choose one of {', '.join(WRITERS)}"),
        (s.divergence in DIVERGENCES, f"switch.divergence={s.divergence!r}: choose one of {', '.join(DIVERGENCES)}"),
        (s.schedule in (*SCHEDULES, ADAPTIVE), f"switch.schedule={s.schedule!r}: choose one of {', '.join((*SCHEDULES, ADAPTIVE))}"),
        (s.schedule != ADAPTIVE or s.divergence != "skd", "switch.schedule=adaptive compares divergences: choose a divergence other than skd"),
        (s.adaptive_k > 0 and math.isfinite(s.adaptive_k), f"switch.adaptive_k={s.adaptive_k}: must be > 0"),
        (s.adaptive_window >= 1, f"switch.adaptive_window={s.adaptive_window}: must be >= 1"),
        (s.mode in ("auto", "block", "per_token"), f"switch.mode={s.mode!r}: choose auto, block or per_token"),
        (math.isfinite(s.tau0) and s.tau0 >= 0, f"switch.tau0={s.tau0}: must be >= 0"),
        (math.isfinite(s.lam) and s.lam >= 0, f"switch.lam={s.lam}: must be >= 0"),
        (s.gamma >= 1, f"switch.gamma={s.gamma}: must be >= 1"),
        (s.gamma_max >= s.gamma, f"switch.gamma_max={s.gamma_max}: must be >= gamma ({s.gamma})"),
        (not s.sample or s.temperature > 0, f"switch.temperature={s.temperature}: must be > 0 when sampling (or set sample=false for greedy)"),
        (0 < s.top_p <= 1, f"switch.top_p={s.top_p}: must be in (0, 1]"),
        (s.max_new_tokens >= 1, f"switch.max_new_tokens={s.max_new_tokens}: must be >= 1"),
        (s.batch_size >= 1, f"switch.batch_size={s.batch_size}: must be >= 1"),
        (s.pipeline_groups >= 0, f"switch.pipeline_groups={s.pipeline_groups}: must be >= 1, or 0 for auto"),
        (s.skd_top_k >= 1, f"switch.skd_top_k={s.skd_top_k}: must be >= 1"),
        (s.wire_dtype in ("float32", "float16"), f"switch.wire_dtype={s.wire_dtype!r}: choose float32 or float16"),
    ]
    checks.append((cfg.placement_timeout_s > 0, f"placement_timeout_s={cfg.placement_timeout_s}: must be > 0"))
    checks.append((cfg.max_restarts >= 0, f"max_restarts={cfg.max_restarts}: must be >= 0"))
    checks.append((cfg.restart_timeout_s > 0, f"restart_timeout_s={cfg.restart_timeout_s}: must be > 0"))
    checks.append((cfg.placement_strategy in PLACEMENT_STRATEGIES,
                   f"placement_strategy={cfg.placement_strategy!r}: choose one of {', '.join(PLACEMENT_STRATEGIES)}"))
    for role in ("teacher", "student"):
        m = getattr(cfg, role)
        checks += [
            (m.dtype in DTYPES, f"{role}.dtype={m.dtype!r}: choose one of {', '.join(DTYPES)}"),
            (m.num_cpus >= 0 and m.num_gpus >= 0, f"{role}: num_cpus and num_gpus must be >= 0"),
            (isinstance(m.resources, dict), f"{role}.resources must be a mapping"),
        ]
    checks += _serve_checks(cfg.serve)
    checks += _train_checks(cfg.train)
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def _train_checks(t: TrainConfig) -> list:
    per_step = t.micro_batch * t.num_workers
    return [
        (t.method in METHODS, f"train.method={t.method!r}: choose one of {', '.join(METHODS)}"),
        (t.loss == "auto" or t.loss in LOSSES, f"train.loss={t.loss!r}: choose auto or one of {', '.join(LOSSES)}"),
        (0 <= t.beta <= 1, f"train.beta={t.beta}: must be in [0, 1]"),
        (0 <= t.alpha <= 1, f"train.alpha={t.alpha}: must be in [0, 1]"),
        (t.loss_temperature > 0, f"train.loss_temperature={t.loss_temperature}: must be > 0"),
        (t.steps >= 1, f"train.steps={t.steps}: must be >= 1"),
        (t.micro_batch >= 1 and t.num_workers >= 1, "train.micro_batch and train.num_workers must be >= 1"),
        (t.global_batch % per_step == 0,
         f"train.global_batch={t.global_batch}: must be a multiple of micro_batch x num_workers = {per_step}"),
        (t.lr > 0 and math.isfinite(t.lr), f"train.lr={t.lr}: must be > 0"),
        (t.lr_schedule in ("cosine", "linear", "constant"), f"train.lr_schedule={t.lr_schedule!r}: choose cosine, linear or constant"),
        (0 <= t.warmup_steps < t.steps, f"train.warmup_steps={t.warmup_steps}: must be in [0, steps)"),
        (t.grad_clip >= 0, f"train.grad_clip={t.grad_clip}: must be >= 0 (0 = off)"),
        (t.zero_stage in (0, 1, 2, 3), f"train.zero_stage={t.zero_stage}: choose 0, 1, 2 or 3"),
        (t.precision in ("auto", "fp32", "bf16"), f"train.precision={t.precision!r}: choose auto, fp32 or bf16"),
        (t.attention in ("auto", "eager", "sdpa"), f"train.attention={t.attention!r}: choose auto, eager or sdpa"),
        (t.cpus_per_worker >= 0 and t.gpus_per_worker >= 0, "train.cpus_per_worker and gpus_per_worker must be >= 0"),
        (t.max_failures >= 0, f"train.max_failures={t.max_failures}: must be >= 0"),
        (t.answer_tokens >= 1, f"train.answer_tokens={t.answer_tokens}: must be >= 1"),
        (t.teacher_topk >= 0, f"train.teacher_topk={t.teacher_topk}: must be >= 0"),
        (t.torch_threads >= 0, f"train.torch_threads={t.torch_threads}: must be >= 0"),
        (t.push_every >= 1 and t.checkpoint_every >= 1 and t.val_every >= 1, "train.push_every, checkpoint_every and val_every must be >= 1"),
        (t.max_staleness >= 0, f"train.max_staleness={t.max_staleness}: must be >= 0 (0 = generate each batch after the previous step's push)"),
        (0 <= t.gkd_lambda <= 1, f"train.gkd_lambda={t.gkd_lambda}: must be in [0, 1]"),
        (0 <= t.switch_data_share < 1, f"train.switch_data_share={t.switch_data_share}: must be in [0, 1); 1 is method=kd"),
        (0 <= t.distillm_p_init <= t.distillm_p_max <= 1, "train.distillm_p_init <= distillm_p_max must lie in [0, 1]"),
        (t.replay_size >= 1 and t.val_size >= 1 and t.eval_samples >= 1, "train.replay_size, val_size and eval_samples must be >= 1"),
        (t.warm_start in ("", *METHODS), f"train.warm_start={t.warm_start!r}: choose empty (none) or one of {', '.join(METHODS)}"),
        (not t.warm_start or t.warm_steps >= 1, f"train.warm_steps={t.warm_steps}: must be >= 1 with warm_start={t.warm_start}"),
        (t.warm_lr >= 0 and math.isfinite(t.warm_lr), f"train.warm_lr={t.warm_lr}: must be >= 0 (0 = train.lr)"),
        (t.unlikelihood >= 0 and math.isfinite(t.unlikelihood), f"train.unlikelihood={t.unlikelihood}: must be >= 0 (0 = off)"),
        (t.warm_unlikelihood >= 0 and math.isfinite(t.warm_unlikelihood),
         f"train.warm_unlikelihood={t.warm_unlikelihood}: must be >= 0 (0 = off)"),
        (t.unlikelihood_ngram >= 1, f"train.unlikelihood_ngram={t.unlikelihood_ngram}: must be >= 1"),
        (t.uld_weight >= 0, f"train.uld_weight={t.uld_weight}: must be >= 0"),
        (t.cross_loss in ("hybrid", "uld"), f"train.cross_loss={t.cross_loss!r}: choose hybrid or uld"),
    ]


def _serve_checks(v: ServeConfig) -> list:
    checks = [
        (v.guidance_tokens >= 0, f"serve.guidance_tokens={v.guidance_tokens}: must be >= 0"),
        (1 <= v.default_max_tokens <= v.max_tokens_limit,
         f"serve.default_max_tokens={v.default_max_tokens}: must be in [1, max_tokens_limit={v.max_tokens_limit}]"),
        (v.ingress_replicas >= 1, f"serve.ingress_replicas={v.ingress_replicas}: must be >= 1"),
        (v.ingress_num_cpus >= 0, f"serve.ingress_num_cpus={v.ingress_num_cpus}: must be >= 0"),
        (0 <= v.port <= 65535, f"serve.port={v.port}: must be in [0, 65535]"),
        (bool(v.model_name.strip()), "serve.model_name: must not be empty"),
        (v.retry_after_s >= 1, f"serve.retry_after_s={v.retry_after_s}: must be >= 1"),
    ]
    for role in ("guide", "complete"):
        m = getattr(v, role)
        checks += [
            (m.dtype in DTYPES, f"serve.{role}.dtype={m.dtype!r}: choose one of {', '.join(DTYPES)}"),
            (m.num_cpus >= 0 and m.num_gpus >= 0, f"serve.{role}: num_cpus and num_gpus must be >= 0"),
            (m.num_replicas >= 1, f"serve.{role}.num_replicas={m.num_replicas}: must be >= 1"),
            (m.max_batch_size >= 1, f"serve.{role}.max_batch_size={m.max_batch_size}: must be >= 1"),
            (m.prefill_budget >= 1, f"serve.{role}.prefill_budget={m.prefill_budget}: must be >= 1"),
            (m.prefix_cache_tokens >= 0, f"serve.{role}.prefix_cache_tokens={m.prefix_cache_tokens}: must be >= 0 (0: no prefix cache)"),
            (m.max_queued_requests == -1 or m.max_queued_requests >= 1,
             f"serve.{role}.max_queued_requests={m.max_queued_requests}: must be -1 (no limit) or >= 1"),
            (_autoscaling_error(m.autoscaling_config) is None,
             f"serve.{role}.autoscaling_config: {_autoscaling_error(m.autoscaling_config)}"),
        ]
    return checks


def _autoscaling_error(raw: dict) -> str | None:
    """Serve's own validation of an autoscaling_config, as one line (None when valid or unset)."""
    if not raw:
        return None
    # Deferred: the floor imports no Ray; Serve's own autoscaling check loads only when one is configured.
    from pydantic import ValidationError
    from ray.serve.config import AutoscalingConfig

    unknown = sorted(set(raw) - set(AutoscalingConfig.model_fields))
    if unknown:
        return f"unknown key {unknown[0]!r}; known: {', '.join(AutoscalingConfig.model_fields)}"
    try:
        AutoscalingConfig(**raw)
    except (ValidationError, TypeError, ValueError) as err:
        errors = getattr(err, "errors", lambda: [])()
        if errors:
            return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}" for e in errors)
        return str(err).strip().splitlines()[0]
    return None
