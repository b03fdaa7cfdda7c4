"""Write Fashion-MNIST out as an image folder tree of RGB PNGs at 36x36: real data for the folder path.

    python -m examples.fashion_folder [--out .data/fashion_folder] [--per-class-train 1200] [--per-class-test 200]

The tree is ``<out>/train/<class>/<n>.png`` and ``<out>/test/<class>/<n>.png``, read back by
``recipes/fashion_folder*.yaml`` (``data.source: folder``) as any user's photos would be: RGB, at a size
other than the model's (resized and centre-cropped to 32x32 by the recorded input specification).
A class-balanced subset keeps the example's teacher and search to minutes on 2 cores.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

SIZE = 36


def write_tree(out: Path, per_class_train: int, per_class_test: int) -> dict:
    from PIL import Image

    from compress.data.fashion_mnist import CACHE_DIR, LABELS, read_official

    train, test = read_official(CACHE_DIR)
    counts = {}
    for split, ds, per_class in (("train", train, per_class_train), ("test", test, per_class_test)):
        x, y = ds.data.numpy(), ds.targets.numpy()
        for label, name in enumerate(LABELS):
            folder = out / split / name.replace("/", "_")
            folder.mkdir(parents=True, exist_ok=True)
            for i, idx in enumerate(np.flatnonzero(y == label)[:per_class]):
                img = Image.fromarray(x[idx], mode="L").convert("RGB").resize((SIZE, SIZE), Image.BILINEAR)
                img.save(folder / f"{i:05d}.png")
        counts[split] = per_class * len(LABELS)
    return counts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=".data/fashion_folder")
    p.add_argument("--per-class-train", type=int, default=1200)
    p.add_argument("--per-class-test", type=int, default=200)
    a = p.parse_args()
    counts = write_tree(Path(a.out), a.per_class_train, a.per_class_test)
    print(f"wrote {counts['train']:,} training and {counts['test']:,} test images under {a.out}/")


if __name__ == "__main__":
    main()
