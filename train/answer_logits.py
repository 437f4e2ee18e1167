"""The student as the trainer runs it: logits only at the positions the loss reads.

A causal LM's head turns every position's hidden state into vocabulary logits; the loss reads only
the answer positions (the loss mask), so the prompt positions' logits are computed and thrown away.
On a 49k vocabulary that head is a large share of a step. `AnswerLogitsLM` runs the decoder over
the whole sequence and the head over the selected positions only.

It wraps the model, so DeepSpeed wraps it in turn and its hooks (ZeRO-3's parameter gathering,
autocast) see one forward as usual. The head is applied the way the model's own forward applies it
only when a one-time check on a short input says so; otherwise (e.g. a model that scales or caps its
logits after the head) it takes the model's full logits and selects from them.
"""
import torch
from torch import nn


def head_matches_forward(model: nn.Module) -> bool:
    """Whether lm_head(decoder(x)) equals the model's own logits on a short input, in float32."""
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    if decoder is None or head is None:
        return False
    ids = torch.arange(1, 9, device=head.weight.device)[None] % model.config.vocab_size
    with torch.no_grad():
        full = model(input_ids=ids).logits.float()
        split = head(decoder(input_ids=ids).last_hidden_state).float()
    return full.shape == split.shape and torch.allclose(full, split, rtol=1e-4, atol=1e-4)


class AnswerLogitsLM(nn.Module):
    """forward(input_ids, attention_mask, positions): logits [N, V] at the N True entries of `positions`
    [B, L], in row-major order; without `positions`, the model's full logits [B, L, V]."""

    def __init__(self, lm: nn.Module, enabled: bool = True):
        super().__init__()
        self.lm = lm
        self.split = enabled and head_matches_forward(lm)

    def forward(self, input_ids, attention_mask, positions=None):
        if positions is None:
            return self.lm(input_ids=input_ids, attention_mask=attention_mask).logits
        if not self.split:
            return self.lm(input_ids=input_ids, attention_mask=attention_mask).logits[positions]
        hidden = self.lm.get_decoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.lm.get_output_embeddings()(hidden[positions])
