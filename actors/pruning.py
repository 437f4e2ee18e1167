"""Depth pruning: score a decoder's layers on calibration text, choose which to keep, and cut the rest.

Two ways to choose, both from the residual stream h_0..h_L (h_i enters layer i; h_L leaves the last):
- block influence (ShortGPT, Men et al., arXiv 2403.03853): layer i scores the mean over tokens of
  1 - cos(h_i, h_{i+1}); the layers that change the stream most are kept.
- angular (Gromov et al., arXiv 2403.17887): to remove n layers, drop the contiguous block
  [l, l + n) whose ends are closest, by the mean angular distance arccos(cos(h_l, h_{l+n})) / pi.
  The first and last layers are always kept, so the block lies strictly inside.

h_L is taken from the last layer itself, before the final norm: `output_hidden_states` ends with the
normed state, which would score the norm as part of the last layer.
"""
from dataclasses import dataclass

import torch
from torch import nn

from studyhall.config import ConfigError

METHODS = ("block_influence", "angular")


def decoder_layers(model) -> nn.ModuleList:
    """The decoder layer list of an HF causal LM built like Llama (model.model.layers)."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    if not isinstance(layers, nn.ModuleList) or not len(layers):
        model_type = getattr(model.config, "model_type", None) or type(model).__name__
        raise ConfigError(f"model type {model_type!r}: its decoder layers are not a list at model.model.layers "
                          "(pruning supports Llama, Qwen2, Mistral, Gemma, SmolLM and alike)")
    return layers


@dataclass
class LayerScores:
    block_influence: list[float]  # per layer i: mean 1 - cos(h_i, h_{i+1})
    angular: list[float]  # per start l: mean arccos(cos(h_l, h_{l+removed})) / pi
    removed: int
    tokens: int


@torch.no_grad()
def score_layers(model, batches, removed: int) -> LayerScores:
    """Both scores over every non-padding token of `batches`, an iterable of (input_ids, attention_mask)."""
    depth = len(decoder_layers(model))
    influence, angular, tokens = torch.zeros(depth, dtype=torch.float64), torch.zeros(depth - removed + 1, dtype=torch.float64), 0
    for input_ids, attention_mask in batches:
        states = residual_stream(model, input_ids, attention_mask)
        real = attention_mask.bool()
        tokens += int(real.sum())
        for i in range(depth):
            influence[i] += (1 - _cosine(states[i], states[i + 1]))[real].sum()
        for start in range(depth - removed + 1):
            cos = _cosine(states[start], states[start + removed]).clamp(-1, 1)
            angular[start] += (torch.arccos(cos) / torch.pi)[real].sum()
    if not tokens:
        raise ConfigError("no calibration tokens to score the layers on")
    return LayerScores((influence / tokens).tolist(), (angular / tokens).tolist(), removed, tokens)


def residual_stream(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[torch.Tensor]:
    """[h_0, ..., h_L]: the input of every decoder layer, then the output of the last one."""
    layers = decoder_layers(model)
    states = []

    def take_input(module, args, kwargs):
        states.append(args[0] if args else kwargs["hidden_states"])

    def take_output(module, args, output):
        states.append(output[0] if isinstance(output, tuple) else output)

    hooks = [layer.register_forward_pre_hook(take_input, with_kwargs=True) for layer in layers]
    hooks.append(layers[-1].register_forward_hook(take_output))
    try:
        model.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)  # the base model: no LM head needed
    finally:
        for hook in hooks:
            hook.remove()
    return states


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1)


def choose_layers(method: str, scores: LayerScores, keep: int) -> list[int]:
    """The indices of the `keep` layers to keep, in their original order."""
    depth = len(scores.block_influence)
    if depth - keep != scores.removed:
        raise ValueError(f"scores were made for removing {scores.removed} layers, not {depth - keep}")
    if method == "block_influence":
        most_influential = sorted(range(depth), key=lambda i: -scores.block_influence[i])  # stable: ties keep the earlier layer
        return sorted(most_influential[:keep])
    if method == "angular":
        start = angular_start(scores)
        return [i for i in range(depth) if not start <= i < start + scores.removed]
    raise ConfigError(f"method {method!r}: unknown; use {' or '.join(METHODS)}")


def angular_start(scores: LayerScores) -> int:
    """The first layer of the removed block: the closest ends, the first and last layers never inside."""
    depth = len(scores.block_influence)
    starts = range(1, depth - scores.removed)  # start >= 1 and start + removed <= depth - 1
    if not starts:
        raise ValueError(f"angular keeps the first and last layers: cannot remove {scores.removed} of {depth}")
    return min(starts, key=lambda start: scores.angular[start])


def prune_to(model, keep) -> None:
    """Keep decoder layers `keep` (increasing indices), in place, with the config and cache indices to match."""
    layers = decoder_layers(model)
    depth, keep = len(layers), list(keep)
    if not keep or keep != sorted(set(keep)) or keep[0] < 0 or keep[-1] >= depth:
        raise ValueError(f"keep {keep}: must be increasing layer indices from 0 to {depth - 1}")
    model.model.layers = nn.ModuleList(layers[i] for i in keep)
    for new_index, layer in enumerate(model.model.layers):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_index  # the KV cache is indexed by position in the list
    for name, value in list(vars(model.config).items()):
        if isinstance(value, (list, tuple)) and len(value) == depth:  # per-layer settings, e.g. layer_types
            setattr(model.config, name, type(value)(value[i] for i in keep))
    model.config.num_hidden_layers = len(keep)
