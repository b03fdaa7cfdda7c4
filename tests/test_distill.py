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


def test_the_teachers_exact_logits_are_cached_apart_from_its_soft_targets(tiny_data, tmp_path, monkeypatch):
    """The parity reference of the teacher as it is: fp32 (never the bf16 of its soft targets), PyTorch's own
    logits, computed once and read back from the cache (the default teacher's took 17-25 s a trial)."""
    import compress.data.teacher_logits as distill
    from compress.recipe import load_recipe
    from compress.teacher import load_teacher
    from compress.train import predict_logits

    teacher, info = load_teacher(load_recipe("recipes/tiny_search.yaml").teacher, tiny_data.spec)
    args = (teacher, tiny_data.val, info["sha256"], tiny_data.fingerprint, tmp_path)
    exact = distill.cached_teacher_logits(*args, exact=True)
    reference = predict_logits(teacher, tiny_data.val, 500)
    assert exact.dtype == "float32" and torch.allclose(torch.tensor(exact), reference, atol=1e-4)
    monkeypatch.setattr(distill, "iter_logits", None)  # computed once: read back, not run again
    assert (distill.cached_teacher_logits(*args, exact=True) == exact).all()
    assert [p.name.endswith("-fp32.npy") for p in tmp_path.glob("*.npy")] == [True]
