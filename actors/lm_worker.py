"""A model with a batch of KV-cached sequences, as a Ray actor: TeacherActor and StudentActor.

Either role can draft a block (sample g tokens one at a time) or score a block another actor drafted
(one forward over all g positions, then the SWITCH rule). The drafter ships its log-probs to the
scorer through the object store; the scorer holds both distributions, so it decides, and sends the
controller only the small per-position record. Both sides then roll back to the committed length.
"""
import time
import warnings

import numpy as np
import ray
import torch
from transformers import GenerationConfig

from actors import weights
from actors.in_process import resolve
from actors.kv_batch import CachedBatch
from actors.models import load_model, pick_device
from actors.revival import Restarted
from actors.weights import Packet
from studyhall.config import ModelConfig, SwitchConfig
from studyhall.distill_math import divergence_logprobs, kl, sample, switch_block
from studyhall.threads import threads_for

ROLE_SEED_OFFSET = {"teacher": 1, "student": 2}


def to_wire(logp: torch.Tensor, wire_dtype: str) -> np.ndarray:
    """Log-probs as numpy, which Ray passes zero-copy between actors on one node."""
    return logp.to(torch.float16 if wire_dtype == "float16" else torch.float32).cpu().numpy()


def from_wire(array: np.ndarray, device: torch.device) -> torch.Tensor:
    with warnings.catch_warnings():  # the object store hands out read-only buffers; we only read them
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array).to(device=device, dtype=torch.float32)


