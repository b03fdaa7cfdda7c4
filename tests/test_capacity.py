import pytest

from compress.measure.capacity import batch_plan, best_per_core, capacity_markdown, default_threads, gpu_plan, online_plan
from compress.errors import TargetError
from compress.pipeline import check_target
from compress.recipe import RecipeError, recipe_from_dict
from compress.search.records import constraint_values


def test_batch_plan_by_hand():
    # 100M records in 6 h = 4,629.6 samples/s; at 1,000 samples/s per core that is 5 cores,
    # 27.78 core-hours, 1.389 per run at 0.05 per core-hour, 0.01389 per million.
    p = batch_plan(per_core_sps=1000.0, records=100_000_000, hours=6, max_cores=None, cpu_core_hour=0.05)
    assert p["required_sps"] == pytest.approx(4629.63, rel=1e-5)
    assert p["cores"] == 5
    assert p["core_hours"] == pytest.approx(27.7778, rel=1e-5)
    assert p["cost_per_run"] == pytest.approx(1.38889, rel=1e-5)
    assert p["cost_per_million"] == pytest.approx(0.0138889, rel=1e-5)
    assert p["meets_deadline"]
    assert not batch_plan(1000.0, 100_000_000, 6, max_cores=4, cpu_core_hour=0.05)["meets_deadline"]


def test_online_plan_by_hand():
    # 10,000 req/s at 5,000/s per replica kept 70% busy -> ceil(10000 / 3500) = 3 replicas (> 2 concurrent).
    p = online_plan(p95_ms=0.2, throughput_sps=5000.0, threads=1, concurrency=2, requests_per_s=10000.0,
                    target_utilization=0.7, slo_p95_ms=0.25, cpu_core_hour=0.05)
    assert p["replicas"] == 3 and p["cores"] == 3 and p["meets_p95"]
    assert p["cost_per_hour"] == pytest.approx(0.15)
    assert p["cost_per_million"] == pytest.approx(0.15 / 36, rel=1e-9)  # 3.6e7 requests an hour
    q = online_plan(0.3, 5000.0, 2, 4, None, 0.7, 0.25, 0.05)
    assert q["replicas"] == 4 and q["cores"] == 8 and not q["meets_p95"]


def test_best_setting_is_most_throughput_per_core():
    rows = [{"batch_size": 1, "threads": 1, "throughput_sps": 900.0},
            {"batch_size": 32, "threads": 2, "throughput_sps": 3000.0},
            {"batch_size": 32, "threads": 1, "throughput_sps": 1600.0}]
    assert best_per_core(rows) == rows[2]


def test_the_default_thread_sweep_grows_with_the_log_of_the_cores():
    # Every count from 1 to the cores made the sweep of a 16-core machine 8x longer than a 2-core one's.
    assert default_threads(1) == [1] and default_threads(2) == [1, 2] and default_threads(3) == [1, 2, 3]
    assert default_threads(16) == [1, 2, 4, 8, 16] and default_threads(12) == [1, 2, 4, 8, 12]
    assert default_threads(96) == [1, 2, 4, 8, 16, 32, 64, 96]


def test_constraints_for_online_and_batch_forms():
    online = recipe_from_dict({"name": "x", "slo": {"p95_ms": 0.25, "max_accuracy_drop_pp": 1.0}})
    assert constraint_values(0.93, 0.20, 5000.0, 0.935, online)[:2] == pytest.approx([-0.05, -0.5])
    assert constraint_values(0.92, 0.30, 5000.0, 0.935, online)[:2] == pytest.approx([0.05, 0.5])
    batch = recipe_from_dict({"name": "x", "target": {"threads": 2},
                              "slo": {"batch": {"records": 100_000_000, "hours": 6, "max_cores": 4}}})
    # 4,629.6 samples/s needed; 2,000 samples/s on 2 threads = 1,000 per core -> 5 cores, one over.
    c = constraint_values(0.9, 9.0, 2000.0, 0.9, batch)
    assert c[0] < 0 and c[1] < 0 and c[2] == 1.0
    assert constraint_values(0.9, 9.0, 4000.0, 0.9, batch)[2] == -1.0  # 2,000 per core -> 3 cores


def test_unavailable_target_is_a_clear_error_before_work():
    from compress.measure.latency import backend_for

    try:
        backend_for("cuda")
        pytest.skip("this machine has a CUDA GPU")
    except TargetError:
        pass
    with pytest.raises(RecipeError, match="target.device = 'cuda'.*target.device: cpu"):
        check_target(recipe_from_dict({"name": "x", "target": {"device": "cuda"}}))


def test_torch_backend_measures_fp32_and_refuses_int8(tmp_path, tiny_data):
    """The PyTorch fallback (used for CUDA without onnxruntime-gpu) runs the same ONNX graph; here on CPU."""
    import torch

    from compress.data import calibration_inputs
    from compress.export import export_onnx
    from compress.measure.latency import TorchRunner, measure
    from compress.models import create_model
    from compress.recipe import LatencyConfig, QuantizeConfig
    from compress.techniques.quantize import quantize_int8

    model = create_model("cnn", width=8, depth=1).eval()
    path = export_onnx(model, tmp_path / "m.onnx")
    run = TorchRunner(path, batch_size=4, threads=1, device="cpu")
    with torch.no_grad():
        expected = model(run.x)
    assert torch.allclose(run.model(run.x), expected, atol=1e-4)  # the same computation as the ONNX graph
    s = measure(path, LatencyConfig(warmup_runs=5, min_runs=30, max_runs=300, max_seconds=0.3), batch_size=4,
                backend="torch")
    assert s.p50_ms > 0 and s.batch_size == 4 and s.n_runs >= 30
    calib, _ = calibration_inputs(tiny_data.train, 32, 0)
    q = quantize_int8(path, tmp_path / "q.onnx", calib, QuantizeConfig(enabled=True, calibration="minmax"))
    with pytest.raises(TargetError, match="int8 ONNX model.*onnxruntime-gpu"):
        measure(q, LatencyConfig(), backend="torch")


