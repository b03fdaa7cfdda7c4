import pytest

from compress.capacity import batch_plan, best_per_core, online_plan
from compress.pipeline import check_target
from compress.recipe import RecipeError, TargetConfig, recipe_from_dict
from compress.search import constraint_values


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
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has ONNX Runtime's CUDA provider")
    with pytest.raises(RecipeError, match="target.device = 'cuda'.*target.device: cpu"):
        check_target(TargetConfig(device="cuda"))


@pytest.mark.skipif("CUDAExecutionProvider" not in __import__("onnxruntime").get_available_providers(),
                    reason="no CUDA GPU with ONNX Runtime's CUDA provider on this machine")
def test_cuda_latency_measurement(tmp_path):
    from compress.export import export_onnx
    from compress.latency import measure
    from compress.models import create_model
    from compress.recipe import LatencyConfig

    path = export_onnx(create_model("cnn", width=16, depth=2), tmp_path / "m.onnx")
    s = measure(path, LatencyConfig(warmup_runs=20, min_runs=50, max_seconds=1), batch_size=8, device="cuda")
    assert s.p50_ms > 0 and s.batch_size == 8
