"""Make a shallower model from a deeper one by keeping some of its decoder layers."""
import torch


def keep_layers(model, indices) -> None:
    """Keep decoder layers `indices` (in order) of a Llama-style model, in place."""
    model.model.layers = torch.nn.ModuleList(model.model.layers[i] for i in indices)
    for new_index, layer in enumerate(model.model.layers):
        layer.self_attn.layer_idx = new_index  # the KV cache is indexed by layer position
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = [model.config.layer_types[i] for i in indices]
    model.config.num_hidden_layers = len(indices)
