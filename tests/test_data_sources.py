"""Every data source on tiny synthetic data written to tmp_path: no download, no real dataset (except the
one regression guard on the demo's Fashion-MNIST fingerprint at the end)."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import compress.data.fashion_mnist as fmnist
from compress.data import load_dataset
from compress.errors import CompressError, DatasetError, RecipeError
from compress.recipe import DataConfig, recipe_from_dict

IDX_FILES = {True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def _write_idx(path: Path, arr: np.ndarray) -> None:
    # IDX: magic 0x0000 08 <ndim> (08 = unsigned byte), big-endian uint32 dims, then the raw bytes.
    path.write_bytes(struct.pack(">I", 0x800 + arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
                     + arr.astype(np.uint8).tobytes())


def _idx_dataset(raw: Path, n_train: int, n_test: int, h: int = 28, w: int = 28, classes: int = 10, seed: int = 0):
    raw.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    out = {}
    for train, n in ((True, n_train), (False, n_test)):
        x = rng.integers(0, 256, (n, h, w), dtype=np.uint8)
        y = (np.arange(n) % classes).astype(np.uint8)
        _write_idx(raw / IDX_FILES[train][0], x)
        _write_idx(raw / IDX_FILES[train][1], y)
        out[train] = (x, y)
    return out[True], out[False]


def _rows(t: torch.Tensor) -> set[bytes]:
    return {r.numpy().tobytes() for r in t}


# ---- fashion_mnist ----

def test_fashion_mnist_reads_idx_files_under_root(tmp_path, monkeypatch):
    monkeypatch.setattr(fmnist, "DEBIAN_DIR", tmp_path / "no-debian")
    (xtr, ytr), (xte, yte) = _idx_dataset(tmp_path / "FashionMNIST" / "raw", 20, 10)
    ds = load_dataset(DataConfig(root=str(tmp_path), val_size=5))
    assert (len(ds.train), len(ds.val), len(ds.test)) == (15, 5, 10)
    assert ds.spec.shape == (1, 28, 28) and ds.spec.kind == "image"
    assert ds.labels == tuple(fmnist.LABELS)
    assert ds.spec.mean == (0.2860,) and ds.spec.std == (0.3530,)  # the published statistics, not the toy data's
    assert ds.train.raw.dtype == torch.uint8 and ds.train.raw.shape == (15, 1, 28, 28)
    # The official test split in file order; train + validation are the training file, reshuffled.
    assert torch.equal(ds.test.raw[:, 0], torch.from_numpy(xte)) and torch.equal(ds.test.labels, torch.from_numpy(yte).long())
    assert _rows(torch.cat([ds.train.raw, ds.val.raw])[:, 0]) == _rows(torch.from_numpy(xtr))
    x = ds.val.inputs(slice(0, 2))
    assert x.dtype == torch.float32 and x.shape == (2, 1, 28, 28)
    assert torch.allclose(x, (ds.val.raw[:2].float() / 255 - 0.2860) / 0.3530)


def test_fashion_mnist_missing_files_say_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.setattr(fmnist, "DEBIAN_DIR", tmp_path / "no-debian")

    def no_network(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr("torchvision.datasets.mnist.MNIST.download", no_network)
    with pytest.raises(DatasetError, match=r"FashionMNIST/raw"):
        load_dataset(DataConfig(root=str(tmp_path / "empty"), val_size=5))


def test_a_data_root_that_does_not_exist_is_an_error_not_a_copy(tmp_path):
    typo = tmp_path / "fashon"
    with pytest.raises(DatasetError, match=r"data.root .*fashon.*: no such folder.*leave data.root out"):
        load_dataset(DataConfig(root=str(typo), val_size=5))
    assert not typo.exists()


# ---- torchvision by class name ----

def test_torchvision_mnist_by_name_takes_the_class_labels(tmp_path):
    from torchvision.datasets import MNIST

    (xtr, _), (xte, yte) = _idx_dataset(tmp_path / "MNIST" / "raw", 16, 6, h=12, w=10)
    ds = load_dataset(DataConfig(source="torchvision", name="MNIST", root=str(tmp_path), val_size=4))
    assert ds.labels == tuple(MNIST.classes) and ds.spec.num_classes == 10
    assert ds.spec.shape == (1, 12, 10) and (len(ds.train), len(ds.val), len(ds.test)) == (12, 4, 6)
    assert torch.equal(ds.test.raw[:, 0], torch.from_numpy(xte)) and torch.equal(ds.test.labels, torch.from_numpy(yte).long())
    assert ds.spec.source == "torchvision MNIST"
    # Computed on the training split, as the recipe gave none: close to uniform noise's 0.5 / 0.29.
    assert abs(ds.spec.mean[0] - 0.5) < 0.05 and abs(ds.spec.std[0] - 0.29) < 0.03

    rgb = load_dataset(DataConfig(source="torchvision", name="MNIST", root=str(tmp_path), val_size=4,
                                  image_size=8, channels=3))
    assert rgb.spec.shape == (3, 8, 8) and rgb.test.raw.shape == (6, 3, 8, 8)
    assert len(rgb.spec.mean) == 3
    # Grey to RGB: three equal channels, the 12x10 image resized to 8x8 as predict would.
    want = np.asarray(Image.fromarray(xte[0], "L").convert("RGB").resize((8, 8), Image.BILINEAR)).transpose(2, 0, 1)
    assert np.array_equal(rgb.test.raw[0].numpy(), want)


def test_torchvision_unknown_name_or_missing_files_are_dataset_errors(tmp_path):
    with pytest.raises(DatasetError, match="'NoSuchSet'.*no such dataset"):
        load_dataset(DataConfig(source="torchvision", name="NoSuchSet", root=str(tmp_path)))
    with pytest.raises(DatasetError, match="MNIST not found under .*data.download is false"):
        load_dataset(DataConfig(source="torchvision", name="MNIST", root=str(tmp_path / "nothing")))


# ---- folder ----

CLASSES = ("cat", "dog", "emu")


def _tree(root: Path, per_class: int = 5, size=(12, 10), seed: int = 0, classes=CLASSES) -> dict[str, list[Path]]:
    """RGB PNGs, ``size`` = (width, height), one sub-folder per class."""
    rng = np.random.default_rng(seed)
    files = {}
    for c in classes:
        (root / c).mkdir(parents=True)
        files[c] = []
        for i in range(per_class):
            p = root / c / f"{i}.png"
            Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB").save(p)
            files[c].append(p)
    return files


def test_folder_one_tree_is_split_by_seed(tmp_path):
    _tree(tmp_path / "all", per_class=5)
    cfg = dict(source="folder", root=str(tmp_path / "all"), val_size=3, test_fraction=0.2)
    a, b = load_dataset(DataConfig(**cfg)), load_dataset(DataConfig(**cfg))
    assert (len(a.train), len(a.val), len(a.test)) == (9, 3, 3)
    assert a.spec.shape == (3, 10, 12) and a.labels == CLASSES and a.train.raw.dtype == torch.uint8
    assert a.fingerprint == b.fingerprint
    assert load_dataset(DataConfig(**cfg, split_seed=1)).fingerprint != a.fingerprint
    # Nothing lost or repeated between the three splits.
    every = torch.cat([a.train.raw, a.val.raw, a.test.raw])
    assert len(_rows(every)) == 15
    assert len(a.spec.mean) == 3 and all(abs(m - 0.5) < 0.05 for m in a.spec.mean)


def test_folder_separate_trees_with_size_and_channel_conversion(tmp_path):
    files = {}
    for split, n in (("train", 4), ("val", 2), ("test", 2)):
        files[split] = _tree(tmp_path / split, per_class=n, seed=len(files))
    cfg = DataConfig(source="folder", train_dir=str(tmp_path / "train"), val_dir=str(tmp_path / "val"),
                     test_dir=str(tmp_path / "test"), image_size=8, channels=1)
    ds = load_dataset(cfg)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (12, 6, 6)
    assert ds.spec.shape == (1, 8, 8) and ds.test.raw.shape == (6, 1, 8, 8) and ds.labels == CLASSES
    # ImageFolder order (class, then file name); each image converted to L and resized as predict would.
    assert ds.test.labels.tolist() == [0, 0, 1, 1, 2, 2]
    with Image.open(files["test"]["dog"][1]) as img:
        want = np.asarray(img.convert("L").resize((8, 8), Image.BILINEAR))
    assert np.array_equal(ds.test.raw[3, 0].numpy(), want)
    assert len(ds.spec.mean) == 1


def test_folder_resize_and_crop_is_applied_once(tmp_path):
    from compress.spec import InputSpec

    files = _tree(tmp_path / "all", per_class=3)
    ds = load_dataset(DataConfig(source="folder", root=str(tmp_path / "all"), val_size=2, image_size=8, resize=10))
    spec = InputSpec("image", (3, 8, 8), CLASSES, (0.0,), (1.0,), 255.0, 10)
    want = set()
    for paths in files.values():
        for p in paths:
            with Image.open(p) as img:
                want.add(spec.prepare_image(img).tobytes())
    assert _rows(torch.cat([ds.train.raw, ds.val.raw, ds.test.raw])) == want


def test_folder_trees_with_different_classes_are_refused(tmp_path):
    _tree(tmp_path / "train", per_class=2)
    _tree(tmp_path / "test", per_class=2, classes=("cat", "dog"))
    with pytest.raises(DatasetError, match=r"classes \['cat', 'dog'\] differ .*\['cat', 'dog', 'emu'\]"):
        load_dataset(DataConfig(source="folder", train_dir=str(tmp_path / "train"), test_dir=str(tmp_path / "test")))


@pytest.mark.parametrize("name", ["x.png", "0.png"])  # 0.png: the first image, which also sets the channels
def test_folder_unreadable_image_is_named(tmp_path, name):
    _tree(tmp_path / "all", per_class=3)
    (tmp_path / "all" / "cat" / name).write_text("not an image")
    with pytest.raises(DatasetError, match=rf"cat/{name}: not a readable image"):
        load_dataset(DataConfig(source="folder", root=str(tmp_path / "all"), val_size=2))


def test_folder_missing_tree_is_named(tmp_path):
    with pytest.raises(DatasetError, match="no-tree: no such folder"):
        load_dataset(DataConfig(source="folder", root=str(tmp_path / "no-tree")))


# ---- arrays ----

def _images(n: int, seed: int = 0, h: int = 6, w: int = 5, c: int | None = None) -> np.ndarray:
    shape = (n, h, w) if c is None else (n, c, h, w)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _npz(path: Path, **arrays) -> str:
    np.savez(path, **arrays)
    return str(path)


@pytest.mark.parametrize("layout", ["NHW", "NHWC", "NCHW"])
@pytest.mark.parametrize("dtype", ["uint8", "float01"])
def test_arrays_image_layouts(tmp_path, layout, dtype):
    c = 1 if layout == "NHW" else 3
    nchw = {s: _images(n, seed, c=c) for s, n, seed in (("train", 20, 0), ("test", 6, 1))}  # N x C x 6 x 5

    def as_given(x):
        x = x[:, 0] if layout == "NHW" else x.transpose(0, 2, 3, 1) if layout == "NHWC" else x
        return x if dtype == "uint8" else x.astype(np.float32) / 255

    y = {"train": np.arange(20) % 3, "test": np.arange(6) % 3}
    path = _npz(tmp_path / "d.npz", x_train=as_given(nchw["train"]), y_train=y["train"],
                x_test=as_given(nchw["test"]), y_test=y["test"])
    ds = load_dataset(DataConfig(source="arrays", path=path, val_size=5))
    assert ds.spec.kind == "image" and ds.spec.shape == (c, 6, 5) and ds.labels == ("0", "1", "2")
    assert (len(ds.train), len(ds.val), len(ds.test)) == (15, 5, 6)
    assert ds.test.raw.dtype == torch.uint8 and np.array_equal(ds.test.raw.numpy(), nchw["test"])
    assert _rows(torch.cat([ds.train.raw, ds.val.raw])) == _rows(torch.from_numpy(nchw["train"]))
    assert ds.train.inputs().shape == (15, c, 6, 5)


def test_arrays_given_validation_split_and_label_names(tmp_path):
    x = _images(30, c=3)
    path = _npz(tmp_path / "d.npz", x_train=x[:20], y_train=np.arange(20) % 2, x_val=x[20:24],
                y_val=np.array([0, 1, 1, 0]), x_test=x[24:], y_test=np.arange(6) % 2, labels=np.array(["no", "yes"]))
    ds = load_dataset(DataConfig(source="arrays", path=path))  # val_size is not used: the data have one
    assert (len(ds.train), len(ds.val), len(ds.test)) == (20, 4, 6)
    assert np.array_equal(ds.train.raw.numpy(), x[:20]) and np.array_equal(ds.val.raw.numpy(), x[20:24])
    assert ds.val.labels.tolist() == [0, 1, 1, 0] and ds.labels == ("no", "yes")


def test_arrays_folder_of_npy_files(tmp_path):
    x = _images(12)
    for k, v in dict(x_train=x[:8], y_train=np.arange(8) % 2, x_test=x[8:], y_test=np.arange(4) % 2).items():
        np.save(tmp_path / f"{k}.npy", v)
    ds = load_dataset(DataConfig(source="arrays", path=str(tmp_path), val_size=2))
    assert ds.spec.shape == (1, 6, 5) and np.array_equal(ds.test.raw[:, 0].numpy(), x[8:])


def test_arrays_feature_vectors_are_standardised_on_the_training_split(tmp_path):
    rng = np.random.default_rng(0)
    scale, offset = np.array([1.0, 10.0, 0.1, 100.0, 3.0]), np.array([0.0, -50.0, 3.0, 1000.0, 7.0])
    x = (rng.normal(size=(60, 5)) * scale + offset).astype(np.float32)
    path = _npz(tmp_path / "v.npz", x_train=x[:50], y_train=np.arange(50) % 4, x_test=x[50:], y_test=np.arange(10) % 4)
    ds = load_dataset(DataConfig(source="arrays", path=path, val_size=10))
    assert ds.spec.kind == "vector" and ds.spec.shape == (5,) and ds.spec.divide == 1.0
    assert ds.train.raw.dtype == torch.float32 and ds.train.raw.shape == (40, 5)
    z = ds.train.inputs()
    assert z.shape == (40, 5)
    assert torch.allclose(z.mean(0), torch.zeros(5), atol=1e-4)
    assert torch.allclose(z.std(0), torch.ones(5), atol=1e-4)
    assert np.allclose(ds.spec.std, ds.train.raw.std(0).numpy(), rtol=1e-5)


def test_arrays_missing_keys_are_listed(tmp_path):
    path = _npz(tmp_path / "d.npz", x_train=_images(4), y_test=np.zeros(2, dtype=int))
    with pytest.raises(DatasetError, match="missing y_train, x_test; it has x_train, y_test"):
        load_dataset(DataConfig(source="arrays", path=path))
    with pytest.raises(DatasetError, match="no such file or folder"):
        load_dataset(DataConfig(source="arrays", path=str(tmp_path / "nope.npz")))


def test_arrays_float_pixels_out_of_range_are_refused(tmp_path):
    x = np.random.default_rng(0).uniform(-1, 1, (10, 6, 5)).astype(np.float32)
    path = _npz(tmp_path / "d.npz", x_train=x, y_train=np.arange(10) % 2, x_test=x[:2], y_test=np.arange(2))
    with pytest.raises(DatasetError, match=r"x_train|\(train\).*float pixels range -"):
        load_dataset(DataConfig(source="arrays", path=path, val_size=2))


def test_arrays_resize_and_crop_match_predict(tmp_path):
    """Images already at image_size, with a larger resize: training must see the same zoom-and-crop that
    ``InputSpec.prepare_image`` (predict) applies to a served image of that size."""
    from compress.spec import InputSpec

    x = _images(10, h=8, w=8, c=3)
    path = _npz(tmp_path / "d.npz", x_train=x[:8], y_train=np.arange(8) % 2, x_test=x[8:], y_test=np.arange(2))
    ds = load_dataset(DataConfig(source="arrays", path=path, val_size=2, image_size=8, resize=12))
    spec = InputSpec("image", (3, 8, 8), ("0", "1"), (0.0,), (1.0,), 255.0, 12)
    want = spec.prepare_image(Image.fromarray(x[8].transpose(1, 2, 0)))
    assert np.array_equal(ds.test.raw[0].numpy(), want)


# ---- import ----

FACTORY = '''
import numpy as np
from PIL import Image


def arrays(n=20, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, 8, 8), dtype=np.uint8)
    y = np.arange(n) % 3
    return {"train": (x, y), "val": None, "test": (x[:6], y[:6]), "labels": ["a", "b", "c"]}


class Pictures:
    """A torch-style map dataset of (PIL image, label)."""

    def __init__(self, n, seed):
        rng = np.random.default_rng(seed)
        self.x = rng.integers(0, 256, (n, 7, 9, 3), dtype=np.uint8)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return Image.fromarray(self.x[i], "RGB"), i % 2


def pictures():
    return Pictures(10, 0), Pictures(4, 1), Pictures(4, 2)


def broken():
    raise ValueError("the bucket is empty")
'''


@pytest.fixture
def factory_module(tmp_path, monkeypatch):
    (tmp_path / "tiny_data_factory.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    return importlib.import_module("tiny_data_factory")


def test_import_factory_returning_arrays(factory_module):
    ds = load_dataset(DataConfig(source="import", factory="tiny_data_factory:arrays", kwargs={"n": 24}, val_size=4))
    assert (len(ds.train), len(ds.val), len(ds.test)) == (20, 4, 6)
    assert ds.labels == ("a", "b", "c") and ds.spec.shape == (1, 8, 8) and ds.spec.source == "tiny_data_factory:arrays"
    x, _ = factory_module.arrays(24)["train"]
    assert np.array_equal(ds.test.raw[:, 0].numpy(), x[:6])


def test_import_factory_returning_pil_datasets(factory_module):
    ds = load_dataset(DataConfig(source="import", factory="tiny_data_factory:pictures"))
    assert (len(ds.train), len(ds.val), len(ds.test)) == (10, 4, 4)
    assert ds.spec.shape == (3, 7, 9) and ds.labels == ("0", "1")
    assert np.array_equal(ds.val.raw.numpy(), factory_module.Pictures(4, 1).x.transpose(0, 3, 1, 2))
    assert ds.train.labels.tolist() == [i % 2 for i in range(10)]


def test_import_factory_errors_name_the_module_or_the_factory(factory_module):
    with pytest.raises(CompressError, match="could not import module 'no_such_data_module'"):
        load_dataset(DataConfig(source="import", factory="no_such_data_module:make"))
    with pytest.raises(DatasetError, match="tiny_data_factory:broken raised ValueError: the bucket is empty"):
        load_dataset(DataConfig(source="import", factory="tiny_data_factory:broken"))


# ---- general: the split, subsets, labels, recipe validation ----

def _labelled_npz(tmp_path: Path, n_train: int = 40, y_test=None, **extra) -> str:
    x = _images(n_train + 6)
    y_test = np.arange(6) % 4 if y_test is None else np.asarray(y_test)
    return _npz(tmp_path / "g.npz", x_train=x[:n_train], y_train=np.arange(n_train) % 4, x_test=x[n_train:],
                y_test=y_test, **extra)


def test_split_is_fixed_by_split_seed(tmp_path):
    path = _labelled_npz(tmp_path)
    a = load_dataset(DataConfig(source="arrays", path=path, val_size=8))
    b = load_dataset(DataConfig(source="arrays", path=path, val_size=8))
    c = load_dataset(DataConfig(source="arrays", path=path, val_size=8, split_seed=1))
    assert a.fingerprint == b.fingerprint and torch.equal(a.val.raw, b.val.raw)
    assert c.fingerprint != a.fingerprint and not torch.equal(a.val.raw, c.val.raw)
    assert torch.equal(a.test.raw, c.test.raw)  # the test split never moves


def test_val_fraction_and_subsets(tmp_path):
    path = _labelled_npz(tmp_path)
    ds = load_dataset(DataConfig(source="arrays", path=path, val_fraction=0.25))
    assert (len(ds.train), len(ds.val), len(ds.test)) == (30, 10, 6)
    sub = load_dataset(DataConfig(source="arrays", path=path, val_fraction=0.25, train_subset=5, val_subset=3,
                                  test_subset=2))
    assert (len(sub.train), len(sub.val), len(sub.test)) == (5, 3, 2)
    assert torch.equal(sub.train.raw, ds.train.raw[:5]) and torch.equal(sub.test.labels, ds.test.labels[:2])
    with pytest.raises(DatasetError, match="data.val_size = 40, but the training set has only 40 samples"):
        load_dataset(DataConfig(source="arrays", path=path, val_size=40))


def test_labels_out_of_range_are_refused(tmp_path):
    with pytest.raises(DatasetError, match=r"test split has label 7, outside 0..3 \(4 classes\)"):
        load_dataset(DataConfig(source="arrays", path=_labelled_npz(tmp_path, y_test=[0, 1, 2, 3, 7, 0]), val_size=4))
    with pytest.raises(DatasetError, match="test split has label -1"):
        load_dataset(DataConfig(source="arrays", path=_labelled_npz(tmp_path, y_test=[0, 1, 2, 3, -1, 0]), val_size=4))


def test_a_label_past_the_classes_and_a_single_class_are_named(tmp_path):
    """Label 12 in what is a 4-class training set: classes with no sample are named, not a teacher mismatch later."""
    x = _images(31)
    path = _npz(tmp_path / "g.npz", x_train=x[:25], y_train=np.array([0, 1, 2, 3] * 5 + [12] * 5), x_test=x[25:],
                y_test=np.arange(6) % 4)
    with pytest.raises(DatasetError, match=r"go up to 12 \(13 classes\), but class\(es\) 4, 5, 6, 7, 8, 9, 10, 11 "
                                           "have no training sample"):
        load_dataset(DataConfig(source="arrays", path=path, val_size=4))
    _tree(tmp_path / "one", classes=("cat",))
    with pytest.raises(DatasetError, match=r"one class \(cat\): a classifier needs two"):
        load_dataset(DataConfig(source="folder", root=str(tmp_path / "one"), val_size=1))


def test_label_names_fewer_than_classes_are_refused(tmp_path):
    path = _labelled_npz(tmp_path)
    with pytest.raises(DatasetError, match=r"data.labels names 2 classes, but the training labels go up to 3 \(4 classes\)"):
        load_dataset(DataConfig(source="arrays", path=path, val_size=4, labels=["a", "b"]))
    ok = load_dataset(DataConfig(source="arrays", path=path, val_size=4, labels=list("abcde")))  # a 5th, unseen class
    assert ok.labels == tuple("abcde") and ok.spec.num_classes == 5


@pytest.mark.parametrize("data,message", [
    ({"source": "torchvision"}, "source 'torchvision' needs data.name"),
    ({"source": "arrays"}, "source 'arrays' needs data.path"),
    ({"source": "folder", "train_dir": "t"}, "source 'folder' with train_dir needs test_dir too"),
    ({"source": "import", "factory": "nocolon"}, "expected package.module:function"),
])
def test_recipe_validation_names_the_missing_field(data, message):
    with pytest.raises(RecipeError, match=message):
        recipe_from_dict({"name": "t", "data": data})


def test_the_demo_dataset_is_unchanged():
    """The demo's committed numbers depend on this exact split of the real Fashion-MNIST."""
    have_debian = all((fmnist.DEBIAN_DIR / f"{f}.gz").is_file() for f in fmnist.FILES)
    have_cache = all((fmnist.CACHE_DIR / "FashionMNIST" / "raw" / f).is_file() for f in fmnist.FILES)
    if not (have_debian or have_cache):
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    ds = load_dataset(DataConfig())
    assert ds.fingerprint == "ae1f136708867d504cae5d550e37e617e6560a2bf034c4668efbb7e73e5a9fd3"
    assert ds.spec.shape == (1, 28, 28) and ds.spec.mean == (0.2860,) and ds.spec.std == (0.3530,)


