"""The trainer asks DeepSpeed for torch's fused AdamW, and on this torch build its CPU step gives the same
parameters as the foreach step it replaces (fp32, the tiny model, three steps)."""
import torch

from actors.models import load_model
from studyhall.config import ModelConfig, load_config
from train.train_loop import deepspeed_config

LR = 1e-3
# One fused kernel against per-tensor foreach ops: the same arithmetic, another rounding order. Adam's
# step m / (sqrt(v) + eps) magnifies that rounding where a gradient is near zero (v near eps^2): on this
# model 56 of 12.6M weights differ by up to 2.8e-5 after three steps, 3% of one step's size (lr); the rest
# agree to 1e-7. An optimizer that stepped differently would miss by whole steps.
PARAM_TOL = dict(rtol=1e-5, atol=0.05 * LR)


def test_the_deepspeed_config_asks_for_torch_fused_adamw():
    t = load_config("tiny", []).train
    params = deepspeed_config(t, world=1, bf16=False)["optimizer"]["params"]
    assert (params["torch_adam"], params["fused"]) == (True, True)


def _tiny():
    torch.manual_seed(0)
    return load_model(ModelConfig(path="tiny:student", dtype="float32"), torch.device("cpu"))


def _stepped(fused: bool) -> dict:
    model = _tiny()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.95), weight_decay=0.1,
                                  **({"fused": True} if fused else {"foreach": True}))
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        ids = torch.randint(1, model.config.vocab_size, (2, 9), generator=g)
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_fused_adamw_steps_equal_the_foreach_steps():
    fused, foreach = _stepped(True), _stepped(False)
    start = dict(_tiny().named_parameters())
    assert fused.keys() == foreach.keys()
    for name in fused:
        torch.testing.assert_close(fused[name], foreach[name], **PARAM_TOL)
    assert all(not torch.equal(fused[n], start[n].detach()) for n in fused)  # every weight moved
