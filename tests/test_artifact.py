import json
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest

from compress.errors import BundleError
from compress.handoff import load_manifest, predict, verify

VERIFY_WITHOUT_TORCH = """
import sys
# A serving environment: onnxruntime and numpy only. Any import of these now raises ImportError.
for name in ["torch", "torchvision", "torch_pruning", "pydantic", "yaml", "optuna", "PIL", "matplotlib", "plotly"]:
    sys.modules[name] = None
from compress.cli import main
code = main(["verify", sys.argv[1], "--latency-seconds", "0.3"])
assert "torch" not in sys.modules or sys.modules["torch"] is None
sys.exit(code)
"""


@pytest.fixture()
def bundle(tiny_study, tmp_path):
    recipe, _ = tiny_study
    dst = tmp_path / "artifact"
    shutil.copytree(recipe.out_path / "artifact", dst)
    return dst


def test_bundle_has_everything_a_serving_team_needs(bundle):
    m = load_manifest(bundle)
    for rel in ["model.onnx", "MODEL_CARD.md", "samples/inputs.npy", "samples/outputs.npy", "samples/image_0.png",
                "samples/labels.npy",
                f"triton/{m['triton']['model_name']}/config.pbtxt", f"triton/{m['triton']['model_name']}/1/model.onnx"]:
        assert (bundle / rel).is_file(), rel
        assert rel in m["files"]
    for key in ["labels", "input", "output", "preprocessing", "metrics", "latency", "machine", "service_level",
                "recipe", "trial", "lineage", "packages"]:
        assert key in m, key
    assert set(m["lineage"]) >= {"teacher_sha256", "dataset_fingerprint", "calibration_fingerprint", "seed"}
    # Fashion-MNIST's test split stays in Debian's package, never in results/.
    assert m["format"] == "compress-bundle/3" and "samples/test.npz" not in m["files"] and not m["test_split"]["bundled"]
    assert m["input"]["shape"] == ["batch", 1, 28, 28] and m["preprocessing"]["source"].startswith("Fashion-MNIST")
    props = {p.key: p.value for p in onnx.load(str(bundle / "model.onnx")).metadata_props}
    assert json.loads(props["compress.labels"]) == m["labels"] and "compress.test_accuracy" in props
    card = (bundle / "MODEL_CARD.md").read_text()
    assert "compress verify" in card and "Preprocessing" in card and m["labels"][9] in card
    # The card names the int8 format the chosen candidate was quantized in (tiny_search: QDQ, per-channel).
    from compress.recipe import QuantizeConfig
    from compress.techniques.quantize import reduce_range

    seven_bit = ", 7-bit weights (reduce_range: no saturation on CPUs without VNNI)" if reduce_range(QuantizeConfig()) else ""
    assert m["format_note"] == ("int8, QDQ static quantization, per-channel weights" + seven_bit
                                if m["recipe"]["quantize"]["enabled"] else "fp32")


def test_bundle_verifies(bundle):
    assert verify(bundle, latency_seconds=0.3) == []


def test_one_flipped_byte_fails_verification_naming_the_file(bundle):
    path = bundle / "model.onnx"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))
    problems = verify(bundle, latency_seconds=0.3)
    assert problems and problems[0].startswith("model.onnx: sha256 mismatch")
    proc = subprocess.run([sys.executable, "-m", "compress", "verify", str(bundle)], capture_output=True, text=True)
    assert proc.returncode == 1 and "FAIL model.onnx" in proc.stdout


def test_verify_runs_without_torch(bundle):
    proc = subprocess.run([sys.executable, "-c", VERIFY_WITHOUT_TORCH, str(bundle)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "VERIFIED" in proc.stdout and "Fashion-MNIST test images" in proc.stdout  # the first test_size of them


def test_predict_images_and_arrays(bundle):
    from PIL import Image

    out = predict(bundle, [str(bundle / "samples" / "image_0.png"), str(bundle / "samples" / "inputs.npy")])
    assert len(out) == 1 + 8
    recorded = np.load(bundle / "samples" / "outputs.npy")
    m = load_manifest(bundle)
    assert [r["label"] for r in out[1:]] == [m["labels"][i] for i in recorded.argmax(1)]
    assert out[0]["label"] == out[1]["label"]  # the PNG is the same image as the first array row
    assert abs(sum(out[0]["probabilities"].values()) - 1) < 1e-4
    # Another mode and size: converted to grayscale and resized to 28x28, as the spec records.
    with Image.open(bundle / "samples" / "image_0.png") as img:
        img.convert("RGB").resize((56, 56), Image.NEAREST).save(bundle / "rgb.png")
    assert predict(bundle, [str(bundle / "rgb.png")])[0]["label"] == out[0]["label"]
    (bundle / "notes.png").write_text("not an image")
    with pytest.raises(BundleError, match="notes.png: not an image"):
        predict(bundle, [str(bundle / "notes.png")])


def test_wrong_shape_input_fails_clearly(bundle, tmp_path):
    np.save(tmp_path / "bad.npy", np.zeros((32, 32), np.uint8))
    proc = subprocess.run([sys.executable, "-m", "compress", "predict", str(bundle), str(tmp_path / "bad.npy")],
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert "shape (32, 32)" in proc.stderr and "does not fit" in proc.stderr


def test_triton_config_parses_and_matches_the_model(bundle):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    m = load_manifest(bundle)
    name = m["triton"]["model_name"]
    cfg = text_format.Parse((bundle / "triton" / name / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert cfg.name == name and cfg.platform == "onnxruntime_onnx"
    graph = onnx.load(str(bundle / "triton" / name / "1" / "model.onnx")).graph
    in_dims = [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim[1:]]
    out_dims = [d.dim_value for d in graph.output[0].type.tensor_type.shape.dim[1:]]
    assert cfg.input[0].name == graph.input[0].name and list(cfg.input[0].dims) == in_dims
    assert cfg.output[0].name == graph.output[0].name and list(cfg.output[0].dims) == out_dims
    assert cfg.max_batch_size >= max(cfg.dynamic_batching.preferred_batch_size or [1])
