import pytest
import torch

from compress.errors import RecipeError
from compress.models import build_model, create_model, family_inputs, list_models
from compress.spec import InputSpec

IMAGE_SPECS = [InputSpec("image", (c, s, s), tuple("abcdefg"), (0.5,), (0.25,), 255.0) for c in (1, 3) for s in (28, 40)]
VECTOR_SPEC = InputSpec("vector", (64,), tuple("0123456789"), (0.0,), (1.0,))


def _specs(name):
    return {"image": IMAGE_SPECS, "vector": [VECTOR_SPEC], "any": IMAGE_SPECS + [VECTOR_SPEC]}[family_inputs(name)]


@pytest.mark.parametrize("name", list_models())
def test_every_registered_family_builds_for_its_inputs_and_classifies(name):
    for spec in _specs(name):
        model = build_model(name, spec).eval()
        assert model(torch.randn(2, *spec.shape)).shape == (2, spec.num_classes), (name, spec.shape)


def test_cnn_width_and_depth_reach_the_family():
    spec = IMAGE_SPECS[1]
    small, big = build_model("cnn", spec, {"width": 4, "depth": 1}), build_model("cnn", spec, {"width": 16, "depth": 2})
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in big.parameters())


def test_cnn_pool_keeps_a_grid_of_positions_for_the_linear_layer():
    for spec in IMAGE_SPECS:  # 28 and 40 pixels: the grid is reached by average pooling whatever the map's size
        gap, grid = (build_model("cnn", spec, {"width": 4, "depth": 1, "pool": p}).eval() for p in (1, 7))
        assert grid.fc.in_features == 49 * gap.fc.in_features == 49 * 16
        assert grid(torch.randn(2, *spec.shape)).shape == (2, spec.num_classes)


def test_mlp_flattens_an_image_into_its_first_layer():
    for spec in IMAGE_SPECS:
        model = build_model("mlp", spec, {"width": 8, "depth": 1}).eval()
        assert model.features[0].in_features == spec.shape[0] * spec.shape[1] * spec.shape[2]
        x = torch.randn(2, *spec.shape)
        assert torch.equal(model(x), model(x.contiguous(memory_format=torch.channels_last)))
    with pytest.raises(RecipeError, match="kwargs give in_features=64, but the data have 784"):
        build_model("mlp", IMAGE_SPECS[0], {"in_features": 64})


def test_torchvision_architecture_adapts_to_channels_and_classes():
    model = create_model("tv:resnet18", in_channels=1, num_classes=10).eval()
    assert model(torch.randn(1, 1, 28, 28)).shape == (1, 10)
    rgb = build_model("tv:mobilenet_v3_small", IMAGE_SPECS[3]).eval()
    assert rgb(torch.randn(1, 3, 40, 40)).shape == (1, 7)


def test_unknown_model_lists_registered_ones():
    with pytest.raises(KeyError, match="registered: cnn, mlp, resnet_small"):
        create_model("nope")
    with pytest.raises(RecipeError, match="student.model = 'nosuch': unknown model family; registered: cnn, mlp"):
        build_model("nosuch", IMAGE_SPECS[0])


def test_a_kwarg_the_family_does_not_take_is_named():
    with pytest.raises(RecipeError, match=r"'tv:resnet18' could not be built with \{'width': 8\}.*width"):
        build_model("tv:resnet18", IMAGE_SPECS[0], {"width": 8})
    with pytest.raises(RecipeError, match="could not be built.*it takes .*width"):
        build_model("cnn", IMAGE_SPECS[0], {"widht": 8})


def test_an_image_family_on_vectors_names_the_vector_families():
    with pytest.raises(RecipeError, match="takes images, and these data are vectors; families for vectors: mlp"):
        build_model("cnn", VECTOR_SPEC)
    with pytest.raises(RecipeError, match="torchvision architectures take images"):
        build_model("tv:resnet18", VECTOR_SPEC)


def test_import_path_factories_get_the_data_arguments_they_take(tmp_path, monkeypatch):
    (tmp_path / "my_models.py").write_text(
        "import torch.nn as nn\n"
        "def head(in_features, num_classes, hidden=8):\n"
        "    return nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))\n"
        "def wrong_size(in_features):\n"
        "    return nn.Linear(in_features, 3)\n"
        "def broken():\n"
        "    raise RuntimeError('boom')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    model = build_model("my_models:head", VECTOR_SPEC, {"hidden": 4})
    assert model(torch.randn(2, 64)).shape == (2, 10)
    with pytest.raises(RecipeError, match=r"outputs shape \[2, 3\].*10 classes"):
        build_model("my_models:wrong_size", VECTOR_SPEC)
    with pytest.raises(RecipeError, match="could not import module 'no_such_module'.*ModuleNotFoundError"):
        build_model("no_such_module:f", VECTOR_SPEC)
    with pytest.raises(RecipeError, match="module 'my_models' has no 'nope'"):
        build_model("my_models:nope", VECTOR_SPEC)


def test_an_input_of_the_wrong_shape_is_named():
    with pytest.raises(RecipeError, match=r"fails on inputs of shape \[2, 64\]"):
        build_model("tv:resnet18", IMAGE_SPECS[0]) and None
        from compress.models import check_output

        check_output(torch.nn.Linear(10, 10), VECTOR_SPEC, "teacher")