class LMWorker:
    role: str  # "teacher" or "student": each actor class below sets it

    def __init__(self, spec: ModelConfig, switch: SwitchConfig):
        """Light on purpose: the actor is placed first, then `load` brings the model in."""
        torch.set_num_threads(threads_for(spec.num_cpus))
        self.spec = spec
        self.device = pick_device(spec)
        self.configure(switch)

    def load(self) -> dict:
        """Load the model once; "fresh" says whether this call did (after a restart it must again)."""
        fresh = not hasattr(self, "model")
        if fresh:
            self.model = load_model(self.spec, self.device)
        return {**self.info(), "fresh": fresh}

    def _model(self) -> torch.nn.Module:
        """The model, for every call that computes with it or its weights. A restarted actor has none
        until `load`, nor the run's settings and weights: it must be revived (actors/revival.py)."""
        if not hasattr(self, "model"):
            raise Restarted(self.role)
        return self.model

    def configure(self, switch: SwitchConfig) -> None:
        """New generation settings (and seed) for the next run; drops any batch in flight."""
        self.switch = switch
        self.reset()
        self.generator = torch.Generator(self.device).manual_seed(switch.seed * 10 + ROLE_SEED_OFFSET.get(self.role, 0))

    def reset(self) -> None:
        """Drop every batch: after the other actor restarted, the controller rebuilds both from the
        committed tokens."""
        self.batches: dict[int, CachedBatch] = {}  # one per pipeline group
        self.round_start: dict[int, torch.Tensor] = {}

    # Every per-group call takes `commit`: the scorer's result of this group's last round when this
    # actor drafted it. Folding the commit into the next call keeps the actor free to work on the
    # other group meanwhile, instead of blocking its queue until the scorer answers.

    def _batch(self, group: int, commit: dict | None) -> CachedBatch:
        if group not in self.batches:
            self.batches[group] = CachedBatch(self._model(), self.device)
        batch = self.batches[group]
        if commit is not None:
            n = torch.from_numpy(commit["n_commit"]).to(self.device)
            tokens = torch.from_numpy(commit["tokens"]).to(self.device)
            last = tokens.gather(1, (n - 1)[:, None])[:, 0]  # the last committed token becomes pending
            batch.keep(self.round_start[group] + n, last)
        return batch

    # ---- batch membership ----
    def extend(self, group: int, prompts: list[list[int]], commit: dict | None = None) -> int:
        batch = self._batch(group, commit)
        batch.extend(prompts)
        return batch.rows

    def select(self, group: int, rows: list[int], commit: dict | None = None) -> int:
        batch = self._batch(group, commit)
        batch.select(torch.tensor(rows, dtype=torch.long))
        return batch.rows

    # ---- one SWITCH round ----
    def _logprobs(self, logits: torch.Tensor) -> torch.Tensor:
        return divergence_logprobs(logits, self.switch.temperature if self.switch.sample else 0.0)

    def _sample(self, logp: torch.Tensor) -> torch.Tensor:
        return sample(logp, not self.switch.sample, self.switch.top_p, self.generator)

    @torch.no_grad()
    def draft(self, group: int, g: int, commit: dict | None = None) -> dict:
        """Sample g tokens autoregressively; return them and this model's log-probs at each."""
        batch = self._batch(group, commit)
        self.round_start[group] = batch.length.clone()
        tokens, logps = self._draft_tokens(batch, g)
        return {"tokens": tokens.cpu().numpy(), "logp": to_wire(logps, self.switch.wire_dtype)}

    def _draft_tokens(self, batch: CachedBatch, g: int) -> tuple[torch.Tensor, torch.Tensor]:
        """g tokens sampled one forward at a time from the pending ones: tokens [B, g], log-probs [B, g, V]."""
        token, tokens, logps = batch.pending, [], []
        for _ in range(g):
            logp = self._logprobs(batch.forward(token[:, None])[:, -1])
            token = self._sample(logp)
            tokens.append(token)
            logps.append(logp)
        return torch.stack(tokens, 1), torch.stack(logps, 1)

    @torch.no_grad()
    def score(self, group: int, draft: dict | list, taus: np.ndarray, commit: dict | None = None) -> dict:
        """Score a drafted block in one forward, apply the SWITCH rule, commit, and report per position.

        `draft` is the drafter's result, or, for a one-token round, a list holding its ObjectRef (Ray
        leaves refs inside a list unresolved): a one-token block feeds only the pending token, so this
        forward runs while the drafter's does, and the draft is fetched after it. Same inputs, same
        numbers: only the order of the two forwards in time changes.
        """
        batch = self._batch(group, commit)
        self.round_start[group] = batch.length.clone()
        if isinstance(draft, list):
            mine = self._logprobs(batch.forward(batch.pending[:, None]))
            draft = resolve(draft[0])
            drafted = torch.from_numpy(draft["tokens"]).to(self.device)
        else:
            drafted = torch.from_numpy(draft["tokens"]).to(self.device)
            mine = self._logprobs(batch.forward(torch.cat([batch.pending[:, None], drafted[:, :-1]], dim=1)))
        theirs = from_wire(draft["logp"], self.device)
        i_am_teacher = self.role == "teacher"
        logp_t, logp_s = (mine, theirs) if i_am_teacher else (theirs, mine)
        tau = torch.from_numpy(taus).to(self.device)
        tokens, from_teacher, score, n_commit = switch_block(
            logp_t, logp_s, drafted, teacher_drafts=not i_am_teacher, divergence=self.switch.divergence,
            tau=tau, greedy=not self.switch.sample, top_p=self.switch.top_p, generator=self.generator, writer=self.switch.writer)
        result = {
            "tokens": tokens.cpu().numpy(),
            "from_teacher": from_teacher.cpu().numpy(),
            "score": score.cpu().numpy(),
            "tau": tau.cpu().numpy(),
            "n_commit": n_commit.cpu().numpy(),
            "accepted": (tokens == drafted).long().cumprod(1).sum(1).cpu().numpy(),  # drafted tokens kept
            "teacher_logprob": logp_t.gather(-1, tokens[..., None])[..., 0].cpu().numpy(),
        }
        if self.switch.teacher_topk:
            top = logp_t.topk(self.switch.teacher_topk, dim=-1)
            result["teacher_topk_ids"] = top.indices.to(torch.int32).cpu().numpy()
            result["teacher_topk_logprobs"] = top.values.to(torch.float16).cpu().numpy()
        self._batch(group, result)  # the scorer commits at once
        return result

    @torch.no_grad()
    def throughput(self, prompts: list[list[int]], g: int, rounds: int, kind: str) -> float:
        """Tokens/s of this model alone, inside the actor: drafting g tokens at a time ("draft"),
        or scoring g-token blocks in one forward ("score"). The benchmark's bound is built from these."""
        model = self._model()
        batch = CachedBatch(model, self.device)
        batch.start(prompts)
        blocks = torch.randint(0, model.config.vocab_size, (rounds, batch.rows, g), generator=self.generator)
        started = time.perf_counter()
        for r in range(rounds):
            begin = batch.length.clone()
            if kind == "draft":
                token = self._draft_tokens(batch, g)[0][:, -1]
            else:
                fed = torch.cat([batch.pending[:, None], blocks[r, :, :-1]], dim=1)
                logp = self._logprobs(batch.forward(fed))
                self._sample(logp)
                token = blocks[r, :, -1]
            batch.keep(begin + g, token)
        return rounds * g * batch.rows / (time.perf_counter() - started)

    def _response_logits(self, sequences: list[tuple[list[int], list[int]]], chunk: int):
        """(row, logits [len(response), V] that predict each response token) for fixed (prompt,
        response) pairs: one plain right-padded forward per chunk of sequences."""
        for start in range(0, len(sequences), chunk):
            part = sequences[start:start + chunk]
            width = max(len(p) + len(r) for p, r in part)
            ids = torch.zeros(len(part), width, dtype=torch.long)
            mask = torch.zeros(len(part), width, dtype=torch.long)
            for row, (prompt, response) in enumerate(part):
                ids[row, :len(prompt) + len(response)] = torch.tensor(prompt + response)
                mask[row, :len(prompt) + len(response)] = 1
            logits = self._model()(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
            for row, (prompt, response) in enumerate(part):
                yield start + row, logits[row, len(prompt) - 1:len(prompt) + len(response) - 1]

    @torch.no_grad()
    def score_sequences(self, sequences: list[tuple[list[int], list[int]]], chunk: int = 4) -> list[dict]:
        """This model's log-probs over fixed (prompt, response) pairs, e.g. ground-truth answers:
        per response position, the log-prob of the actual token and the top-k. One plain forward
        per chunk of sequences; the same record fields SWITCH generation writes."""
        out = []
        for row, logits in self._response_logits(sequences, chunk):
            logp = self._logprobs(logits)
            target = torch.tensor(sequences[row][1], device=self.device)
            record = {"teacher_logprob": logp.gather(-1, target[:, None])[:, 0].tolist()}
            if self.switch.teacher_topk:
                top = logp.topk(self.switch.teacher_topk, dim=-1)
                record["teacher_topk_ids"] = top.indices.tolist()
                record["teacher_topk_logprobs"] = top.values.to(torch.float16).float().tolist()
            out.append(record)
        return out

    @torch.no_grad()
    def generate_alone(self, prompts: list[list[int]], eos: list[int], chunk: int = 16) -> list[list[int]]:
        """This model alone answers each prompt under the configured settings (max_new_tokens,
        sample, temperature, top_p, seed), with HF `generate`: for a pair whose tokenizers differ,
        where the other model cannot score these tokens (train/cross_vocab.py). Each answer ends at
        its first end-of-turn id, which it keeps, or at max_new_tokens."""
        s, model = self.switch, self._model()
        torch.manual_seed(s.seed * 10 + ROLE_SEED_OFFSET.get(self.role, 0))  # generate draws from the global generator
        sampling = {"do_sample": True, "temperature": s.temperature, "top_p": s.top_p, "top_k": 0} if s.sample else {"do_sample": False}
        # A config of its own: a model folder's generation_config.json (a repetition penalty, top_k) must not change the run's law.
        settings = GenerationConfig(max_new_tokens=s.max_new_tokens, eos_token_id=list(eos), pad_token_id=eos[0], **sampling)
        answers = []
        for start in range(0, len(prompts), chunk):
            part = prompts[start:start + chunk]
            width = max(map(len, part))
            ids = torch.full((len(part), width), eos[0], dtype=torch.long)
            mask = torch.zeros(len(part), width, dtype=torch.long)
            for row, prompt in enumerate(part):  # left-padded, so every row's answer starts at `width`
                ids[row, width - len(prompt):] = torch.tensor(prompt)
                mask[row, width - len(prompt):] = 1
            out = model.generate(input_ids=ids.to(self.device), attention_mask=mask.to(self.device), generation_config=settings)
            for row in out[:, width:].tolist():
                ends = [i for i, t in enumerate(row) if t in eos]
                answers.append(row[:ends[0] + 1] if ends else row)
        return answers

    # Full-vocabulary KL to the teacher on fixed answers: the teacher's whole distributions go from
    # its actor to the student's through the object store (the caller passes the ref along), never
    # through the caller. Both at temperature 1: the models' own distributions.

    @torch.no_grad()
    def full_logprobs(self, sequences: list[tuple[list[int], list[int]]], chunk: int = 4) -> np.ndarray:
        """log p(. | prefix) over the whole vocabulary at every response position, the sequences'
        positions stacked: float32 [sum of response lengths, V]."""
        rows = [torch.log_softmax(logits.float(), -1).cpu() for _, logits in self._response_logits(sequences, chunk)]
        return torch.cat(rows).numpy()

    @torch.no_grad()
    def kl_from(self, sequences: list[tuple[list[int], list[int]]], teacher_logp: np.ndarray, chunk: int = 4) -> list[dict]:
        """Per sequence, summed over its response positions: KL(teacher || this model) on the full
        vocabulary ("kl_sum", nats) and how often both put the top token on the same id ("top1"),
        with "tokens". `teacher_logp` is the teacher actor's `full_logprobs` of the same sequences."""
        teacher = from_wire(teacher_logp, self.device)
        out, at = [], 0
        for row, logits in self._response_logits(sequences, chunk):
            mine = torch.log_softmax(logits.float(), -1)
            theirs, at = teacher[at:at + len(mine)], at + len(mine)
            out.append({"tokens": len(mine), "kl_sum": float(kl(theirs, mine).sum()),
                        "top1": int((theirs.argmax(-1) == mine.argmax(-1)).sum())})
        if at != len(teacher):
            raise ValueError(f"teacher log-probs cover {len(teacher)} positions, the sequences {at}")
        return out

    def drop(self, group: int) -> None:
        """Forget a group that has no sequences left."""
        self.batches.pop(group, None)
        self.round_start.pop(group, None)

    # ---- weights ----
    def load_weights(self, packet: Packet) -> int:
        """Take the trainer's weights (the rollout applies them between generation batches, never
        inside one). All or nothing: a packet that does not fit leaves the old weights. Returns
        the optimizer step they came from."""
        weights.apply(self._model(), packet)
        self.weights_step = packet.step
        return packet.step

    def weights_digest(self) -> dict:
        """Which weights this actor generates with: their step and a digest of their bytes."""
        return {"step": getattr(self, "weights_step", None), "sha256": weights.digest(self._model().state_dict())}

    def info(self) -> dict:
        model = self._model()
        return {"role": self.role, "device": str(self.device), "dtype": str(next(model.parameters()).dtype),
                "vocab_size": int(model.config.vocab_size), "node": ray.get_runtime_context().get_node_id(),
                "assigned_resources": ray.get_runtime_context().get_assigned_resources()}


@ray.remote
class TeacherActor(LMWorker):
    role = "teacher"


@ray.remote
class StudentActor(LMWorker):
    role = "student"
