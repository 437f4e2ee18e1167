"""The pure math against torch.distributions and direct formulas."""
import math

import pytest
import torch
from torch.distributions import Categorical, kl_divergence

from studyhall import distill_math as dm


def _pair(seed=0, shape=(3, 5, 50), scale=3.0):
    g = torch.Generator().manual_seed(seed)
    a = torch.log_softmax(torch.randn(shape, generator=g) * scale, -1)
    b = torch.log_softmax(torch.randn(shape, generator=g) * scale, -1)
    return a, b


def test_kl_matches_torch_distributions():
    a, b = _pair()
    expected = kl_divergence(Categorical(logits=a), Categorical(logits=b))
    torch.testing.assert_close(dm.kl(a, b), expected, rtol=1e-5, atol=1e-6)


def test_js_matches_direct_formula_and_bounds():
    a, b = _pair(1)
    pa, pb = a.exp().double(), b.exp().double()
    m = 0.5 * (pa + pb)
    direct = 0.5 * (pa * (pa / m).log()).sum(-1) + 0.5 * (pb * (pb / m).log()).sum(-1)
    got = dm.js(a, b)
    torch.testing.assert_close(got.double(), direct, rtol=1e-5, atol=1e-6)
    assert (got >= -1e-7).all() and (got <= math.log(2) + 1e-6).all()
    torch.testing.assert_close(dm.js(a, a), torch.zeros(a.shape[:-1]), atol=1e-6, rtol=0)
    torch.testing.assert_close(dm.js(a, b), dm.js(b, a))


def test_js_disjoint_supports_is_ln2_and_never_nan():
    inf = float("-inf")
    a = torch.tensor([[0.0, inf, inf]])
    b = torch.tensor([[inf, 0.0, inf]])
    assert dm.js(a, b).item() == pytest.approx(math.log(2), abs=1e-6)
    # Extreme logits whose probabilities underflow to 0 on both sides must not give NaN.
    c = torch.log_softmax(torch.tensor([[0.0, -200.0, -300.0]]), -1)
    assert torch.isfinite(dm.js(c, c)).all()


def test_total_variation_and_kl_directions():
    a, b = _pair(2)
    direct_tv = 0.5 * (a.exp() - b.exp()).abs().sum(-1)
    torch.testing.assert_close(dm.total_variation(a, b), direct_tv)
    student_token = torch.zeros(a.shape[:-1], dtype=torch.long)
    torch.testing.assert_close(dm.gate_score("kl_ts", a, b, student_token), dm.kl(a, b))
    torch.testing.assert_close(dm.gate_score("kl_st", a, b, student_token), dm.kl(b, a))


def test_teacher_rank_counts_strictly_better_tokens():
    logp_t = torch.log_softmax(torch.tensor([[0.1, 3.0, 2.0, -1.0]]), -1)
    ranks = [dm.teacher_rank(logp_t, torch.tensor([t])).item() for t in range(4)]
    assert ranks == [2, 0, 1, 3]
    # SKD gate with K = 2: tokens ranked 0 and 1 pass, the others go to the teacher.
    tau = 2 - 0.5
    assert [r > tau for r in ranks] == [True, False, False, True]


def test_schedules():
    t = torch.arange(0, 100)
    exp = dm.thresholds("exponential", 0.4, 0.05, t)
    torch.testing.assert_close(exp, (0.4 * torch.exp(-0.05 * t.double())).float())
    assert exp[0] == pytest.approx(0.4) and (exp[1:] < exp[:-1]).all()
    assert (dm.thresholds("constant", 0.4, 0.05, t) == 0.4).all()
    lin = dm.thresholds("linear", 0.4, 0.01, t)
    assert lin[0] == pytest.approx(0.4) and lin[10] == pytest.approx(0.3) and (lin[40:] == 0).all()


def test_nucleus_keeps_smallest_set_reaching_top_p():
    logp = torch.tensor([0.5, 0.3, 0.15, 0.05]).log()
    kept = dm.nucleus(logp, 0.7).isfinite().tolist()
    assert kept == [True, True, False, False]
    assert dm.nucleus(logp, 0.8).isfinite().tolist() == [True, True, False, False]
    assert dm.nucleus(logp, 0.81).isfinite().tolist() == [True, True, True, False]
    assert dm.nucleus(logp, 0.01).isfinite().tolist() == [True, False, False, False]


