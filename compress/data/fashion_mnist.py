"""The embedded default: Fashion-MNIST, read by torchvision from the IDX files of Debian's
``dataset-fashion-mnist`` package (or of torchvision's own download)."""

from __future__ import annotations

import shutil
from pathlib import Path

from compress.data.raw import RawData
from compress.errors import DatasetError
from compress.spec import InputSpec

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
CACHE_DIR = Path(".data")
FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
# Per-pixel statistics of the Fashion-MNIST training set; the model card repeats them for serving.
MEAN, STD = 0.2860, 0.3530
LABELS = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def _stage_raw(root: Path) -> None:
    """Give torchvision its ``<root>/FashionMNIST/raw/`` layout, extracting Debian's .gz files there."""
    from torchvision.datasets.utils import extract_archive

    raw = root / "FashionMNIST" / "raw"
    if all((raw / f).is_file() for f in FILES):
        return
    if not all((DEBIAN_DIR / f"{f}.gz").is_file() for f in FILES):
        return
    raw.mkdir(parents=True, exist_ok=True)
    for f in FILES:
        tmp = raw / f"{f}.gz"
        shutil.copyfile(DEBIAN_DIR / f"{f}.gz", tmp)
        extract_archive(str(tmp), str(raw), remove_finished=True)


def read_official(root: Path, stage: bool = True):
    """The official splits from ``root``; ``stage``: Debian's files are copied there first when it lacks them."""
    from torchvision.datasets import FashionMNIST

    if stage:
        _stage_raw(root)
    try:
        train = FashionMNIST(str(root), train=True, download=False)
        test = FashionMNIST(str(root), train=False, download=False)
    except RuntimeError:
        try:
            train = FashionMNIST(str(root), train=True, download=True)
            test = FashionMNIST(str(root), train=False, download=True)
        except Exception as err:  # noqa: BLE001 - any download failure gets the same advice
            raise DatasetError(
                f"Fashion-MNIST not found under {DEBIAN_DIR} or {root}, and torchvision could not download it "
                f"({type(err).__name__}: {err}).\nGet it one of two ways:\n"
                "  1. apt-get install dataset-fashion-mnist   (Debian; `make setup` does this when apt-get works)\n"
                f"  2. put the four IDX files (train/t10k images/labels) under {root}/FashionMNIST/raw/"
            ) from None
    return train, test


def load(cfg):
    root = Path(cfg.root) if cfg.root else CACHE_DIR
    if cfg.root and not root.is_dir():  # a typo is named, not filled with a copy of Debian's files
        raise DatasetError(
            f"data.root {cfg.root!r}: no such folder. For Fashion-MNIST it is the folder holding the four IDX files "
            f"under FashionMNIST/raw/; fix the path, or leave data.root out to read Debian's package "
            f"(apt-get install dataset-fashion-mnist)")
    train, test = read_official(root, stage=cfg.root is None)
    return RawData("image", (train.data.unsqueeze(1), train.targets), None, (test.data.unsqueeze(1), test.targets),
                   labels=list(LABELS), mean=(MEAN,), std=(STD,), description="Fashion-MNIST (official split)",
                   augment=("shift", "hflip"))


def _spec():
    return InputSpec("image", (1, 28, 28), tuple(LABELS), (MEAN,), (STD,), 255.0, None,
                     "Fashion-MNIST (official split)", ("shift", "hflip"))


SPEC = _spec()  # the demo's input specification, the same record load_dataset makes for it
