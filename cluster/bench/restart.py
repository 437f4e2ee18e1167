"""`studyhall bench restart`: what a lost teacher (or student) actor costs a SWITCH run.

The same prompts are generated twice on one pair of actors, greedy so both runs make the same
tokens: once untouched, once with the actor SIGKILLed (Ray restarts it) after `--kill-after` sequences
have finished. The difference in seconds is the restart's price: the new process, the model reload
and the re-prefill of every live sequence; `restart_seconds` is the part the controller spent
waiting for the actor and reloading it.
"""
import json
import threading
import time
from pathlib import Path

import ray

from actors.pair import start_pair, stop_pair
from cluster.generate import generate
from studyhall.config import ConfigError, load_config


def _kill_when(actor, out: Path, records: int, done: threading.Event, killed: list) -> None:
    while not done.is_set():
        if out.exists() and len(out.read_text().splitlines()) >= records:
            ray.kill(actor, no_restart=False)
            killed.append(time.perf_counter())
            return
        time.sleep(0.02)


def run_bench(preset: str, out: str, limit: int, kill_after: int | None, role: str, overrides: list[str]) -> dict:
    if role not in ("teacher", "student"):
        raise ConfigError(f"--role {role!r}: choose teacher or student")
    kill_after = kill_after if kill_after is not None else max(1, limit // 4)
    if not 1 <= kill_after < limit:
        raise ConfigError(f"--kill-after {kill_after}: must be in [1, --limit={limit})")
    cfg = load_config(preset, ["sample=false", *overrides])
    if not ray.is_initialized():
        ray.init(log_to_driver=False)
    out_path = Path(out).resolve()
    records_dir = out_path.parent / (out_path.stem + "_records")
    actors = start_pair(cfg)
    pair = dict(zip(("teacher", "student"), actors))
    try:
        generate(cfg, None, records_dir / "warm_up.jsonl", limit=min(limit, 4), progress=False, actors=actors)  # first-call costs
        plain = generate(cfg, None, records_dir / "plain.jsonl", limit=limit, progress=False, actors=actors)
        killed_out, done, killed = records_dir / "killed.jsonl", threading.Event(), []
        killer = threading.Thread(target=_kill_when, args=(pair[role], killed_out, kill_after, done, killed), daemon=True)
        killer.start()
        with_kill = generate(cfg, None, killed_out, limit=limit, progress=False, actors=actors)
        done.set()
        killer.join()
    finally:
        stop_pair(*actors)
    same = _records(records_dir / "plain.jsonl") == _records(killed_out)
    result = {
        "preset": preset, "role": role, "prompts": limit, "killed_after_records": kill_after, "killed": bool(killed),
        "max_new_tokens": cfg.switch.max_new_tokens, "batch_size": cfg.switch.batch_size,
        "plain": {k: plain[k] for k in ("seconds", "tokens", "tokens_per_s")},
        "with_kill": {k: with_kill[k] for k in ("seconds", "tokens", "tokens_per_s", "restarts", "restart_seconds")},
        "restart_cost_seconds": round(with_kill["seconds"] - plain["seconds"], 2),
        "slowdown": round(with_kill["seconds"] / max(plain["seconds"], 1e-9), 3),
        "greedy_identical": same,
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2))
    return result


def _records(path: Path) -> dict:
    """Each prompt's tokens and who wrote them: what a kill must not change in a greedy run."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return {r["prompt_id"]: (r["token_ids"], r["from_teacher"]) for r in rows}
