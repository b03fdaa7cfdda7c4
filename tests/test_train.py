import pytest
import torch

from compress.errors import RecipeError, TargetError
from compress.recipe import TrainConfig
from compress.train import resolve_device, train_


def test_auto_trains_where_the_hardware_is():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu").type == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_asking_for_cuda_without_a_gpu_says_so():
    with pytest.raises(TargetError, match="train.device = 'cuda', but PyTorch sees no CUDA GPU"):
        resolve_device("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_training_on_cuda_returns_the_model_on_the_cpu(tiny_data):
    from compress.models import create_model

    model = create_model("cnn", width=4, depth=1)
    train_(model, tiny_data.train.head(256), TrainConfig(epochs=1, batch_size=64, device="cuda"), val=tiny_data.val)
    assert next(model.parameters()).device.type == "cpu"


def test_augmentation_is_refused_for_feature_vectors():
    from compress.data import Split
    from compress.models import create_model

    split = Split(torch.randn(16, 8), torch.zeros(16, dtype=torch.long), 0.0, 1.0, 1.0)
    with pytest.raises(RecipeError, match="augmentation .* is for images, and these data are feature vectors"):
        train_(create_model("mlp", in_features=8, num_classes=2), split, TrainConfig(epochs=1, augment=True))