def test_sampling_law_matches_probabilities():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05, 0.0])
    logp = probs.log().expand(20000, 5)
    g = torch.Generator().manual_seed(3)
    draws = dm.sample(logp, greedy=False, top_p=1.0, generator=g)
    freq = torch.bincount(draws, minlength=5).double() / draws.numel()
    assert freq[4] == 0  # a zero-mass token is never drawn
    # 5 standard errors at n=20000 is < 0.018 for every p here
    assert (freq[:4] - probs[:4].double()).abs().max() < 0.018
    assert (dm.sample(logp[:3], greedy=True, top_p=1.0, generator=None) == 0).all()
    nucleus_draws = dm.sample(logp[:2000], greedy=False, top_p=0.7, generator=g)
    assert set(nucleus_draws.tolist()) == {0, 1}


def _sharp(*argmaxes, vocab=6):
    """Log-probs that put almost all mass on the given token at each position."""
    return torch.log_softmax(torch.nn.functional.one_hot(torch.tensor(argmaxes), vocab).float() * 20, -1)


def test_switch_block_student_drafts_and_teacher_takes_over():
    # Position 0: models agree (low divergence) -> the student's draft stands.
    # Position 1: they disagree (high divergence) -> the teacher's token (2) replaces the draft (1):
    # the block is cut there and position 2 is dropped.
    logp_t, logp_s = _sharp(0, 2, 3)[None], _sharp(0, 1, 3)[None]
    drafted = torch.tensor([[0, 1, 3]])
    tau = torch.full((1, 3), 0.3)
    tokens, from_teacher, score, n = dm.switch_block(logp_t, logp_s, drafted, False, "js", tau, greedy=True)
    assert n.tolist() == [2]
    assert tokens[0, :2].tolist() == [0, 2]
    assert from_teacher[0, :2].tolist() == [False, True]
    assert score[0, 0] < 0.01 and score[0, 1] > 0.6


def test_switch_block_teacher_drafts():
    logp_t = _sharp(1, 2, 3).expand(2, 3, 6)
    logp_s = torch.stack([_sharp(1, 2, 3), _sharp(1, 5, 3)])  # row 1 disagrees at position 1
    drafted = torch.tensor([[1, 2, 3], [1, 2, 3]])
    low, high = torch.full((2, 3), -1.0), torch.full((2, 3), 10.0)
    _, from_teacher, _, n = dm.switch_block(logp_t, logp_s, drafted, True, "js", low, greedy=True)
    assert n.tolist() == [3, 3] and from_teacher.all()  # the teacher owns every position: draft stands
    tokens, from_teacher, _, n = dm.switch_block(logp_t, logp_s, drafted, True, "js", high, greedy=True)
    assert n.tolist() == [3, 2] and tokens[1, 1] == 5 and not from_teacher.any()


def test_a_named_writer_owns_every_position_and_the_divergence_is_still_scored():
    # the same block as above, where the rule hands position 1 to the teacher
    logp_t, logp_s = _sharp(0, 2, 3)[None], _sharp(0, 1, 3)[None]
    drafted, tau = torch.tensor([[0, 1, 3]]), torch.full((1, 3), 0.3)
    rule = dm.switch_block(logp_t, logp_s, drafted, False, "js", tau, greedy=True)
    tokens, from_teacher, score, n = dm.switch_block(logp_t, logp_s, drafted, False, "js", tau, greedy=True, writer="student")
    assert tokens.tolist() == drafted.tolist() and n.tolist() == [3] and not from_teacher.any()
    assert torch.equal(score, rule[2])  # scored as the rule scores it: what calibrating tau0 reads
    # the teacher writes: its draft stands whole, whatever the threshold
    tokens, from_teacher, score, n = dm.switch_block(logp_t, logp_s, torch.tensor([[0, 2, 3]]), True, "js",
                                                     torch.full((1, 3), 10.0), greedy=True, writer="teacher")
    assert tokens.tolist() == [[0, 2, 3]] and n.tolist() == [3] and from_teacher.all() and score[0, 1] > 0.6