@pytest.mark.parametrize("workers", [0, 1])
def test_a_streamed_folder_tree_gives_what_the_in_memory_one_gives(tmp_path, workers):
    """Streaming (a tree larger than memory) reads the same pixels, through DataLoader workers."""
    import os

    from compress.data import batches

    files = _tree(tmp_path / "all", per_class=6, size=(12, 10))
    cfg = dict(source="folder", root=str(tmp_path / "all"), image_size=8, resize=9, val_size=4)
    mem = load_dataset(DataConfig(**cfg, stream=False))
    streamed = load_dataset(DataConfig(**cfg, stream=True, workers=workers))
    assert streamed.train.streamed and not mem.train.streamed
    for a, b in ((mem.train, streamed.train), (mem.val, streamed.val), (mem.test, streamed.test)):
        assert torch.equal(a.labels, b.labels) and torch.equal(a.inputs(), b.inputs())
    got = [(i, x) for i, x, _ in batches(streamed.train, 5, torch.Generator().manual_seed(3))]
    want = [(i, x) for i, x, _ in batches(mem.train, 5, torch.Generator().manual_seed(3))]
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(got, want)) and len(got) == len(want)
    assert streamed.spec.mean == pytest.approx(mem.spec.mean, abs=1e-5)
    # The fingerprint reads no pixel: names, sizes and times. A changed file changes it.
    again = load_dataset(DataConfig(**cfg, stream=True, workers=workers))
    assert again.fingerprint == streamed.fingerprint
    first = files[CLASSES[0]][0]
    os.utime(first, ns=(first.stat().st_atime_ns, first.stat().st_mtime_ns + 10**9))
    assert load_dataset(DataConfig(**cfg, stream=True)).fingerprint != streamed.fingerprint


