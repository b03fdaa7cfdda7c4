"""Pruning any model: torchvision architectures, every registered family, vectors; random weights and
tiny inputs (32x32 images, 20 features), so each case takes about a second on one thread."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from compress.errors import RecipeError
from compress.models import build_model, list_models, macs_and_params
from compress.recipe import PruneConfig
from compress.spec import InputSpec
from compress.techniques.prune import PruneError, find_classifier, prune_


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny convolutions on a shared 2-core machine: one intra-op thread is ~10x faster than two fighting
    # other processes (resnet18 here: 0.6 s against 7 s), and the result does not depend on it.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


IMAGE_SPEC = InputSpec("image", (3, 32, 32), tuple("abcdefghij"), (0.5,), (0.25,), 255.0)
VECTOR_SPEC = InputSpec("vector", (20,), tuple("abcdefghij"), (0.0,), (1.0,))

CASES = [("tv:resnet18", IMAGE_SPEC, {}), ("tv:mobilenet_v3_small", IMAGE_SPEC, {}),
         ("mlp", VECTOR_SPEC, {"width": 32, "depth": 2})]
SMALL = {"cnn": {"width": 8, "depth": 1}, "resnet_small": {"widths": (16, 32, 32, 64)}}  # tiny, for speed
# (the mlp takes images too, flattened: its vector case above is the pruning one)
CASES += [(name, IMAGE_SPEC, SMALL.get(name, {})) for name in list_models("image") if name != "mlp"]


@pytest.mark.parametrize("name,spec,kwargs", CASES, ids=[c[0] for c in CASES])
def test_pruning_any_model_shrinks_it_and_keeps_the_classifier(name, spec, kwargs):
    torch.manual_seed(0)
    model = build_model(name, spec, kwargs)
    shape = spec.batch_shape(1)
    example = torch.zeros(*shape)
    head = find_classifier(model.eval(), example)
    out_features = head.out_features if isinstance(head, nn.Linear) else head.out_channels
    assert out_features == spec.num_classes
    macs0, params0 = macs_and_params(model, shape)

    assert prune_(model, PruneConfig(enabled=True, ratio=0.5), shape) is model
    macs1, params1 = macs_and_params(model, shape)
    # Half the channels of every layer: about a quarter of the weights and MACs (0.25-0.29 for the convnets,
    # 0.38 for the mlp, whose 20 inputs and 10 outputs stay).
    assert params1 < 0.45 * params0 and macs1 < 0.45 * macs0, (name, params0, params1, macs0, macs1)
    assert (head.out_features if isinstance(head, nn.Linear) else head.out_channels) == spec.num_classes
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(3, *spec.shape)).shape == (3, spec.num_classes)


def _widths(model: nn.Module) -> dict[str, int]:
    return {n: m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
            for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


@pytest.mark.parametrize("name,spec,kwargs,ignore", [
    ("cnn", IMAGE_SPEC, {"width": 8, "depth": 1}, "features.0"),
    ("mlp", VECTOR_SPEC, {"width": 32, "depth": 2}, "features.0"),
    ("tv:resnet18", IMAGE_SPEC, {}, "layer1.0.conv2"),  # on the residual path: its coupled layers stay too
], ids=["cnn", "mlp", "resnet18-residual"])
def test_ignore_keeps_the_named_module_channels(name, spec, kwargs, ignore):
    model = build_model(name, spec, kwargs)
    before = _widths(model)
    prune_(model, PruneConfig(enabled=True, ratio=0.5, ignore=[ignore]), spec.batch_shape(1))
    after = _widths(model)
    assert after[ignore] == before[ignore]
    halved = [n for n in before if after[n] == before[n] - before[n] // 2 and after[n] < before[n]]
    assert halved, f"{name}: nothing else was pruned"
    if name == "cnn":
        assert (before["features.4"], after["features.4"], before["features.8"], after["features.8"]) == (16, 8, 32, 16)
    if name == "tv:resnet18":  # the residual stream of stage 1 is one coupled group
        assert after["conv1"] == after["layer1.1.conv2"] == 64 and after["layer1.0.conv1"] == 32
    assert model.eval()(torch.randn(2, *spec.shape)).shape == (2, spec.num_classes)


def test_ignore_an_unknown_module_names_it():
    model = build_model("cnn", IMAGE_SPEC, {"width": 8, "depth": 1})
    with pytest.raises(RecipeError, match=r"prune.ignore: StudentCNN has no module 'features.99'; its modules are "
                                          r"named like features, features.0"):
        prune_(model, PruneConfig(enabled=True, ratio=0.5, ignore=["features.99"]), IMAGE_SPEC.batch_shape(1))


class _NoClassifier(nn.Module):
    """Scores summed out of a wider layer: no Linear or Conv2d produces the 10 outputs."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 16), nn.ReLU(), nn.Linear(16, 20))

    def forward(self, x):
        return self.body(x).view(-1, 10, 2).sum(-1)


def test_a_model_whose_classifier_cannot_be_found_is_a_prune_error():
    with pytest.raises(PruneError, match="_NoClassifier: no Linear or Conv2d layer produces its 10 class scores"):
        prune_(_NoClassifier(), PruneConfig(enabled=True, ratio=0.5), IMAGE_SPEC.batch_shape(1))
