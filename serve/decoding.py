"""Sampling continuations for a batch of prompts in one padded forward loop, and turning tokens into text.

Both GKT deployments use `BatchDecoder`: the prompts are left-padded into one KV cache
(actors/kv_batch.py), each step runs one forward for every row still going, and rows that finish
leave the batch so the rest run narrower. `TextStream` turns one row's tokens into text deltas and
applies OpenAI-style `stop` strings.
"""
import torch

from actors.kv_batch import CachedBatch
from studyhall.distill_math import divergence_logprobs, sample


class BatchDecoder:
    """Rows are addressed by their index in `prompts`; `step()` returns {row: new token} for rows still active."""

    def __init__(self, model, device, prompts: list[list[int]], temperature: list[float], top_p: list[float],
                 generator: torch.Generator | None):
        self.batch = CachedBatch(model, device)
        self.batch.start(prompts)
        self.rows = list(range(len(prompts)))  # original row of each batch position
        self.temperature, self.top_p, self.generator = temperature, top_p, generator
        self._leaving: set[int] = set()

    @property
    def active(self) -> bool:
        return len(self.rows) > len(self._leaving)

    def finish(self, row: int) -> None:
        """This row is done; it leaves the batch before the next forward."""
        self._leaving.add(row)

    @torch.no_grad()
    def step(self) -> dict[int, int]:
        if self._leaving:
            keep = [i for i, row in enumerate(self.rows) if row not in self._leaving]
            self.batch.select(torch.tensor(keep, dtype=torch.long))
            self.rows = [self.rows[i] for i in keep]
            self._leaving.clear()
        if not self.rows:
            return {}
        logits = self.batch.forward(self.batch.pending[:, None])[:, -1]
        tokens = torch.empty(len(self.rows), dtype=torch.long, device=logits.device)
        # Rows with the same sampling settings draw together (requests in one batch may differ).
        groups: dict[tuple, list[int]] = {}
        for i, row in enumerate(self.rows):
            groups.setdefault((self.temperature[row], self.top_p[row]), []).append(i)
        for (temperature, top_p), idx in groups.items():
            index = torch.tensor(idx, dtype=torch.long, device=logits.device)
            logp = divergence_logprobs(logits[index], temperature)
            tokens[index] = sample(logp, temperature <= 0, top_p, self.generator)
        self.batch.pending = tokens
        return dict(zip(self.rows, tokens.tolist()))


class TextStream:
    """One row's text as tokens arrive: new text only once it is final, cut at the first stop string.

    `prefix` is text already sent before these tokens (the guidance, for the student), so a stop string
    that straddles the guidance and the continuation is still found.
    """

    def __init__(self, tokenizer, stop: list[str], prefix: str = ""):
        self.tokenizer, self.stop, self.prefix = tokenizer, [s for s in stop if s], prefix
        self.ids: list[int] = []
        self.sent = ""  # text emitted so far (after prefix)
        self.stopped = False

    def push(self, token: int) -> str:
        """Add a token; return the text that became final (may be empty)."""
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        full = self.prefix + text
        for s in self.stop:
            at = full.find(s, max(0, len(self.prefix) - len(s) + 1))  # only stops that end after the prefix
            if at != -1:
                self.stopped = True
                text = full[len(self.prefix):max(at, len(self.prefix))]
                return self._emit(text)
        if text.endswith("\ufffd"):  # half a multi-byte character: wait for the rest
            return ""
        held = max((_overlap(full, s) for s in self.stop), default=0)  # may be the start of a stop string
        return self._emit(text[:len(text) - held] if held else text)

    def flush(self) -> str:
        """The rest, once no more tokens come (text held back for a stop string that never completed)."""
        if self.stopped:
            return ""
        return self._emit(self.tokenizer.decode(self.ids, skip_special_tokens=True).rstrip("\ufffd"))

    def _emit(self, text: str) -> str:
        if len(text) <= len(self.sent):
            return ""
        delta, self.sent = text[len(self.sent):], text
        return delta


def _overlap(text: str, stop: str) -> int:
    """The longest tail of `text` that is a proper prefix of `stop`."""
    for n in range(min(len(stop) - 1, len(text)), 0, -1):
        if text.endswith(stop[:n]):
            return n
    return 0
