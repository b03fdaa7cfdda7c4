"""The input specification: what one model input is and how raw data becomes it.

A plain, numpy-only record (no torch), written with every output (``spec`` in metrics, summaries and the
bundle's manifest) and read back by training, calibration, export, pruning, latency, the handoff and the
torch-free ``predict`` / ``verify``: one source of truth for the shape, the layout, the preprocessing and
the labels, so a model is always fed at serving time exactly what it was trained on.

Two kinds of input:

- ``image``: raw pixels are uint8, C x H x W. An image file is converted to the recorded mode (``L`` or
  ``RGB``), resized (the shorter side to ``resize`` then a centre crop, or straight to H x W), divided by
  ``divide`` (255) and normalised per channel: ``x = (pixel / divide - mean[c]) / std[c]``.
- ``vector``: raw features are float32, D values; ``x = (v - mean[d]) / std[d]`` (standardisation).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

INPUT_NAME, OUTPUT_NAME = "input", "logits"
KINDS = ("image", "vector")
MODES = {1: "L", 3: "RGB"}  # channels -> PIL mode


@dataclass(frozen=True)
class InputSpec:
    kind: str  # "image" or "vector"
    shape: tuple[int, ...]  # one sample as the model takes it: (C, H, W) for images, (D,) for vectors
    labels: tuple[str, ...]  # class names in output-index order
    mean: tuple[float, ...]  # per channel (images) or per feature (vectors), after dividing by ``divide``
    std: tuple[float, ...]
    divide: float = 1.0  # raw values are divided by this first: 255 for uint8 pixels, 1 for features
    resize: int | None = None  # images: shorter side resized to this, then centre-cropped to H x W
    source: str = ""  # what the data was (for people): "Fashion-MNIST", "ImageFolder data/pets", ...
    augment: tuple[str, ...] = field(default_factory=tuple)  # augmentations the data allows: shift, hflip

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"input kind {self.kind!r}; expected one of {KINDS}")
        want = self.shape[0]
        if len(self.mean) not in (1, want) or len(self.std) not in (1, want):
            raise ValueError(f"mean/std need 1 or {want} values, got {len(self.mean)} and {len(self.std)}")
        if self.kind == "image" and (len(self.shape) != 3 or self.shape[0] not in MODES):
            raise ValueError(f"image shape {self.shape}: expected (channels, height, width) with 1 or 3 channels")
        if self.kind == "vector" and len(self.shape) != 1:
            raise ValueError(f"vector shape {self.shape}: expected (features,)")

    # ---- facts ----
    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def channels(self) -> int:
        return self.shape[0] if self.kind == "image" else 1

    @property
    def mode(self) -> str | None:
        return MODES[self.shape[0]] if self.kind == "image" else None

    @property
    def raw_dtype(self) -> str:
        return "uint8" if self.kind == "image" else "float32"

    def batch_shape(self, batch: int | str = 1) -> tuple:
        return (batch, *self.shape)

    def layout(self) -> str:
        return "NCHW" if self.kind == "image" else "ND"

    # ---- transforms (numpy; the torch side in compress.data applies the same arithmetic) ----
    def _stats(self) -> tuple[np.ndarray, np.ndarray]:
        shape = (-1, 1, 1) if self.kind == "image" else (-1,)
        return (np.asarray(self.mean, dtype=np.float32).reshape(shape),
                np.asarray(self.std, dtype=np.float32).reshape(shape))

    def normalize(self, raw: np.ndarray) -> np.ndarray:
        """Raw samples (N x *shape, uint8 pixels or float32 features) -> float32 model inputs."""
        mean, std = self._stats()
        return ((raw.astype(np.float32) / np.float32(self.divide)) - mean) / std

    def prepare_image(self, img) -> np.ndarray:
        """A PIL image of any size and mode -> uint8 C x H x W pixels as the model's data were prepared."""
        from PIL import Image

        c, h, w = self.shape
        img = img.convert(self.mode)
        if self.resize:
            s = self.resize / min(img.size)
            img = img.resize((max(w, round(img.size[0] * s)), max(h, round(img.size[1] * s))), Image.BILINEAR)
        if img.size != (w, h):
            if self.resize:  # centre crop
                left, top = (img.size[0] - w) // 2, (img.size[1] - h) // 2
                img = img.crop((left, top, left + w, top + h))
            else:
                img = img.resize((w, h), Image.BILINEAR)
        arr = np.asarray(img, dtype=np.uint8)
        return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1).copy()

    # ---- records ----
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(shape=list(self.shape), labels=list(self.labels), mean=list(self.mean), std=list(self.std),
                 augment=list(self.augment), layout=self.layout(), raw_dtype=self.raw_dtype,
                 input_name=INPUT_NAME, output_name=OUTPUT_NAME)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "InputSpec":
        return cls(kind=d["kind"], shape=tuple(int(v) for v in d["shape"]), labels=tuple(d["labels"]),
                   mean=tuple(float(v) for v in d["mean"]), std=tuple(float(v) for v in d["std"]),
                   divide=float(d.get("divide", 1.0)), resize=d.get("resize"), source=d.get("source", ""),
                   augment=tuple(d.get("augment", ())))

    def describe(self) -> str:
        """One sentence for people (model card, inspect)."""
        if self.kind == "vector":
            if all(m == 0 for m in self.mean) and all(s == 1 for s in self.std):
                return f"{self.shape[0]} float features per sample, used as they are (not standardised)"
            return (f"{self.shape[0]} float features per sample, standardised: x = (v - mean) / std, with the "
                    f"{'per-feature' if len(self.mean) > 1 else 'one'} mean and std recorded under preprocessing")
        c, h, w = self.shape
        size = (f"resized so the shorter side is {self.resize} px, centre-cropped to {w}x{h}" if self.resize
                else f"{w}x{h} px (other sizes are resized to it)")
        mean = ", ".join(f"{v:.4f}" for v in self.mean)
        std = ", ".join(f"{v:.4f}" for v in self.std)
        return (f"{'grayscale' if c == 1 else 'RGB'} images ({self.mode}), {size}, uint8 pixels divided by "
                f"{self.divide:g}, then x = (pixel / {self.divide:g} - mean) / std per channel, mean [{mean}], "
                f"std [{std}]")
