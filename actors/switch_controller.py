"""The SWITCH controller: keeps a batch of sequences in flight on a teacher and a student actor.

Sequences move in pipeline groups; each group runs one SWITCH round at a time (switch_round.py:
plan, draft, score and decide, commit, record), and the groups take turns on the two actors.
Finished sequences leave their group and queued prompts take their place.

The controller's sequences are the truth; the actors' KV batches are a cache of them. When an actor
dies mid-round (and a `Revival` is given), the rounds in flight are dropped unrecorded, and both
actors' batches are rebuilt from each live sequence's committed tokens (actors/revival.py).
"""
import math
import time
from collections import deque
from dataclasses import dataclass, field

from ray.exceptions import RayActorError

from actors.in_process import first_ready, resolve
from actors.revival import Revival
from actors.switch_round import Group, launch_round, next_gamma, record_round
from studyhall.config import SwitchConfig


@dataclass
class Sequence:
    index: int
    prompt_id: str
    prompt: str
    prompt_token_ids: list[int]
    token_ids: list[int] = field(default_factory=list)
    from_teacher: list[bool] = field(default_factory=list)
    divergence: list[float] = field(default_factory=list)
    tau: list[float] = field(default_factory=list)
    teacher_logprob: list[float] = field(default_factory=list)
    teacher_topk_ids: list[list[int]] = field(default_factory=list)
    teacher_topk_logprobs: list[list[float]] = field(default_factory=list)
    teacher_calls: int = 0
    finish_reason: str = ""

    def to_record(self, text: str) -> dict:
        record = {k: v for k, v in self.__dict__.items() if k != "index"}
        record["text"] = text
        return record


@dataclass
class RunStats:
    sequences: int = 0
    tokens: int = 0
    teacher_tokens: int = 0
    teacher_calls: int = 0  # summed over sequences: the teacher worked on a block of theirs
    rounds: int = 0
    seconds: float = 0.0
    position_tokens: dict = field(default_factory=dict)  # bucket -> tokens
    position_teacher: dict = field(default_factory=dict)  # bucket -> teacher tokens
    row_forwards: int = 0  # per live row and round: g drafting forwards + 1 scoring forward
    restarts: dict = field(default_factory=dict)  # role -> actor restarts survived in this run
    restart_seconds: float = 0.0
    rows_by_group: dict = field(default_factory=dict)  # group -> sequences it took in

    def add(self, seq: Sequence) -> None:
        self.sequences += 1
        self.tokens += len(seq.token_ids)
        self.teacher_tokens += sum(seq.from_teacher)
        self.teacher_calls += seq.teacher_calls
        for t, teacher in enumerate(seq.from_teacher):
            bucket = position_bucket(t)
            self.position_tokens[bucket] = self.position_tokens.get(bucket, 0) + 1
            self.position_teacher[bucket] = self.position_teacher.get(bucket, 0) + int(teacher)

    def summary(self) -> dict:
        by_bucket = {b: round(self.position_teacher[b] / n, 4) for b, n in sorted(self.position_tokens.items(), key=lambda kv: int(kv[0].split("-")[0]))}
        return {
            "sequences": self.sequences,
            "tokens": self.tokens,
            "teacher_share": round(self.teacher_tokens / max(self.tokens, 1), 4),
            "teacher_share_by_position": by_bucket,
            "tokens_per_s": round(self.tokens / max(self.seconds, 1e-9), 2),
            "teacher_calls_per_token": round(self.teacher_calls / max(self.tokens, 1), 4),
            # per-token SWITCH costs exactly 2 (one student, one teacher forward per token); a block
            # pays for drafted tokens cut off at a switch, so it gains only where runs are long
            "forwards_per_token": round(self.row_forwards / max(self.tokens, 1), 4),
            "rounds": self.rounds,
            "seconds": round(self.seconds, 2),
            "rows_by_group": dict(self.rows_by_group),
            "restarts": dict(self.restarts),
            "restart_seconds": round(self.restart_seconds, 2),
        }


def position_bucket(t: int) -> str:
    """Powers of two: 0-7, 8-15, 16-31, 32-63, ..."""
    lo = 0 if t < 8 else 1 << int(math.log2(t))
    hi = 7 if t < 8 else 2 * lo - 1
    return f"{lo}-{hi}"


