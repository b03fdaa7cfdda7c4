#!/bin/bash
# The CUDA paths, checked on a lent GPU machine (the workplace's device tool: one bare machine, its own
# python3 with torch/onnx/onnxruntime, no network, at most 64 MiB of working tree carried).
#
#   bash benchmarks/gpu_check.sh prepare      # here, once: wheels in .whl/, a data subset and stubs in .devdata/
#   device run, carry [".whl", ".devdata"]:  BUDGET=270 STAGES="env cuda tiny pipeline suite" bash benchmarks/gpu_check.sh
#
# Stages: env (versions, backend), cuda (the CUDA tests and their neighbours), tiny (a search with
# target.device cuda: PyTorch measures through onnx2torch), pipeline (the end-to-end tests, one process),
# suite (the rest, xdist), demo (the default study with GPU training, search cut to DEMO_SEARCH_S).
# Logs go to $OUT. Data: the first 36,000 training images (all of Fashion-MNIST does not fit the 64 MiB).
# Failures expected there by design (H200, 2026-11-26: env + pipeline + suite, 7 failed / 225 passed, all these):
# the official split sizes and the demo dataset's hash (the subset), the tiny recipe's seeded 12- vs 4-wide
# order in test_the_student_without_kd_is_built_... (other images in the subset; same failure with training
# pinned to the CPU), pareto.html's content (plotly stub), the Triton-config tests (no tritonclient) and
# make dashboard (no optuna-dashboard). The pipeline tests pass alone; under -n 14 they failed (cause not seen).
set -u
PY=${PY:-python3}
if [ "${1:-}" = prepare ]; then
  grep -qx "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >> .git/info/exclude
  grep -qx "/.devdata/" .git/info/exclude || echo "/.devdata/" >> .git/info/exclude
  rm -rf .whl .devdata && mkdir -p .devdata/data .devdata/stubs/plotly
  # What the device image lacks, at this .venv's versions (plotly's 9.7 MB is replaced by a stub).
  pkgs=$(.venv/bin/pip list --format=freeze 2>/dev/null | grep -iE "^(optuna|alembic|sqlalchemy|mako|colorlog|pydantic|pydantic.core|annotated.types|typing.inspection|torch.pruning|onnx2torch|pytest.timeout)==")
  $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl $pkgs || exit 1
  $PY - <<'EOF' || exit 1
import gzip, lzma, pathlib, struct
src, dst, n_train = pathlib.Path("/usr/share/datasets/fashion-mnist"), pathlib.Path(".devdata/data"), 36000
for name in ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]:
    raw = gzip.decompress((src / f"{name}.gz").read_bytes())
    if name.startswith("train"):  # IDX: magic, count, then dims; keep the first n_train records
        dims = 3 if "images" in name else 1
        head = struct.unpack(f">{1 + dims}I", raw[: 4 * (1 + dims)])
        size = 28 * 28 if "images" in name else 1
        raw = struct.pack(f">{1 + dims}I", head[0], n_train, *head[2:]) + raw[4 * (1 + dims):][: n_train * size]
    (dst / f"{name}.xz").write_bytes(lzma.compress(raw, preset=9 | lzma.PRESET_EXTREME))
EOF
  echo "# plotly stand-in for the device check: pareto.html is a placeholder" > .devdata/stubs/plotly/__init__.py
  cat > .devdata/stubs/plotly/graph_objects.py <<'EOF'
class _Any:
    def __init__(self, *a, **k):
        pass

    def __getattr__(self, name):
        return lambda *a, **k: None

    def write_html(self, path, **k):
        open(path, "w").write("<html><body>plotly stub (device check)</body></html>")


Figure = Scatter = _Any
EOF
  sed -e 's/^name: tiny_search/name: tiny_gpu/' -e '/quantize.enabled: \[true, false\]/d' \
      -e 's/^quantize: {calibration: minmax, calibration_size: 128}/quantize: {enabled: false}\ntarget: {device: cuda, batch_size: 1, threads: 1}/' \
      recipes/tiny_search.yaml > .devdata/tiny_gpu.yaml
  du -sh .whl .devdata
  exit 0
fi

OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
STAGES=${STAGES:-"env cuda tiny pipeline suite"}
T0=$(date +%s)
left() { echo $(( ${BUDGET:-300} - ($(date +%s) - T0) )); }
$PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
export PYTHONPATH=/tmp/site:$PWD/.devdata/stubs:$PWD PYTHONUNBUFFERED=1
[ -d /usr/share/datasets/fashion-mnist ] || $PY -c "
import lzma, pathlib
raw = pathlib.Path('.data/FashionMNIST/raw'); raw.mkdir(parents=True, exist_ok=True)
for f in pathlib.Path('.devdata/data').glob('*.xz'):
    (raw / f.stem).write_bytes(lzma.decompress(f.read_bytes()))
" || exit 4
for s in $STAGES; do
  echo "=== $s (elapsed $(( $(date +%s) - T0 )) s, left $(left) s)"
  case $s in
  env)
    nvidia-smi -L 2>&1; nproc
    $PY -c "
import torch, onnxruntime, onnx, numpy, optuna
print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '-')
print('ort', onnxruntime.__version__, onnxruntime.get_available_providers(), 'onnx', onnx.__version__, 'numpy', numpy.__version__)
from compress.measure.latency import backend_for; print('backend_for(cuda) =', backend_for('cuda'))
" 2>&1 | tee "$OUT/env.log";;
  cuda)
    timeout 150 $PY -m pytest -q -p no:cacheprovider --timeout 120 -rfE tests/test_train.py tests/test_capacity.py \
      tests/test_baselines.py tests/test_quantize.py tests/test_halving.py > "$OUT/cuda_tests.log" 2>&1
    tail -8 "$OUT/cuda_tests.log" | cut -c1-300;;
  tiny)
    rm -rf /tmp/tiny_gpu
    timeout 180 $PY -m compress search .devdata/tiny_gpu.yaml --set output_dir=/tmp/tiny_gpu > "$OUT/tiny_gpu.log" 2>&1
    echo "rc=$?"; grep -E "baseline|rror|results:|wall time" "$OUT/tiny_gpu.log" | tail -12
    cp /tmp/tiny_gpu/tiny_gpu/summary.json "$OUT/tiny_gpu_summary.json" 2>/dev/null;;
  pipeline)  # the end-to-end tests, alone: under 14 xdist workers they failed on an H200 (cause not seen)
    timeout 200 $PY -m pytest -q -p no:cacheprovider --timeout 180 -rfE --tb=short \
      tests/test_pipeline.py::test_tiny_recipe_end_to_end tests/test_artifact.py > "$OUT/pipeline.log" 2>&1
    grep -E "^(FAILED|ERROR|E )|[0-9]+ (passed|failed)" "$OUT/pipeline.log" | cut -c1-300 | tail -20;;
  suite)
    t=$(left); [ "$t" -gt 30 ] || { echo "no time left for the suite"; continue; }
    OMP_NUM_THREADS=2 timeout "$t" $PY -m pytest -v -p no:cacheprovider -n ${NPROC:-6} --timeout 150 -rfE --tb=short \
      --deselect tests/test_train.py --deselect tests/test_capacity.py --deselect tests/test_baselines.py \
      --deselect tests/test_quantize.py --deselect tests/test_halving.py --deselect tests/test_artifact.py \
      --deselect tests/test_pipeline.py::test_tiny_recipe_end_to_end > "$OUT/suite.log" 2>&1
    grep -E "^(FAILED|ERROR)|^\[gw[0-9]+\].* (FAILED|ERROR) |[0-9]+ (passed|failed)" "$OUT/suite.log" | cut -c1-300 | tail -40;;
  demo)
    rm -rf /tmp/fm_gpu
    timeout "${DEMO_CAP:-$(left)}" $PY -m compress search recipes/fashion_mnist.yaml --set name=fashion_mnist_gpu \
      --set output_dir=/tmp/fm_gpu --set search.timeout_s=${DEMO_SEARCH_S:-120} > "$OUT/demo.log" 2>&1
    echo "rc=$?"; grep -E "^\[study|wall time" "$OUT/demo.log" | tail -20
    cp /tmp/fm_gpu/fashion_mnist_gpu/summary.json "$OUT/demo_summary.json" 2>/dev/null;;
  esac
done
echo "total $(( $(date +%s) - T0 )) s"
