"""Load any Hugging Face causal LM (hub id or local folder), the embedded default pair or the tiny pair."""
from pathlib import Path

import torch
from huggingface_hub import try_to_load_from_cache
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from actors import embedded
from actors.tiny import build_tiny, tiny_config
from studyhall.config import ConfigError, ModelConfig
from studyhall.hardware import cpu_bf16_flags

EMBEDDED = {"embedded:teacher": embedded.teacher_dir, "embedded:student": embedded.student_dir}
TINY = ("tiny:teacher", "tiny:student", "tiny:guide-teacher")  # guide-teacher: GKT serving's costlier teacher
DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_device(spec: ModelConfig) -> torch.device:
    """A GPU when the actor was given one and torch sees it, else the CPU."""
    return torch.device("cuda") if spec.num_gpus > 0 and torch.cuda.is_available() else torch.device("cpu")


def pick_dtype(spec: ModelConfig, device: torch.device) -> torch.dtype:
    """spec.dtype; for auto, bfloat16 where matmuls run it fast (a GPU, or a CPU with AVX512-BF16, AMX or Arm
    BF16: on the SmolLM2 teacher at batch 32, 2.1x fp32's decode steps and 4.2x its prefill on one AMX core,
    at a KL of 0.002 nats/token from the fp32 distributions), else float32."""
    if spec.dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" or cpu_bf16_flags() else torch.float32
    return DTYPES[spec.dtype]


def resolve_path(path: str) -> str:
    """Map a model name to something from_pretrained loads; fail early with the name if it cannot be found.

    Run in the driver before actors start, so a typo costs no cluster time.
    """
    if path in EMBEDDED:
        return str(EMBEDDED[path]())
    if path in TINY:
        return str(embedded.teacher_dir())  # tiny models are built from a seed; this folder gives their tokenizer
    if path.startswith(("embedded:", "tiny:")):
        raise ConfigError(f"model path {path!r}: unknown; use one of {', '.join([*EMBEDDED, *TINY])}")
    local = Path(path).expanduser()
    if local.exists():
        if not (local / "config.json").is_file():
            raise ConfigError(f"model path {path!r}: folder has no config.json")
        return str(local)
    try:
        if isinstance(try_to_load_from_cache(path, "config.json"), str):
            return path
        AutoConfig.from_pretrained(path)  # fetches only config.json: proves the id before any actor starts
    except Exception as err:  # no such repo, no network, or not a repo id at all
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"model path {path!r}: not a local folder, not in the Hugging Face cache, and the hub did not provide it ({reason})") from None
    return path


def load_tokenizer(path: str, trust_remote_code: bool = False):
    source = resolve_path(path)
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(spec: ModelConfig, device: torch.device):
    """The model in eval mode on `device`, with the dtype from config."""
    dtype = pick_dtype(spec, device)
    if spec.path.startswith("tiny:"):
        model = build_tiny(spec.path.split(":", 1)[1], load_tokenizer(spec.path), dtype)
    else:
        model = AutoModelForCausalLM.from_pretrained(
            resolve_path(spec.path), dtype=dtype, trust_remote_code=spec.trust_remote_code
        )
    return model.to(device).eval()


def model_config(spec: ModelConfig):
    """The model's HF config without its weights, for checks made before actors start."""
    if spec.path.startswith("tiny:"):
        return tiny_config(spec.path.split(":", 1)[1], load_tokenizer(spec.path))
    return AutoConfig.from_pretrained(resolve_path(spec.path), trust_remote_code=spec.trust_remote_code)


def context_length(config) -> int:
    return int(getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", 2048))


def eos_ids(tokenizer, model_path: str | None = None) -> set[int]:
    """The tokenizer's EOS plus the model's generation_config ones (chat models often list several)."""
    ids = {tokenizer.eos_token_id}
    if model_path and not model_path.startswith("tiny:"):
        try:
            listed = GenerationConfig.from_pretrained(resolve_path(model_path)).eos_token_id
        except OSError:  # no generation_config.json: the tokenizer's EOS is all there is
            listed = None
        ids |= set(listed if isinstance(listed, list) else [listed])
    return {i for i in ids if i is not None}
