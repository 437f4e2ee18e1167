"""One SWITCH round for a group of live sequences, step by step:

1. plan: who drafts and how long a block (`plan_round`), and tau at each position of it (`thresholds_for`);
2. draft: the drafter samples g tokens with its KV cache (LMWorker.draft);
3. score and decide: the other model scores the whole block in one forward and, holding both
   distributions, applies the rule at each position (LMWorker.score -> distill_math.switch_block);
   it commits the kept tokens at once;
4. commit: the drafter's commit rides along with its next call for the group (`DeferredCommit`);
5. record: each sequence takes its committed tokens (`record_round`); the drafter's next block length
   follows how many of its tokens survived (`next_gamma`).

Steps 1-4 are `launch_round`; the controller (switch_controller.py) waits for a round's result,
runs step 5, refills the group and launches its next round.
"""
from dataclasses import dataclass, field

import numpy as np
import torch

from studyhall.config import SwitchConfig
from studyhall.distill_math import ADAPTIVE, adaptive_tau, thresholds

OWNERSHIP_WINDOW = 8  # recent positions per sequence that decide who drafts next


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
    live: list = field(default_factory=list)  # switch_controller.Sequence
    in_flight: object = None  # the ObjectRef of this group's current round result
    drafter: str = ""
    block: int = 0  # g of the round in flight
    commit: DeferredCommit = field(default_factory=DeferredCommit)


def plan_round(cfg: SwitchConfig, live: list, gamma: dict) -> tuple[str, int]:
    """Who drafts and how long a block: the writer when one model writes alone, else the model that
    owned most recent positions; `gamma` holds each model's current block length."""
    if cfg.one_token_rounds():
        return "student", 1
    if cfg.writer != "both":
        drafter = cfg.writer
    else:
        recent = [t for seq in live for t in seq.from_teacher[-OWNERSHIP_WINDOW:]]
        drafter = "teacher" if recent and 2 * sum(recent) > len(recent) else "student"
    remaining = max(cfg.max_new_tokens - len(seq.token_ids) for seq in live)
    return drafter, max(1, min(gamma[drafter], remaining))


def thresholds_for(cfg: SwitchConfig, live: list, g: int) -> np.ndarray:
    """tau at each position of the block; SKD's gate is a fixed rank, K - 0.5, not a schedule."""
    if cfg.divergence == "skd":
        return np.full((len(live), g), cfg.tau_for_skd(), dtype=np.float32)
    if cfg.schedule == ADAPTIVE:  # one-token rounds (SwitchConfig.one_token_rounds): g == 1
        return np.array([[adaptive_tau(seq.divergence, any(seq.from_teacher), cfg.adaptive_k, cfg.adaptive_window)]
                         for seq in live], dtype=np.float32)
    positions = torch.tensor([[len(seq.token_ids) + j for j in range(g)] for seq in live])
    return thresholds(cfg.schedule, cfg.tau0, cfg.lam, positions).numpy()


def launch_round(actors: dict, group: Group, cfg: SwitchConfig, gamma: dict) -> None:
    """Steps 1-4 for the group: plan, submit the draft and the scoring, and owe the drafter's commit.
    A group with no live sequence drops its batch on both actors instead."""
    if not group.live:
        group.in_flight = None
        for actor in actors.values():
            actor.drop.remote(group.id)
        return
    drafter, g = plan_round(cfg, group.live, gamma)
    scorer = "student" if drafter == "teacher" else "teacher"
    draft_ref = actors[drafter].draft.remote(group.id, g, commit=group.commit.take(drafter))
    taus = thresholds_for(cfg, group.live, g)
    # A lone group's one-token round: the scorer's forward needs only the pending token, so it runs
    # beside the drafter's (see LMWorker.score). With two groups each actor has the other group's
    # round to do meanwhile, and a scorer waiting inside a call could hold up the drafter's queue.
    draft = [draft_ref] if g == 1 and cfg.groups() == 1 else draft_ref
    score_ref = actors[scorer].score.remote(group.id, draft, taus, commit=group.commit.take(scorer))
    group.drafter, group.block, group.in_flight = drafter, g, score_ref
    group.commit.owe(drafter, score_ref)


def record_round(live: list, result: dict, eos_ids: set[int], max_new_tokens: int) -> list:
    """Step 5: append each row's committed tokens and what the rule saw at each; return the
    sequences that ended this round (an end-of-turn token, or the answer budget)."""
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
            if token in eos_ids:
                seq.finish_reason = "stop"
            elif len(seq.token_ids) >= max_new_tokens:
                seq.finish_reason = "length"
            if seq.finish_reason:
                finished.append(seq)
                break
    return finished


def next_gamma(cfg: SwitchConfig, gamma: int, result: dict) -> int:
    """The drafter's next block length: one more than the mean run of its drafted tokens that survived."""
    if cfg.one_token_rounds() or not cfg.adaptive_gamma:
        return gamma
    survived = float(np.mean(result["accepted"]))
    return int(np.clip(round(survived) + 1, 1, cfg.gamma_max))
