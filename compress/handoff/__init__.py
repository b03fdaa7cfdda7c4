"""The handoff bundle (``results/<study>/artifact/``), and the torch-free ``verify`` and ``predict``.

A serving team needs nothing but this folder: the ONNX model (its key facts also in ONNX metadata),
``manifest.json`` for machines, ``MODEL_CARD.md`` for people, sample inputs with the outputs the model
gave, the test split when it is small enough to travel, and a Triton model-repository layout.
``manifest.json`` lists the sha256 of every other file; the model's metadata holds the sha256 of the
manifest itself, file list included (``compress.manifest_sha256``), so an edit to any file is caught.

Everything about the input (shape, layout, preprocessing, labels) comes from the ``InputSpec`` recorded
under ``preprocessing``; a ``compress-bundle/1`` bundle, which has no such record, is read as the
Fashion-MNIST spec (bundles are shipped, so their format keeps versions).

``bundle`` writes it (called by the study), ``verify`` and ``predict`` read it, ``common`` holds what both
sides share. This package imports neither torch nor the training code: ``compress verify`` and
``compress predict`` run where only onnxruntime and numpy are installed (Pillow too, for predict on image
files).

The functions ``verify`` and ``predict`` re-exported here shadow the submodules of the same name as
attributes of this package; reach a module's own names with ``from compress.handoff.verify import ...``.
"""

from compress.handoff.bundle import preferred_batch_sizes, spec_fields, triton_config, write_bundle
from compress.handoff.common import FORMAT, FORMAT_V1, READABLE, bundle_spec, manifest_sha256
from compress.handoff.predict import load_inputs, predict
from compress.handoff.verify import EDITED, load_manifest, manifest_problems, verify

__all__ = ["EDITED", "FORMAT", "FORMAT_V1", "READABLE", "bundle_spec", "load_inputs", "load_manifest",
           "manifest_problems", "manifest_sha256", "predict", "preferred_batch_sizes", "spec_fields",
           "triton_config", "verify", "write_bundle"]
