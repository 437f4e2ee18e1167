"""Distillation losses against direct formulas, including the limits of beta and alpha."""
import numpy as np
import pytest
import torch

from studyhall import distill_math as dm

torch.manual_seed(0)
V = 12
S_LOGITS = torch.randn(2, 5, V) * 2
T_LOGP = torch.log_softmax(torch.randn(2, 5, V) * 2, -1)
MASK = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 1, 1, 1]], dtype=torch.bool)


def _direct(fn):
    """Mean over masked positions of fn(p_t, p_s), computed in float64 numpy, one position at a time."""
    p_s = torch.softmax(S_LOGITS.double(), -1).numpy()
    p_t = T_LOGP.double().exp().numpy()
    values = [fn(p_t[b, i], p_s[b, i]) for b in range(2) for i in range(5) if MASK[b, i]]
    return float(np.mean(values))


def kl_np(p, q):
    return float(np.sum(p * np.log(p / q)))


def test_forward_and_reverse_kl_match_formulas():
    assert dm.forward_kl_loss(S_LOGITS, T_LOGP, MASK).item() == pytest.approx(_direct(lambda t, s: kl_np(t, s)), rel=1e-5)
    assert dm.reverse_kl_loss(S_LOGITS, T_LOGP, MASK).item() == pytest.approx(_direct(lambda t, s: kl_np(s, t)), rel=1e-5)


@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
def test_generalized_jsd_matches_formula(beta):
    def jsd(t, s):
        m = beta * t + (1 - beta) * s
        return beta * kl_np(t, m) + (1 - beta) * kl_np(s, m)

    assert dm.generalized_jsd_loss(S_LOGITS, T_LOGP, MASK, beta).item() == pytest.approx(_direct(jsd), rel=1e-5)


def test_generalized_jsd_limits_are_forward_and_reverse_kl():
    fkl = dm.forward_kl_loss(S_LOGITS, T_LOGP, MASK).item()
    rkl = dm.reverse_kl_loss(S_LOGITS, T_LOGP, MASK).item()
    assert dm.generalized_jsd_loss(S_LOGITS, T_LOGP, MASK, 0.0).item() == pytest.approx(fkl, rel=1e-6)
    assert dm.generalized_jsd_loss(S_LOGITS, T_LOGP, MASK, 1.0).item() == pytest.approx(rkl, rel=1e-6)
    # Approaching the ends, JSD(beta) behaves like beta·KL(T||S) and (1-beta)·KL(S||T).
    eps = 1e-4
    assert dm.generalized_jsd_loss(S_LOGITS.double(), T_LOGP.double(), MASK, eps).item() / eps == pytest.approx(fkl, rel=1e-2)
    assert dm.generalized_jsd_loss(S_LOGITS.double(), T_LOGP.double(), MASK, 1 - eps).item() / eps == pytest.approx(rkl, rel=1e-2)


@pytest.mark.parametrize("alpha", [0.0, 0.1, 0.5, 1.0])
def test_skew_kls_match_formulas_and_limits(alpha):
    fwd = dm.skew_forward_kl_loss(S_LOGITS, T_LOGP, MASK, alpha).item()
    rev = dm.skew_reverse_kl_loss(S_LOGITS, T_LOGP, MASK, alpha).item()
    assert fwd == pytest.approx(_direct(lambda t, s: kl_np(t, alpha * t + (1 - alpha) * s)), rel=1e-5, abs=1e-7)
    assert rev == pytest.approx(_direct(lambda t, s: kl_np(s, alpha * s + (1 - alpha) * t)), rel=1e-5, abs=1e-7)
    if alpha == 0.0:
        assert fwd == pytest.approx(dm.forward_kl_loss(S_LOGITS, T_LOGP, MASK).item(), rel=1e-6)
        assert rev == pytest.approx(dm.reverse_kl_loss(S_LOGITS, T_LOGP, MASK).item(), rel=1e-6)
    if alpha == 1.0:
        assert fwd == pytest.approx(0.0, abs=1e-6) and rev == pytest.approx(0.0, abs=1e-6)


def test_total_variation_matches_formula():
    assert dm.tv_loss(S_LOGITS, T_LOGP, MASK).item() == pytest.approx(_direct(lambda t, s: 0.5 * np.abs(t - s).sum()), rel=1e-5)


def test_temperature_softens_both_sides():
    temp = 2.0
    s_t = torch.softmax(S_LOGITS.double() / temp, -1).numpy()
    t_t = torch.softmax(T_LOGP.double() / temp, -1).numpy()
    expected = np.mean([kl_np(t_t[b, i], s_t[b, i]) for b in range(2) for i in range(5) if MASK[b, i]])
    assert dm.forward_kl_loss(S_LOGITS, T_LOGP, MASK, temperature=temp).item() == pytest.approx(expected, rel=1e-5)


def test_mask_excludes_positions():
    garbage = S_LOGITS.clone()
    garbage[~MASK] = torch.randn(int((~MASK).sum()), V) * 50
    for name, loss in dm.DISTILL_LOSSES.items():
        opts = {"temperature": 1.0, "beta": 0.5, "alpha": 0.1}
        assert loss(garbage, T_LOGP, MASK, opts).item() == pytest.approx(loss(S_LOGITS, T_LOGP, MASK, opts).item(), rel=1e-6), name


def test_cross_entropy_matches_formula():
    targets = torch.randint(0, V, (2, 5))
    logp = torch.log_softmax(S_LOGITS.double(), -1)
    expected = np.mean([-logp[b, i, targets[b, i]].item() for b in range(2) for i in range(5) if MASK[b, i]])
    assert dm.cross_entropy_loss(S_LOGITS, targets, MASK).item() == pytest.approx(expected, rel=1e-5)


def test_rest_bucket_losses_bound_the_full_ones():
    """Top-k plus a rest bucket: never above the full-vocabulary loss, equal when the rest is empty."""
    s_logp = torch.log_softmax(S_LOGITS, -1)
    ids = T_LOGP.topk(4, -1).indices
    t_b, s_b = dm.with_rest_bucket(T_LOGP.gather(-1, ids)), dm.gather_buckets(s_logp, ids)
    assert torch.allclose(t_b.exp().sum(-1), torch.ones(2, 5), atol=1e-5)
    for name, loss in dm.DISTILL_LOSSES.items():
        opts = {"temperature": 1.0, "beta": 0.5, "alpha": 0.1}
        assert loss(s_b, t_b, MASK, opts).item() <= loss(s_logp, T_LOGP, MASK, opts).item() + 1e-6, name
    all_ids = T_LOGP.topk(V, -1).indices
    full = dm.forward_kl_loss(s_logp, T_LOGP, MASK).item()
    bucketed = dm.forward_kl_loss(dm.gather_buckets(s_logp, all_ids), dm.with_rest_bucket(T_LOGP.gather(-1, all_ids)), MASK).item()
    assert bucketed == pytest.approx(full, rel=1e-4)
