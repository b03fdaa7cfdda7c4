import math

import torch

from compress.techniques.distill import kd_loss


def _softmax(v):
    e = [math.exp(x) for x in v]
    return [x / sum(e) for x in e]


def test_kd_loss_matches_hand_computation():
    s, t, y, T, alpha = [2.0, 0.5, -1.0], [1.0, 1.5, -0.5], 0, 3.0, 0.7
    ps = _softmax([x / T for x in s])
    pt = _softmax([x / T for x in t])
    kl = sum(q * math.log(q / p) for p, q in zip(ps, pt))
    ce = -math.log(_softmax(s)[y])
    expected = alpha * T * T * kl + (1 - alpha) * ce
    got = kd_loss(torch.tensor([s]), torch.tensor([t]), torch.tensor([y]), T, alpha)
    assert abs(float(got) - expected) < 1e-6


def test_kd_loss_alpha_zero_is_cross_entropy_and_soft_part_vanishes_on_equal_logits():
    s = torch.tensor([[0.3, -0.2, 1.1], [2.0, 0.0, 0.1]])
    y = torch.tensor([2, 0])
    ce = torch.nn.functional.cross_entropy(s, y)
    assert torch.allclose(kd_loss(s, torch.randn(2, 3), y, 4.0, 0.0), ce)
    assert float(kd_loss(s, s.clone(), y, 4.0, 1.0)) < 1e-7