def test_a_tree_larger_than_the_memory_bound_is_streamed_and_trains(tmp_path):
    from compress.models import build_model
    from compress.recipe import TrainConfig
    from compress.train import accuracy, train_

    _tree(tmp_path / "all", per_class=6, size=(12, 10))
    data = load_dataset(DataConfig(source="folder", root=str(tmp_path / "all"), val_size=4, max_memory_mb=1,
                                   workers=0))
    assert not data.train.streamed  # 24 small images are far below 1 MB
    data = load_dataset(DataConfig(source="folder", root=str(tmp_path / "all"), val_size=4, stream=True, workers=0))
    model = build_model("cnn", data.spec, {"width": 4, "depth": 1})
    history = train_(model, data.train, TrainConfig(epochs=1, batch_size=8, device="cpu"), val=data.val)
    assert len(history) == 1 and 0 <= accuracy(model, data.test) <= 1


def test_inputs_shared_between_splits_are_reported(tmp_path):
    """A validation split that repeats training inputs makes validation accuracy (which chooses the models)
    meaningless: named, with how many."""
    from compress.data import split_overlaps

    x = _images(30)
    path = _npz(tmp_path / "o.npz", x_train=x[:20], y_train=np.arange(20) % 4, x_val=x[:4], y_val=np.arange(4),
                x_test=x[20:], y_test=np.arange(10) % 4)
    warnings = split_overlaps(load_dataset(DataConfig(source="arrays", path=path)))
    assert warnings == ["WARNING: 4 validation input(s) also in the training split (identical): validation accuracy "
                        "is not held out on them, and it chooses the models; remove the duplicates"]
    clean = _npz(tmp_path / "c.npz", x_train=x[:20], y_train=np.arange(20) % 4, x_test=x[20:], y_test=np.arange(10) % 4)
    assert split_overlaps(load_dataset(DataConfig(source="arrays", path=clean, val_size=4))) == []
