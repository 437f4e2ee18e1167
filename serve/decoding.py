"""Continuous batching over one KV cache, and turning a row's tokens into text.

`RunningBatch` is the decode state of one GKT replica: rows join between steps (their prompts are
prefilled apart, from the longest cached prefix on, and merged into the cache: actors/kv_batch.py,
actors/prefix_cache.py), every step runs one forward for all
rows, and a finished row leaves before the next step, so the rest run narrower. Each row keeps its
own sampling settings. `RowOutput` turns one row's tokens into OpenAI-style chunks: EOS, `stop`
strings, the token limit, and text held back until it is final.
"""
from dataclasses import dataclass

import torch

from actors.kv_batch import CachedBatch
from actors.prefix_cache import MIN_REUSE, PrefixCache
from studyhall.distill_math import divergence_logprobs, sample
from studyhall.prompts import render


def prefix_cache(model, device, tokenizer, capacity_tokens: int) -> PrefixCache | None:
    """A replica's prefix cache (None when `capacity_tokens` is 0), with what every chat prompt starts
    with pinned in it: the template's system prompt and the user turn's opening, the tokens two
    unrelated conversations share. Prompts are tokenized as the replicas do (rendered text, no special
    tokens added)."""
    if capacity_tokens <= 0:
        return None
    cache = PrefixCache(capacity_tokens)
    first, second = (tokenizer(render(tokenizer, [{"role": "user", "content": text}]), add_special_tokens=False)["input_ids"]
                     for text in ("Hi", "Why is the sea blue?"))
    n = 0
    while n < min(len(first), len(second)) and first[n] == second[n]:
        n += 1
    if MIN_REUSE <= n <= capacity_tokens:
        cache.pin(model, device, first[:n])
    return cache


@dataclass(frozen=True)
class Sampling:
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None  # a request's own random stream: its draws do not depend on its batch mates


class RunningBatch:
    """Rows are addressed by a key the caller chooses; `step()` returns {key: new token} for every row."""

    def __init__(self, model, device, generator: torch.Generator | None, prefixes: PrefixCache | None = None):
        self.batch = CachedBatch(model, device, prefixes)
        self.model, self.prefixes = model, prefixes
        self.device, self.generator = device, generator
        self.keys: list = []  # the key of each batch position
        self.sampling: dict = {}
        self.generators: dict = {}  # key -> its own generator, for rows with a seed
        # key -> (forwards, rows_forwarded) when it joined: a row is in every forward until it leaves,
        # so the counters' growth since then is its forwards and the rows that shared them
        self.joined_at: dict = {}
        self._leaving: set = set()
        self.forwards = self.rows_forwarded = self.prefills = self.prefill_tokens = 0
        self.prefill_ahead_tokens = 0  # the part of prefill_tokens run ahead of a request (prefill_ahead)

    def __len__(self) -> int:
        return len(self.keys) - len(self._leaving)

    def join(self, rows: list[tuple]) -> None:
        """Add rows (key, prompt token ids, Sampling): prefilled now, they decode from the next step."""
        self._drop_leaving()
        self.prefill_tokens += self.batch.extend([prompt for _, prompt, _ in rows])
        for key, prompt, sampling in rows:
            self.keys.append(key)
            self.sampling[key], self.joined_at[key] = sampling, (self.forwards, self.rows_forwarded)
            if sampling.seed is not None:
                self.generators[key] = torch.Generator(self.device).manual_seed(sampling.seed)
        self.prefills += 1

    def prefill_ahead(self, prompts: list[list[int]]) -> None:
        """Prefill these prompts into the prefix cache only (no rows join): a request about to arrive
        with one of them as its start prefills just the rest. Without a prefix cache, nothing to do."""
        if self.prefixes is None or not prompts:
            return
        # a placeholder last token: a prefill leaves a prompt's last token pending, and all of p is to be cached
        ran = CachedBatch(self.model, self.batch.device, self.prefixes).start([p + [0] for p in prompts])
        self.prefill_tokens += ran
        self.prefill_ahead_tokens += ran
        self.prefills += 1

    def prefill_cost(self, prompt: list[int]) -> int:
        """The prompt tokens a join would run: a cached prefix's are not run again."""
        return self.batch.prefill_cost(prompt)

    def leave(self, key) -> None:
        """This row is done; it leaves before the next forward."""
        if key in self.sampling:
            self._leaving.add(key)

    def rows_per_forward(self, key) -> float:
        """The mean number of rows in the forwards that made this row's tokens."""
        forwards, rows = self.joined_at[key]
        steps = self.forwards - forwards
        return round((self.rows_forwarded - rows) / steps, 3) if steps else 0.0

    def _drop_leaving(self) -> None:
        if not self._leaving:
            return
        keep = [i for i, key in enumerate(self.keys) if key not in self._leaving]
        self.batch.select(torch.tensor(keep, dtype=torch.long))
        for key in self._leaving:
            for table in (self.sampling, self.generators, self.joined_at):
                table.pop(key, None)
        self.keys = [self.keys[i] for i in keep]
        self._leaving.clear()

    @torch.no_grad()
    def step(self) -> dict:
        self._drop_leaving()
        if not self.keys:
            return {}
        logits = self.batch.forward(self.batch.pending[:, None])[:, -1]
        tokens = torch.empty(len(self.keys), dtype=torch.long, device=logits.device)
        # Rows with the same settings draw together; a seeded row draws alone from its own stream.
        groups: dict[tuple, list[int]] = {}
        for i, key in enumerate(self.keys):
            s = self.sampling[key]
            groups.setdefault((s.temperature, s.top_p, key if key in self.generators else None), []).append(i)
        for (temperature, top_p, seeded), idx in groups.items():
            index = torch.tensor(idx, dtype=torch.long, device=logits.device)
            logp = divergence_logprobs(logits[index], temperature)
            generator = self.generators[seeded] if seeded is not None else self.generator
            tokens[index] = sample(logp, temperature <= 0, top_p, generator)
        self.batch.pending = tokens
        self.forwards += 1
        self.rows_forwarded += len(self.keys)
        return dict(zip(self.keys, tokens.tolist()))


class RowOutput:
    """One request's tokens as chunks {"text": delta}, the last with "finish_reason" and "tokens".

    A streaming request gets each delta as it becomes final; any other gets one chunk at the end.
    """

    def __init__(self, tokenizer, eos: set[int], max_new: int, stop: list[str], ignore_eos: bool = False,
                 stream: bool = False, prefix: str = ""):
        self.text = TextStream(tokenizer, stop, prefix)
        self.eos, self.max_new, self.ignore_eos, self.stream = eos, max_new, ignore_eos, stream
        self.tokens, self.held, self.finished = 0, "", False

    def push(self, token: int) -> dict | None:
        """The chunk this token makes, or None when there is nothing to send yet."""
        self.tokens += 1
        chunk: dict = {"text": ""}
        if token in self.eos and not self.ignore_eos:
            chunk["finish_reason"] = "stop"
        else:
            chunk["text"] = self.text.push(token)
            if self.text.stopped:
                chunk["finish_reason"] = "stop"
        if "finish_reason" not in chunk and self.tokens >= self.max_new:
            chunk["finish_reason"] = "length"
        if "finish_reason" in chunk:
            self.finished = True
            chunk["text"] = self.held + chunk["text"] + self.text.flush()
            chunk["tokens"] = self.tokens
            return chunk
        if not self.stream:
            self.held += chunk["text"]
            return None
        return chunk if chunk["text"] else None


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
