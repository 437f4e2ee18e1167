"""Keys and values of token prefixes seen recently, reused so a prompt prefills only what is new.

An entry is a token sequence (one prompt's prefilled tokens, or a pinned one such as the chat
template's system prompt) and its per-layer keys and values for one row. A prompt reuses the longest
common prefix it has with any entry: keys and values of a causal model at a position depend only on
the tokens up to it, so the first n columns of any entry that starts with the same n tokens are the
ones the prompt would compute itself. Entries are evicted least recently used first, so the tokens
held stay within `capacity_tokens`; pinned entries are never evicted. An entry that another, longer
entry starts with is dropped when the longer one arrives (it would never be the longest match again).
"""
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

MIN_REUSE = 4  # tokens; a shorter match saves less than copying its columns costs


@dataclass
class _Entry:
    tokens: np.ndarray  # int64 [n]
    layers: list  # per layer (keys [1, heads, n, dim], values [1, heads, n, dim])
    pinned: bool = False


class PrefixCache:
    def __init__(self, capacity_tokens: int, min_reuse: int = MIN_REUSE):
        self.capacity_tokens, self.min_reuse = capacity_tokens, min_reuse
        self.entries: OrderedDict[bytes, _Entry] = OrderedDict()  # least recently used first
        self.tokens_held = self.pinned_tokens = 0
        self.lookups = self.hits = self.tokens_reused = self.insertions = self.evictions = 0

    def pin(self, model, device: torch.device, tokens: list[int]) -> None:
        """Prefill these tokens now and keep them for good (e.g. the chat template's opening)."""
        with torch.no_grad():
            cache = model(input_ids=torch.tensor([tokens], device=device), use_cache=True).past_key_values
        self._add(np.asarray(tokens, dtype=np.int64), [(layer.keys, layer.values) for layer in cache.layers], pinned=True)

    def match(self, prompt: list[int], count: bool = False) -> tuple[list | None, int]:
        """(an entry's per-layer keys and values, n) for the longest reusable prefix of `prompt`: its
        first n columns are the prompt's first n tokens. (None, 0) when none is worth reusing. At least
        the prompt's last token is left to run (it becomes pending). `count` records the lookup in the
        counters (a real prefill, not a cost estimate)."""
        ids = np.asarray(prompt, dtype=np.int64)
        limit = len(ids) - 1
        best, best_n, best_len = None, 0, 0
        for key, entry in self.entries.items():
            n = _common(entry.tokens, ids, limit)
            # on a tie the shortest entry: the one that is (nearest to) just the shared part, as a radix
            # tree's inner node, so that using a common system prompt does not refresh every prompt after it
            if n > best_n or (n == best_n and n and len(entry.tokens) < best_len):
                best, best_n, best_len = key, n, len(entry.tokens)
        if best_n < self.min_reuse:
            best, best_n = None, 0
        if count:
            self.lookups += 1
            if best is not None:
                self.hits += 1
                self.tokens_reused += best_n
        if best is None:
            return None, 0
        if count:
            self.entries.move_to_end(best)
        return self.entries[best].layers, best_n

    def insert(self, tokens: list[int], layers: list) -> None:
        """Keep these tokens' keys and values (one row, already copied out of any batch cache)."""
        ids = np.asarray(tokens, dtype=np.int64)
        if len(ids) < self.min_reuse or len(ids) > self.capacity_tokens:
            return
        for key, entry in list(self.entries.items()):
            n = _common(entry.tokens, ids, len(ids))
            if n == len(ids):  # already held, as this or a longer entry
                self.entries.move_to_end(key)
                return
            if n == len(entry.tokens) and not entry.pinned:  # the new one subsumes it
                self._drop(key)
        self._add(ids, layers)
        self.insertions += 1

    def insert_rows(self, prompts: list[list[int]], cache, valid: torch.Tensor) -> None:
        """After a prefill: keep each row's prefilled tokens (all of its prompt but the pending last one),
        read from the batch's cache columns that the row's `valid` marks."""
        for row, prompt in enumerate(prompts):
            n = len(prompt) - 1
            if n < self.min_reuse or n > self.capacity_tokens:
                continue
            columns = valid[row].nonzero().squeeze(1)
            assert len(columns) == n, "a prefilled row's valid columns are its prompt but the last token"
            self.insert(prompt[:-1], [(layer.keys[row:row + 1, :, columns], layer.values[row:row + 1, :, columns])
                                      for layer in cache.layers])

    def clear(self) -> None:
        """Drop every entry but the pinned ones (benches measure from a cold cache)."""
        for key in [k for k, e in self.entries.items() if not e.pinned]:
            self._drop(key)

    def stats(self) -> dict:
        return {"lookups": self.lookups, "hits": self.hits, "tokens_reused": self.tokens_reused,
                "insertions": self.insertions, "evictions": self.evictions, "entries": len(self.entries),
                "tokens_held": self.tokens_held, "capacity_tokens": self.capacity_tokens,
                "pinned_tokens": self.pinned_tokens}  # plain counters: read while a step may be changing the entries

    def _add(self, ids: np.ndarray, layers: list, pinned: bool = False) -> None:
        self.entries[ids.tobytes()] = _Entry(ids, layers, pinned)
        self.tokens_held += len(ids)
        self.pinned_tokens += len(ids) if pinned else 0
        for key in [k for k, e in self.entries.items() if not e.pinned]:  # least recently used first
            if self.tokens_held <= self.capacity_tokens:
                break
            self._drop(key)
            self.evictions += 1

    def _drop(self, key: bytes) -> None:
        self.tokens_held -= len(self.entries.pop(key).tokens)


def _common(a: np.ndarray, b: np.ndarray, limit: int) -> int:
    """The length of the common prefix of a and b, at most `limit`."""
    m = min(len(a), len(b), limit)
    if m <= 0:
        return 0
    differ = np.flatnonzero(a[:m] != b[:m])
    return int(differ[0]) if len(differ) else m