def test_coupled_sample_has_the_target_law_and_agrees_maximally():
    g = torch.Generator().manual_seed(5)
    target = torch.tensor([0.5, 0.2, 0.2, 0.1, 0.0]).log()
    proposal = torch.tensor([0.1, 0.4, 0.2, 0.0, 0.3]).log()
    n = 40000
    drafts = dm.sample(proposal.expand(n, 5), False, 1.0, g)
    out = dm.coupled_sample(target.expand(n, 5), proposal.expand(n, 5), drafts, False, 1.0, g)
    freq = torch.bincount(out, minlength=5).double() / n
    assert (freq - target.exp().double()).abs().max() < 0.012  # > 5 standard errors at n = 40000
    tv = 0.5 * (target.exp() - proposal.exp()).abs().sum().item()
    agree = (out == drafts).double().mean().item()
    assert agree == pytest.approx(1 - tv, abs=0.012)  # 1 - TV = 0.6, against 0.18 for independent draws
    # with a nucleus, the law is the target's nucleus
    out = dm.coupled_sample(target.expand(n, 5), proposal.expand(n, 5), drafts, False, 0.6, g)
    assert set(out.unique().tolist()) <= {0, 1, 2}


def test_skd_gate_uses_the_student_token():
    logp_t = torch.log_softmax(torch.tensor([[[3.0, 2.0, 1.0, 0.0]]]), -1)
    logp_s = torch.log_softmax(torch.tensor([[[0.0, 0.0, 0.0, 9.0]]]), -1)
    drafted = torch.tensor([[3]])  # the student's token is the teacher's worst: rank 3
    tau = torch.tensor([[2 - 0.5]])  # K = 2
    tokens, from_teacher, score, n = dm.switch_block(logp_t, logp_s, drafted, False, "skd", tau, greedy=True)
    assert score.item() == 3 and from_teacher.item() and tokens.item() == 0
    drafted = torch.tensor([[1]])  # rank 1 < K: the student keeps it
    tokens, from_teacher, _, _ = dm.switch_block(logp_t, logp_s, drafted, False, "skd", tau, greedy=True)
    assert not from_teacher.item() and tokens.item() == 1


def test_adaswitch_switches_at_the_first_divergence_above_k_times_its_moving_average():
    # K = 2, L = 3. Position 0 has no average: the student writes it. Averages of the (up to) 3 before:
    # i=1: 0.1 -> tau 0.2, d 0.15 stays; i=2: 0.125 -> 0.25, d 0.2 stays; i=3: 0.15 -> 0.3, d 0.3 stays
    # (not above); i=4: mean(0.15, 0.2, 0.3) = 0.2167 -> 0.4333, d 0.5 switches.
    d = [0.1, 0.15, 0.2, 0.3, 0.5, 0.01, 0.01]
    assert dm.adaptive_switch_point(d, k=2.0, window=3) == 4
    assert dm.adaptive_tau([], False, 2.0, 3) == math.inf
    assert dm.adaptive_tau(d[:4], False, 2.0, 3) == pytest.approx(2 * (0.15 + 0.2 + 0.3) / 3)
    # a longer window averages the small early values in: at i=4 the mean of all four is 0.1875, tau 0.375: switches
    # too; at K = 4 none of these exceeds 4 x its average, the student writes it all
    assert dm.adaptive_switch_point(d, k=2.0, window=8) == 4 and dm.adaptive_switch_point(d, k=4.0, window=3) is None
    # once switched, every later position is the teacher's, however small its divergence
    assert all(dm.adaptive_tau(d[:i], True, 2.0, 3) < 0 <= d[i] for i in range(5, 7))


def test_adaswitch_hands_every_later_position_to_the_teacher_in_the_switch_rule():
    torch.manual_seed(0)
    logp_t, logp_s = torch.randn(1, 1, 16).log_softmax(-1), torch.randn(1, 1, 16).log_softmax(-1)
    drafted = logp_s.argmax(-1)
    score = float(dm.js(logp_t, logp_s)[0, 0])
    assert 0 < score < 0.6  # under K x an average of 0.3: the student's position
    for tau, teacher in ((dm.adaptive_tau([0.3], False, 2.0, 8), False), (dm.adaptive_tau([0.3], True, 2.0, 8), True)):
        _, from_teacher, _, _ = dm.switch_block(logp_t, logp_s, drafted, False, "js", torch.tensor([[tau]]), greedy=True)
        assert bool(from_teacher[0, 0]) is teacher
