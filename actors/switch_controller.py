"""The SWITCH controller: keeps a batch of sequences in flight on a teacher and a student actor.

Each round one model drafts a block for every live sequence and the other scores it (see
lm_worker.py). Which model drafts follows who has owned recent positions, and the block length
follows recent run lengths. Finished sequences leave the batch and queued prompts take their place.

The controller's sequences are the truth; the actors' KV batches are a cache of them. When an actor
dies mid-round (and a `Revival` is given), the rounds in flight are dropped unrecorded, and both
actors' batches are rebuilt from each live sequence's committed tokens (actors/revival.py).
"""
import math
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import torch
from ray.exceptions import RayActorError

from actors.in_process import first_ready, resolve
from actors.revival import Revival
from studyhall.config import SwitchConfig
from studyhall.distill_math import ADAPTIVE, adaptive_tau, thresholds

OWNERSHIP_WINDOW = 8  # recent positions per sequence that decide who drafts next


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


class DeferredCommit:
    """The scorer commits a round's tokens at once; the drafter must too, before its next call for the
    group. Instead of a call of its own (which would block its queue until the scorer answers), the
    result ref rides along with the drafter's next call (`commit=`) for this group, whichever it is:
    the actor is free to work on the other group meanwhile (LMWorker._batch applies it first)."""

    def __init__(self):
        self.pending: tuple | None = None  # (role, ObjectRef of the round's result)

    def owe(self, role: str, result_ref) -> None:
        self.pending = (role, result_ref)

    def take(self, role: str):
        """The result ref `role` must apply with its next call for this group, if it owes one."""
        if self.pending and self.pending[0] == role:
            ref, self.pending = self.pending[1], None
            return ref
        return None

    def drop(self) -> None:
        self.pending = None


@dataclass
class Group:
    """Sequences that move through rounds together; groups take turns on the two actors."""
    id: int
    live: list = field(default_factory=list)
    in_flight: object = None  # the ObjectRef of this group's current round result
    drafter: str = ""
    block: int = 0  # g of the round in flight
    commit: DeferredCommit = field(default_factory=DeferredCommit)


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
            self._launch(group)
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
            self._adapt(group.drafter, result)
            finished = self._record(group.live, result)
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
            self._launch(group)
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
            self._launch(group)

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

    def _launch(self, group: Group) -> None:
        """Submit one round for the group: the drafter drafts, the scorer scores and decides."""
        if not group.live:
            group.in_flight = None
            for actor in self.actors.values():
                actor.drop.remote(group.id)
            return
        drafter, g = self._plan(group.live)
        scorer = "student" if drafter == "teacher" else "teacher"
        draft_ref = self.actors[drafter].draft.remote(group.id, g, commit=group.commit.take(drafter))
        taus = self._taus(group.live, g)
        # A lone group's one-token round: the scorer's forward needs only the pending token, so it runs
        # beside the drafter's (see LMWorker.score). With two groups each actor has the other group's
        # round to do meanwhile, and a scorer waiting inside a call could hold up the drafter's queue.
        draft = [draft_ref] if g == 1 and self.cfg.groups() == 1 else draft_ref
        score_ref = self.actors[scorer].score.remote(group.id, draft, taus, commit=group.commit.take(scorer))
        group.drafter, group.block, group.in_flight = drafter, g, score_ref
        group.commit.owe(drafter, score_ref)

    def _plan(self, live: list) -> tuple[str, int]:
        """Who drafts and how long a block: the writer when one model writes alone, else the model
        that owned most recent positions."""
        if self.cfg.one_token_rounds():
            return "student", 1
        if self.cfg.writer != "both":
            drafter = self.cfg.writer
        else:
            recent = [t for seq in live for t in seq.from_teacher[-OWNERSHIP_WINDOW:]]
            drafter = "teacher" if recent and 2 * sum(recent) > len(recent) else "student"
        remaining = max(self.cfg.max_new_tokens - len(seq.token_ids) for seq in live)
        return drafter, max(1, min(self.gamma[drafter], remaining))

    def _adapt(self, drafter: str, result: dict) -> None:
        """Next block length: one more than the mean run of drafted tokens that survived."""
        if self.cfg.one_token_rounds() or not self.cfg.adaptive_gamma:
            return
        survived = float(np.mean(result["accepted"]))
        self.gamma[drafter] = int(np.clip(round(survived) + 1, 1, self.cfg.gamma_max))

    def _taus(self, live: list, g: int) -> np.ndarray:
        """tau at each position of the block; SKD's gate is a fixed rank, K - 0.5, not a schedule."""
        if self.cfg.divergence == "skd":
            return np.full((len(live), g), self.cfg.tau_for_skd(), dtype=np.float32)
        if self.cfg.schedule == ADAPTIVE:  # one-token rounds (SwitchConfig.one_token_rounds): g == 1
            return np.array([[adaptive_tau(seq.divergence, any(seq.from_teacher), self.cfg.adaptive_k, self.cfg.adaptive_window)]
                             for seq in live], dtype=np.float32)
        positions = torch.tensor([[len(seq.token_ids) + j for j in range(g)] for seq in live])
        return thresholds(self.cfg.schedule, self.cfg.tau0, self.cfg.lam, positions).numpy()

    def _record(self, live: list, result: dict) -> list:
        """Append each row's committed tokens; return the sequences that ended this round."""
        finished = []
        has_topk = "teacher_topk_ids" in result
        for row, seq in enumerate(live):
            seq.teacher_calls += 1
            for j in range(int(result["n_commit"][row])):
                token = int(result["tokens"][row, j])
                seq.token_ids.append(token)
                seq.from_teacher.append(bool(result["from_teacher"][row, j]))
                seq.divergence.append(float(result["score"][row, j]))
                seq.tau.append(float(result["tau"][row, j]))
                seq.teacher_logprob.append(float(result["teacher_logprob"][row, j]))
                if has_topk:
                    seq.teacher_topk_ids.append(result["teacher_topk_ids"][row, j].tolist())
                    seq.teacher_topk_logprobs.append([round(float(x), 4) for x in result["teacher_topk_logprobs"][row, j]])
                if token in self.eos_ids:
                    seq.finish_reason = "stop"
                elif len(seq.token_ids) >= self.cfg.max_new_tokens:
                    seq.finish_reason = "length"
                if seq.finish_reason:
                    finished.append(seq)
                    break
        return finished
