import pytest
import torch

import compress.data.fashion_mnist as data_mod
from compress.data import DatasetError, augment, calibration_inputs, load_dataset
from compress.recipe import DataConfig


def test_official_split_sizes_and_fixed_seeded_split():
    a = load_dataset(DataConfig())
    assert (len(a.train), len(a.val), len(a.test)) == (55000, 5000, 10000)
    b = load_dataset(DataConfig())
    assert a.fingerprint == b.fingerprint and torch.equal(a.val.labels, b.val.labels)
    c = load_dataset(DataConfig(split_seed=1))
    assert c.fingerprint != a.fingerprint
    # All ten classes in validation, roughly balanced.
    counts = torch.bincount(a.val.labels, minlength=10)
    assert counts.min() > 400


def test_calibration_comes_from_training_split(tiny_data):
    x, fp = calibration_inputs(tiny_data.train, 50, seed=0)
    assert x.shape == (50, 1, 28, 28) and x.dtype.name == "float32"
    train = tiny_data.train.inputs().numpy().reshape(len(tiny_data.train), -1)
    assert all((train == row.reshape(1, -1)).all(1).any() for row in x[:5])
    assert calibration_inputs(tiny_data.train, 50, seed=0)[1] == fp


def test_augment_keeps_shape_and_changes_pixels(tiny_data):
    x = tiny_data.train.inputs(slice(0, 16))
    y = augment(x, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and not torch.equal(x, y)


def test_missing_dataset_says_both_ways_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(data_mod, "DEBIAN_DIR", tmp_path / "no-debian")

    def no_network(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr("torchvision.datasets.mnist.download_and_extract_archive", no_network)
    with pytest.raises(DatasetError) as e:
        load_dataset(DataConfig(root=str(tmp_path / "root")))
    msg = str(e.value)
    assert "apt-get install dataset-fashion-mnist" in msg and "FashionMNIST/raw" in msg