def test_gpu_versus_cpu_cost_by_hand():
    # 100M records in 6 h = 4,629.6 samples/s. A GPU at 50,000 samples/s: 1 GPU, 0.5556 GPU-hours,
    # 1.39 USD at 2.50/h. CPU at 1,000 samples/s per core: 27.8 core-hours, 1.33 USD at 0.048/h: CPU wins.
    cpu = batch_plan(1000.0, 100_000_000, 6, None, 0.048)
    g = gpu_plan(50_000.0, 100_000_000, 6, 2.50, cpu)
    assert g["gpus"] == 1
    assert g["gpu_hours"] == pytest.approx(100_000_000 / 50_000 / 3600)
    assert g["cost_per_run"] == pytest.approx(1.3889, abs=1e-4)
    assert cpu["cost_per_run"] == pytest.approx(1.3333, abs=1e-4)
    assert g["cheaper"] == "cpu"
    assert gpu_plan(100_000.0, 100_000_000, 6, 2.50, cpu)["cheaper"] == "gpu"  # 0.69 USD


def test_capacity_markdown_compares_gpu_and_cpu_when_measured():
    recipe = recipe_from_dict({"name": "x", "target": {"device": "cuda"},
                               "slo": {"p95_ms": 1.0, "batch": {"records": 100_000_000, "hours": 6}}})
    cpu = batch_plan(1000.0, 100_000_000, 6, None, 0.048)
    online = online_plan(0.2, 5000.0, 1, 1, None, 0.7, 1.0, 0.048)
    plan = {"model": "teacher", "best_batch_size": 32, "best_threads": 1, "batch": cpu, "online": online,
            "gpu": {"best_batch_size": 128, "throughput_sps": 50_000.0, **gpu_plan(50_000.0, 100_000_000, 6, 2.5, cpu)}}
    md = capacity_markdown([plan], recipe)
    assert "## GPU or more CPU cores?" in md
    row = next(line for line in md.splitlines() if line.startswith("| teacher | 50,000"))
    assert "1.39 USD" in row and "1.33 USD" in row and row.rstrip().endswith("| cpu |")
    plan["gpu"] = None
    assert "no GPU measurement exists" in capacity_markdown([plan], recipe)


def test_torch_backend_runs_a_graph_whose_equal_weights_torch_onnx_stored_once(tmp_path):
    """An untrained 2-deep CNN has equal conv biases, which torch.onnx stores once and shares through Identity
    nodes; onnx2torch wants each bias as an initializer (it failed on an H200 before they were inlined)."""
    import onnx
    import torch

    from compress.export import export_onnx
    from compress.measure.latency import TorchRunner
    from compress.models import create_model

    model = create_model("cnn", width=16, depth=2).eval()
    path = export_onnx(model, tmp_path / "m.onnx")
    assert "Identity" in {n.op_type for n in onnx.load(str(path)).graph.node}
    run = TorchRunner(path, batch_size=4, threads=1, device="cpu")
    with torch.no_grad():
        torch.testing.assert_close(run.model(run.x), model(run.x), rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="no CUDA GPU on this machine")
def test_cuda_latency_measurement(tmp_path):
    from compress.export import export_onnx
    from compress.measure.latency import backend_for, measure
    from compress.models import create_model
    from compress.recipe import LatencyConfig

    path = export_onnx(create_model("cnn", width=16, depth=2), tmp_path / "m.onnx")
    cfg = LatencyConfig(warmup_runs=20, min_runs=50, max_seconds=1)
    s = measure(path, cfg, batch_size=8, device="cuda")  # ONNX Runtime's CUDA provider if installed, else PyTorch
    assert s.p50_ms > 0 and s.batch_size == 8
    assert backend_for("cuda") in ("onnxruntime", "torch")
    t = measure(path, cfg, batch_size=8, device="cuda", backend="torch")
    assert t.p50_ms > 0


def test_int8_search_on_the_pytorch_fallback_is_refused_before_work(monkeypatch):
    import compress.pipeline as pipeline

    monkeypatch.setattr(pipeline, "backend_for", lambda device: "torch")  # CUDA GPU, no onnxruntime-gpu
    fp32 = recipe_from_dict({"name": "x", "target": {"device": "cuda"}, "quantize": {"enabled": False}})
    assert check_target(fp32) == "torch"
    searched = recipe_from_dict({"name": "x", "target": {"device": "cuda"}, "quantize": {"enabled": False},
                                 "search": {"space": {"quantize.enabled": [True, False]}}})
    with pytest.raises(RecipeError, match="cannot run int8 ONNX graphs.*onnxruntime-gpu"):
        check_target(searched)
