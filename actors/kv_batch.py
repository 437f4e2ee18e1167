"""One model's KV cache for a batch of sequences that grow, roll back and leave at different times.

The cache is a transformers DynamicCache of one length L for all rows; `valid[b, j]` marks the slots
that hold real tokens. Rolling a row back only marks its tail invalid (a hole), so rows diverge in
length without copying; `compact` squeezes the holes out once they outweigh the real content.
Positions come from the count of valid slots, so a row computes exactly what it would alone.

Each row's last committed token is its `pending` token: not in the cache yet, fed first next time.

With a `PrefixCache` (actors/prefix_cache.py: the chat template's opening and prompts seen recently),
a row starts from the keys and values of the longest prefix it shares with a cached entry and
prefills only the rest. Positions count valid slots, so such a row computes what it would with the
whole prompt prefilled in its own forward.
"""
import torch
from transformers import DynamicCache

from actors.prefix_cache import PrefixCache

PAD_SLACK = 32  # padding tokens a prefill group may carry anyway: cheaper than one more forward


class CachedBatch:
    def __init__(self, model, device: torch.device, prefixes: PrefixCache | None = None):
        self.model, self.device, self.prefixes = model, device, prefixes
        self._reset(0)

    def _reset(self, rows: int) -> None:
        self.cache = DynamicCache(config=self.model.config)
        self.valid = torch.zeros(rows, 0, dtype=torch.bool, device=self.device)
        self.length = torch.zeros(rows, dtype=torch.long, device=self.device)  # valid slots per row
        self.pending = torch.zeros(rows, dtype=torch.long, device=self.device)

    @property
    def rows(self) -> int:
        return self.pending.shape[0]

    def _longest(self) -> int:
        return int(self.length.max()) if self.rows else 0

    @torch.no_grad()
    def start(self, prompts: list[list[int]]) -> int:
        """Prefill all but the last token of each prompt; the last one becomes pending. Prompts of
        unlike lengths are prefilled in groups of like length (padding costs a padded row's whole
        forward), then merged; rows keep the order given. Returns the prompt tokens run."""
        groups = length_groups([self.prefill_cost(p) for p in prompts])
        if len(groups) == 1:
            return self._start_group(prompts)
        ran = self._start_group([prompts[i] for i in groups[0]])
        for group in groups[1:]:
            part = CachedBatch(self.model, self.device, self.prefixes)
            ran += part._start_group([prompts[i] for i in group])
            self._merge(part)
        placed = [i for group in groups for i in group]
        self.select(torch.tensor(sorted(range(len(placed)), key=placed.__getitem__)))
        return ran

    def prefill_cost(self, prompt: list[int]) -> int:
        """Tokens a prefill runs for this prompt: all but the pending one, less a cached prefix."""
        return len(prompt) - 1 - (self.prefixes.match(prompt)[1] if self.prefixes is not None else 0)

    def _start_group(self, prompts: list[list[int]]) -> int:
        """Prefill these prompts in one forward, left-padded.

        Prefill needs only the cache, so the LM head runs on one position instead of the whole prompt.
        With a prefix cache, each row's first columns are the cached keys and values of its longest
        cached prefix (left-padded to the longest such prefix) and only the rest of its prompt is run;
        afterwards each row's prefilled tokens go into the cache for the prompts that follow.
        """
        self._reset(len(prompts))
        matches = [self.prefixes.match(p, count=True) if self.prefixes is not None else (None, 0) for p in prompts]
        skip = [n for _, n in matches]
        if any(skip):
            self._start_from_prefixes(matches)
        width = max(len(p) - 1 - k for p, k in zip(prompts, skip))
        pads = torch.tensor([width - (len(p) - 1 - k) for p, k in zip(prompts, skip)], device=self.device)
        ids = torch.zeros(len(prompts), width, dtype=torch.long, device=self.device)
        for row, (prompt, k) in enumerate(zip(prompts, skip)):
            if len(prompt) - 1 > k:
                ids[row, int(pads[row]):] = torch.tensor(prompt[k:-1], dtype=torch.long)
        prefill_valid = torch.arange(width, device=self.device)[None, :] >= pads[:, None]
        if width > 0:
            positions = self.length[:, None] + (prefill_valid.cumsum(1) - 1).clamp(min=0)
            self._run(ids, prefill_valid, positions=positions, logits_to_keep=1)
        self.valid = torch.cat([self.valid, prefill_valid], dim=1)
        self.length = self.valid.sum(1)
        self.pending = torch.tensor([p[-1] for p in prompts], dtype=torch.long, device=self.device)
        if self.prefixes is not None and self.valid.shape[1]:
            self.prefixes.insert_rows(prompts, self.cache, self.valid)
        return sum(len(p) - 1 - k for p, k in zip(prompts, skip))

    def _start_from_prefixes(self, matches: list[tuple]) -> None:
        """Each row's cached prefix in its first columns, right-aligned to the longest (rows without one:
        none). Rows that reuse the same entry to the same length (most often the chat template) are
        copied in one go."""
        rows, width = len(matches), max(n for _, n in matches)
        same: dict[tuple, tuple] = {}
        for row, (layers, n) in enumerate(matches):
            if n:
                same.setdefault((id(layers), n), (layers, n, []))[2].append(row)
        self.valid = torch.zeros(rows, width, dtype=torch.bool, device=self.device)
        for index, (keys, values) in enumerate(next(iter(same.values()))[0]):
            shape = (rows, keys.shape[1], width, keys.shape[3])
            k_all = torch.zeros(shape, dtype=keys.dtype, device=keys.device)
            v_all = torch.zeros(shape, dtype=values.dtype, device=values.device)
            for layers, n, members in same.values():
                at = torch.tensor(members, device=keys.device)
                k_all[at, :, width - n:] = layers[index][0][:, :, :n]
                v_all[at, :, width - n:] = layers[index][1][:, :, :n]
            self.cache.update(k_all, v_all, index)
        for layers, n, members in same.values():
            self.valid[members, width - n:] = True
        self.length = self.valid.sum(1)

    @torch.no_grad()
    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Append `tokens` [B, m] to every row; return the logits [B, m, V] at those positions."""
        m = tokens.shape[1]
        new_valid = torch.ones(self.rows, m, dtype=torch.bool, device=self.device)
        positions = self.length[:, None] + torch.arange(m, device=self.device)[None, :]
        logits = self._run(tokens.to(self.device), new_valid, positions)
        self.valid = torch.cat([self.valid, new_valid], dim=1)
        self.length = self.length + m
        return logits

    def _run(self, ids, new_valid, positions, logits_to_keep: int = 0) -> torch.Tensor:
        mask = torch.cat([self.valid, new_valid], dim=1)  # self.valid spans the cache as it is now
        out = self.model(input_ids=ids, attention_mask=mask.long(), position_ids=positions,
                         past_key_values=self.cache, use_cache=True, logits_to_keep=logits_to_keep)
        return out.logits

    def keep(self, lengths: torch.Tensor, pending: torch.Tensor) -> None:
        """Roll each row back to its first `lengths[b]` valid slots and set its pending token."""
        lengths = lengths.to(self.device)
        self.valid = self.valid & (self.valid.cumsum(1) <= lengths[:, None])
        self.length = self.valid.sum(1)
        self.pending = pending.to(self.device)
        self._crop_tail()
        if self.valid.shape[1] > 2 * self._longest() + 64:
            self.compact()

    def _crop_tail(self) -> None:
        """Drop trailing columns that no row uses any more."""
        used = self.valid.any(0).nonzero()
        new_len = int(used.max()) + 1 if used.numel() else 0
        extra = self.valid.shape[1] - new_len
        if extra > 0:
            self.cache.crop(-extra)
            self.valid = self.valid[:, :new_len]

    def compact(self) -> None:
        """Squeeze the holes out: move each row's valid slots to the right end of a shorter cache."""
        width = self._longest()
        order = torch.argsort(self.valid.to(torch.int8), dim=1, stable=True)[:, -width:] if width else self.valid[:, :0].long()
        self._gather_slots(order)
        self.valid = torch.gather(self.valid, 1, order)

    def _gather_slots(self, index: torch.Tensor) -> None:
        for layer in self.cache.layers:
            if _kv(layer) is None:
                continue
            b, h, _, d = layer.keys.shape
            idx = index[:, None, :, None].expand(b, h, index.shape[1], d)
            layer.keys = torch.gather(layer.keys, 2, idx)
            layer.values = torch.gather(layer.values, 2, idx)

    def select(self, rows: torch.Tensor) -> None:
        """Keep only these rows (finished sequences leave the batch)."""
        rows = rows.to(self.device)
        self.cache.batch_select_indices(rows)
        self.valid, self.length, self.pending = self.valid[rows], self.length[rows], self.pending[rows]
        self._crop_tail()
        self._crop_head()

    def _crop_head(self) -> None:
        """Drop leading columns that no row uses any more: left padding of rows that joined beside
        longer rows that have left since (continuous batching would otherwise widen the cache forever)."""
        used = self.valid.any(0).nonzero()
        first = int(used.min()) if used.numel() else 0
        if first == 0:
            return
        for layer in self.cache.layers:
            if _kv(layer) is not None:
                layer.keys, layer.values = layer.keys[:, :, first:], layer.values[:, :, first:]
        self.valid = self.valid[:, first:]

    def extend(self, prompts: list[list[int]]) -> int:
        """Add new sequences to the batch (continuous batching): prefill them apart, then merge.
        Returns the prompt tokens run."""
        if self.rows == 0:
            return self.start(prompts)
        other = CachedBatch(self.model, self.device, self.prefixes)
        ran = other.start(prompts)
        self._merge(other)
        return ran

    def _merge(self, other: "CachedBatch") -> None:
        """Append another batch's rows (their caches left-padded to one width)."""
        width = max(self.valid.shape[1], other.valid.shape[1])
        self._left_pad(width)
        other._left_pad(width)
        for mine, theirs in zip(self.cache.layers, other.cache.layers):
            a, b = _kv(mine), _kv(theirs)
            if a is None and b is None:
                continue  # both sides empty: width is 0
            a = a if a is not None else tuple(torch.zeros_like(t[:1]).expand(self.rows, -1, -1, -1) for t in b)
            b = b if b is not None else tuple(torch.zeros_like(t[:1]).expand(other.rows, -1, -1, -1) for t in a)
            if not mine.is_initialized:
                mine.lazy_initialization(*a)
            mine.keys, mine.values = torch.cat([a[0], b[0]], dim=0), torch.cat([a[1], b[1]], dim=0)
        self.valid = torch.cat([self.valid, other.valid], dim=0)
        self.length = torch.cat([self.length, other.length])
        self.pending = torch.cat([self.pending, other.pending])

    def _left_pad(self, width: int) -> None:
        extra = width - self.valid.shape[1]
        if extra <= 0:
            return
        self.valid = torch.cat([torch.zeros(self.rows, extra, dtype=torch.bool, device=self.device), self.valid], dim=1)
        for layer in self.cache.layers:
            if _kv(layer) is None:
                continue
            b, h, _, d = layer.keys.shape
            pad = torch.zeros(b, h, extra, d, dtype=layer.keys.dtype, device=layer.keys.device)
            layer.keys = torch.cat([pad, layer.keys], dim=2)
            layer.values = torch.cat([pad, layer.values], dim=2)


def length_groups(costs: list[int], waste: float = 0.25, slack: int = PAD_SLACK) -> list[list[int]]:
    """Indices grouped by like cost, shortest first: a group grows while its padding (rows x the
    longest, less its real tokens) stays within `waste` of its real tokens or within `slack` tokens."""
    if not costs:
        return []
    order = sorted(range(len(costs)), key=costs.__getitem__)
    groups, real = [[order[0]]], costs[order[0]]
    for i in order[1:]:
        padding = costs[i] * (len(groups[-1]) + 1) - (real + costs[i])
        if padding > max(waste * (real + costs[i]), slack):
            groups.append([])
            real = 0
        groups[-1].append(i)
        real += costs[i]
    return groups


def _kv(layer):
    """A layer's (keys, values), or None while it holds nothing."""
    if not getattr(layer, "is_initialized", False) or layer.keys is None or layer.keys.numel() == 0:
        return None
    return layer.keys, layer.values
