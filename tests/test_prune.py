import pytest
import torch
import torch.nn as nn

from compress.models import create_model, macs_and_params
from compress.recipe import PruneConfig
from compress.techniques.prune import prune_


@pytest.mark.parametrize("name,kwargs", [("cnn", {"width": 16, "depth": 2}), ("cnn", {"width": 16, "depth": 1, "pool": 7}),
                                         ("resnet_small", {"widths": (16, 32, 32, 64)})])
def test_pruning_removes_channels_and_model_still_runs(name, kwargs):
    model = create_model(name, **kwargs)
    convs_before = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    macs0, params0 = macs_and_params(model)
    prune_(model, PruneConfig(enabled=True, ratio=0.5))
    convs_after = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    macs1, params1 = macs_and_params(model)
    # Physically smaller tensors, not zero masks: each conv keeps about half its output channels.
    for b, a in zip(convs_before, convs_after):
        assert a == b - int(b * 0.5)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            assert m.weight.shape[0] == m.out_channels
    assert macs1 < 0.4 * macs0 and params1 < 0.4 * params0
    out = model(torch.randn(3, 1, 28, 28))
    assert out.shape == (3, 10)  # the classifier's outputs are never pruned


def test_round_to_keeps_channel_counts_multiples():
    def pruned_convs(**cfg):
        model = prune_(create_model("resnet_small", widths=(64, 96, 192, 256), strides=(1, 2, 2, 2)),
                       PruneConfig(enabled=True, ratio=0.7, **cfg))
        return model, [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]

    _, plain = pruned_convs()
    model, rounded = pruned_convs(round_to=8)
    assert any(c % 8 for c in plain)  # 0.7 of 64-96-192-256 leaves 19-28-57-76 channels
    assert all(c % 8 == 0 and 0 < c <= p for c, p in zip(rounded, plain))  # rounded down, never to zero
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_rounding_that_removes_far_more_than_the_ratio_says_so(capsys):
    # 12-24-48 channels pruned by 0.23 keep 8-16-32 with round_to 8: a third of them, not 23%.
    prune_(create_model("cnn", width=12, depth=1), PruneConfig(enabled=True, ratio=0.23, round_to=8))
    out = capsys.readouterr().out
    assert "prune.ratio 0.23 with round_to 8 removed 33% of StudentCNN's channels (12-24-48 -> 8-16-32)" in out
    # Close to the ratio, or without rounding: nothing to say.
    prune_(create_model("cnn", width=16, depth=1), PruneConfig(enabled=True, ratio=0.5, round_to=8))
    prune_(create_model("cnn", width=12, depth=1), PruneConfig(enabled=True, ratio=0.23))
    assert "round_to" not in capsys.readouterr().out


def test_ratio_zero_is_identity():
    model = create_model("cnn", width=8, depth=1)
    before = macs_and_params(model)
    prune_(model, PruneConfig(enabled=True, ratio=0.0))
    assert macs_and_params(model) == before


def test_adaptive_batchnorm_recovers_a_pruned_teacher(tiny_data):
    """Pruning leaves the kept channels' BN statistics measured on the unpruned net; re-estimating them on
    training inputs (no gradient step) must restore much of the accuracy."""
    import copy

    from compress.data import batches
    from compress.recipe import TeacherConfig
    from compress.teacher import load_teacher
    from compress.techniques.prune import adapt_batchnorm
    from compress.train import accuracy

    teacher, _ = load_teacher(TeacherConfig())
    stale = prune_(copy.deepcopy(teacher), PruneConfig(enabled=True, ratio=0.5))
    adapted = adapt_batchnorm(copy.deepcopy(stale), (x for _, x, _ in batches(tiny_data.train, 250)))
    before, after = accuracy(stale, tiny_data.val), accuracy(adapted, tiny_data.val)
    assert after > before + 0.1, (before, after)
    assert not adapted.training
