"""What the bundle's writer and its readers share: the format names, the input record a manifest holds,
the manifest's digest and the ONNX Runtime session. No torch."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from compress.errors import BundleError
from compress.spec import INPUT_NAME, InputSpec
from compress.measure.latency import make_session

FORMAT = "compress-bundle/3"
FORMAT_V1 = "compress-bundle/1"  # Fashion-MNIST only, no spec record, manifest not covered by a digest
FORMAT_V2 = "compress-bundle/2"  # the digest leaves out the file list
READABLE = (FORMAT_V1, FORMAT_V2, FORMAT)
# Fashion-MNIST's test set is in Debian's dataset-fashion-mnist (and torchvision's download), where verify
# finds it; it is never copied into a bundle, because bundles are committed to results/.
IDX_SOURCE = "Fashion-MNIST"


def bundle_spec(m: dict) -> InputSpec:
    """The input specification a manifest records."""
    try:
        if m["format"] == FORMAT_V1:  # the Fashion-MNIST demo: scalar statistics, no spec record
            pre = m["preprocessing"]
            return InputSpec("image", tuple(int(d) for d in m["input"]["shape"][1:]), tuple(m["labels"]),
                             (float(pre["mean"]),), (float(pre["std"]),), 255.0, None, "Fashion-MNIST (official split)",
                             ("shift", "hflip"))
        return InputSpec.from_dict(m["preprocessing"])
    except (KeyError, TypeError, ValueError) as err:
        raise BundleError(f"manifest.json: its input record (`preprocessing`) is unreadable ({type(err).__name__}: "
                          f"{err}); it was edited or not written by compress. Restore it from the original bundle"
                          ) from None


def model_files(m: dict) -> set[str]:
    """The bundle's copies of the model: ``model.onnx`` and, where the manifest names one, Triton's."""
    t = m.get("triton")
    name = t.get("model_name") if isinstance(t, dict) else None
    return {"model.onnx"} | ({f"triton/{name}/1/model.onnx"} if name else set())


def manifest_sha256(m: dict) -> str:
    """sha256 of the manifest's canonical JSON, file list included, less the hashes of the model's copies
    (the model's metadata holds this digest, so its own hash cannot be in it). Format 2: less the whole list."""
    files = m.get("files") if isinstance(m.get("files"), dict) else {}
    body = {k: v for k, v in m.items() if k != "files"} if m.get("format") == FORMAT_V2 else {
        **m, "files": {k: v for k, v in files.items() if k not in model_files(m)}}
    body = json.loads(json.dumps(body))  # as it reads back from disk
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def open_session(path: Path, threads: int = 1):
    return make_session(path, threads)


def batched_logits(sess, x: np.ndarray, batch: int = 500) -> np.ndarray:
    return np.concatenate([sess.run(None, {INPUT_NAME: x[i : i + batch]})[0] for i in range(0, len(x), batch)])
