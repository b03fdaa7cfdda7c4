import pytest
import torch

from compress.models import create_model, list_models


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_builds_and_classifies(name):
    model = create_model(name).eval()
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_torchvision_architecture_adapts_to_one_channel():
    model = create_model("tv:resnet18", in_channels=1, num_classes=10).eval()
    assert model(torch.randn(1, 1, 28, 28)).shape == (1, 10)


def test_unknown_model_lists_registered_ones():
    with pytest.raises(KeyError, match="registered: cnn, resnet_small"):
        create_model("nope")