class SwitchController:
    def __init__(self, teacher, student, switch: SwitchConfig, eos_ids: set[int], revival: Revival | None = None):
        """Without a `revival`, an actor's death ends the run (the error propagates)."""
        self.actors = {"teacher": teacher, "student": student}
        self.revival = revival
        self.cfg = switch
        self.eos_ids = set(eos_ids)
        self.gamma = {"teacher": switch.gamma, "student": switch.gamma}

    def run(self, items, on_finish=None) -> RunStats:
        """Generate for `items` (objects with .index, .prompt_id, .prompt, .token_ids).

        `on_finish(sequence)` is called as each sequence ends, so callers can write it at once.
        """
        stats, started = RunStats(), time.perf_counter()
        restarts_before, restart_seconds_before = self._restarts()
        queue = deque(items)
        # Split what will be in flight evenly: filling the first group to batch_size / groups would
        # leave the others empty whenever fewer prompts than batch_size come (a training step's
        # batch), and then the two models never work at the same time.
        self.group_size = math.ceil(min(self.cfg.batch_size, max(len(queue), 1)) / self.cfg.groups())
        groups = [Group(i) for i in range(self.cfg.groups())]
        for group in groups:
            self._admit(group, queue, stats)
            launch_round(self.actors, group, self.cfg, self.gamma)
        while any(g.in_flight for g in groups):
            flying = {g.in_flight: g for g in groups if g.in_flight}
            ready = first_ready(list(flying))
            group = flying[ready]
            try:
                result = resolve(ready)
            except RayActorError:
                if self.revival is None:
                    raise
                self._rebuild(groups)
                continue
            stats.rounds += 1
            stats.row_forwards += len(group.live) * (group.block + 1)
            self.gamma[group.drafter] = next_gamma(self.cfg, self.gamma[group.drafter], result)
            finished = record_round(group.live, result, self.eos_ids, self.cfg.max_new_tokens)
            for seq in finished:
                stats.add(seq)
                if on_finish:
                    on_finish(seq)
            if finished:
                keep = [i for i, seq in enumerate(group.live) if not seq.finish_reason]
                group.live[:] = [group.live[i] for i in keep]
                for role, actor in self.actors.items():
                    actor.select.remote(group.id, keep, commit=group.commit.take(role))
                self._admit(group, queue, stats)
            launch_round(self.actors, group, self.cfg, self.gamma)
        stats.seconds = time.perf_counter() - started
        restarts_after, restart_seconds_after = self._restarts()
        stats.restarts = {role: n - restarts_before[role] for role, n in restarts_after.items()}
        stats.restart_seconds = restart_seconds_after - restart_seconds_before
        return stats

    def _restarts(self) -> tuple[dict, float]:
        if self.revival is None:
            return {role: 0 for role in self.actors}, 0.0
        return dict(self.revival.restarts), self.revival.seconds

    def _rebuild(self, groups: list) -> None:
        """An actor died: once both answer again, drop every round in flight (none of its tokens was
        appended), rebuild each group's batch on both actors from the sequences' committed tokens
        (prompt + answer so far; the last one becomes pending, as after a commit), and launch again."""
        self.revival.revive(self.cfg)
        for group in groups:
            group.in_flight = None
            group.commit.drop()
            if group.live:
                committed = [seq.prompt_token_ids + seq.token_ids for seq in group.live]
                for actor in self.actors.values():
                    actor.extend.remote(group.id, committed)
            launch_round(self.actors, group, self.cfg, self.gamma)

    def _admit(self, group: Group, queue: deque, stats: RunStats) -> None:
        """Fill the group from the queue; both actors prefill the new prompts."""
        new = []
        while queue and len(group.live) + len(new) < self.group_size:
            item = queue.popleft()
            new.append(Sequence(item.index, item.prompt_id, item.prompt, list(item.token_ids)))
        if new:
            for role, actor in self.actors.items():
                actor.extend.remote(group.id, [s.prompt_token_ids for s in new], commit=group.commit.take(role))
            group.live.extend(new)
            stats.rows_by_group[group.id] = stats.rows_by_group.get(group.id, 0) + len(new)
