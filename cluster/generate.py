"""`studyhall generate`: SWITCH sequences for a prompt file, written as JSONL while they finish.

As a `ray job submit` entrypoint: python -m cluster generate --preset tiny --out out.jsonl
"""
import json
import sys
from pathlib import Path

import ray
from tqdm import tqdm

from actors.models import eos_ids
from actors.pair import check_pair, start_pair
from actors.revival import ActorLost, Revival
from actors.switch_controller import SwitchController
from studyhall.config import Config
from studyhall.engine_settings import engine_settings
from studyhall.prompts import EMBEDDED_PROMPTS, load_prompts


class GenerationFailed(RuntimeError):
    """A run that stopped mid-way; the sequences finished before it are on disk."""


def prepare(cfg: Config, prompts_path, limit=None):
    """Everything that can fail on user input, before any actor starts."""
    tokenizer, context = check_pair(cfg)
    items = load_prompts(prompts_path or EMBEDDED_PROMPTS, tokenizer, context, cfg.switch.max_new_tokens, limit)
    return tokenizer, items


def generate(cfg: Config, prompts_path, out_path, limit=None, progress=True, actors=None) -> dict:
    tokenizer, items = prepare(cfg, prompts_path, limit)
    if not ray.is_initialized():
        ray.init(log_to_driver=False)
    settings = engine_settings(cfg)
    if actors:
        teacher, student = actors
        ray.get([teacher.configure.remote(settings), student.configure.remote(settings)])
    else:
        teacher, student = start_pair(cfg)
    revival = Revival.for_pair(teacher, student, cfg)  # a lost actor is restarted and the run goes on
    controller = SwitchController(teacher, student, settings, eos_ids(tokenizer, cfg.teacher.path), revival)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with open(out_path, "w", encoding="utf-8") as out, tqdm(total=len(items), desc="switch", unit="seq", disable=not progress, file=sys.stderr) as bar:
        def write(seq):
            nonlocal written
            record = seq.to_record(tokenizer.decode(seq.token_ids, skip_special_tokens=True))
            out.write(json.dumps(record) + "\n")
            out.flush()
            written += 1
            bar.update(1)

        try:
            stats = controller.run(items, on_finish=write)
        except (ActorLost, ray.exceptions.RayError, KeyboardInterrupt) as err:
            why = str(err).strip().splitlines()[0] if str(err).strip() else ""
            raise GenerationFailed(f"generation stopped ({type(err).__name__}: {why}); the {written} finished sequences are "
                                   f"kept in {out_path}; {len(items) - written} prompts were not finished") from None
    return stats.summary()


def format_summary(summary: dict) -> str:
    lines = [
        f"sequences {summary['sequences']}  tokens {summary['tokens']}  "
        f"tokens/s {summary['tokens_per_s']}  teacher calls/token {summary['teacher_calls_per_token']}",
        f"teacher share {summary['teacher_share']:.1%} overall; by position:",
    ]
    lines += [f"  {bucket:>9}: {share:6.1%}" for bucket, share in summary["teacher_share_by_position"].items()]
    if any(summary["restarts"].values()):
        lines.append(f"actor restarts survived: {summary['restarts']}, {summary['restart_seconds']} s spent coming back")
    return "\n".join(lines)

