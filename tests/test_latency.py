import numpy as np
import pytest

from compress.export import export_onnx
from compress.latency import ci_relative_halfwidth, compare, stats_from_samples
from compress.models import create_model
from compress.recipe import LatencyConfig


def test_percentiles_and_throughput_on_known_samples():
    samples = np.arange(1, 101, dtype=float)  # 1..100 ms
    s = stats_from_samples(samples, batch_size=4, threads=1)
    assert s.n_runs == 100
    assert s.p50_ms == pytest.approx(50.5) and s.p95_ms == pytest.approx(95.05) and s.p99_ms == pytest.approx(99.01)
    assert s.mean_ms == pytest.approx(50.5) and s.std_ms == pytest.approx(np.std(samples, ddof=1))
    assert s.throughput_sps == pytest.approx(4 * 1000 / 50.5)
    lo, hi = s.p50_ci95_ms
    assert lo < s.p50_ms < hi


def test_confidence_interval_narrows_with_more_runs():
    rng = np.random.default_rng(0)
    few = stats_from_samples(rng.lognormal(0, 0.1, 100), 1, 1)
    many = stats_from_samples(rng.lognormal(0, 0.1, 10000), 1, 1)
    assert ci_relative_halfwidth(many) < ci_relative_halfwidth(few) / 5


def test_p95_interval_covers_the_true_quantile_and_drives_the_noise_flag():
    # 1 + Exponential(1): the true p95 is 1 + ln(20). The interval must hold it and shrink with more runs; with
    # 300 runs it is far wider than the +-4% target, so the measurement counts as noisy and keeps going.
    rng = np.random.default_rng(2)
    true_p95 = np.log(20)
    few = stats_from_samples(1 + rng.exponential(1.0, 300), 1, 1)
    many = stats_from_samples(1 + rng.exponential(1.0, 20000), 1, 1)
    for s in (few, many):
        lo, hi = s.p95_ci95_ms
        assert lo < 1 + true_p95 < hi
    assert ci_relative_halfwidth(many, 0.95) < ci_relative_halfwidth(few, 0.95) / 5
    assert ci_relative_halfwidth(few, 0.95) > 0.04 and few.noisy
    assert ci_relative_halfwidth(many, 0.95) < 0.04


def test_empty_samples_rejected():
    with pytest.raises(ValueError):
        stats_from_samples([], 1, 1)


def test_compare_times_models_interleaved(tmp_path):
    small = export_onnx(create_model("cnn", width=4, depth=1), tmp_path / "s.onnx")
    big = export_onnx(create_model("cnn", width=32, depth=2), tmp_path / "b.onnx")
    cfg = LatencyConfig(warmup_runs=5, min_runs=40, max_runs=200, max_seconds=0.5)
    res = compare({"small": small, "big": big}, cfg, batch_size=2, threads=1)
    assert set(res) == {"small", "big"}
    # Interleaving gives both models the same number of timed runs.
    assert res["small"].n_runs == res["big"].n_runs >= 40
    assert res["small"].batch_size == 2 and res["small"].threads == 1
    for s in res.values():
        assert 0 < s.p50_ms <= s.p95_ms <= s.p99_ms


def test_noise_flag_follows_the_confidence_interval():
    rng = np.random.default_rng(1)
    assert not stats_from_samples(1.0 + rng.normal(0, 0.01, 2000), 1, 1).noisy
    assert stats_from_samples(rng.lognormal(0, 1.0, 50), 1, 1).noisy


def test_bench_command_prints_table_and_ratio(tmp_path):
    import subprocess
    import sys

    a = export_onnx(create_model("cnn", width=4, depth=1), tmp_path / "small.onnx")
    b = export_onnx(create_model("cnn", width=16, depth=1), tmp_path / "big.onnx")
    proc = subprocess.run([sys.executable, "-m", "compress", "bench", str(a), "--vs", str(b), "--batch-sizes", "1,4",
                           "--min-runs", "30", "--max-seconds", "0.2"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in proc.stdout.splitlines() if line.startswith(("small", "big"))]
    assert len(rows) == 4 and all(line.rstrip().split()[-1].endswith("x") or "noisy" in line for line in rows)
    assert "speedup = big p50 / model p50" in proc.stdout
    bad = subprocess.run([sys.executable, "-m", "compress", "bench", str(tmp_path / "none.onnx")],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "no such ONNX file" in bad.stderr


def test_stability_over_processes(tmp_path):
    from compress.stability import stability

    # Same file name in two folders: the reference must still be told apart from the candidate.
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    small = export_onnx(create_model("cnn", width=4, depth=1), tmp_path / "a" / "model.onnx")
    big = export_onnx(create_model("cnn", width=32, depth=2), tmp_path / "b" / "model.onnx")
    r = stability(str(big), str(small), processes=2, max_seconds=0.2, out=str(tmp_path / "s.json"))
    assert len(r["runs"]) == 2 and all(run["speedup"] > 1 for run in r["runs"])
    assert {"p50_cv_teacher", "p50_cv_artifact", "speedup_cv"} <= set(r)
    assert (tmp_path / "s.json").is_file()


@pytest.mark.skipif(not hasattr(__import__("os"), "sched_getaffinity") or len(__import__("os").sched_getaffinity(0)) < 2,
                    reason="needs Linux CPU affinity and at least 2 CPUs")
def test_measurement_is_pinned_to_fixed_cpus_and_released():
    import os

    from compress.latency import pinned

    before = os.sched_getaffinity(0)
    with pinned(1):
        inside = os.sched_getaffinity(0)
    assert len(inside) == 1 and inside < before
    assert os.sched_getaffinity(0) == before


def test_rounds_shrink_for_slow_models_only():
    from compress.latency import REWARM, ROUND, _round_size

    assert _round_size([0.2, 2.3]) == (ROUND, REWARM)  # the study's final measurement: full rounds
    assert _round_size([0.2, 10.0]) == (12, 2)
    assert _round_size([150.0]) == (1, 1)  # a batch-128 teacher: one run a round, one re-warm


def test_bounded_measurement_warms_up_within_its_time_and_measures_once(monkeypatch):
    """The capacity sweep's settings (a throughput): a slow model's warm-up stops at the time bound instead of
    running windows of 20 until two agree, and a noisy set is not measured a second time."""
    import time

    from compress import latency

    calls = []

    def slow():  # 20 ms a run, alternating 10 and 30: two window medians never settle, p95 stays wide
        calls.append(1)
        time.sleep(0.01 if len(calls) % 2 else 0.03)

    latency._warm_up(slow, 2, max_s=0.1)
    assert len(calls) <= 2 + 0.1 / 0.01 + 1  # 2 untimed runs, then at most the time bound's worth
    calls.clear()
    latency._warm_up(slow, 2, max_windows=3)  # unbounded: whole windows
    assert len(calls) >= 2 + 2 * 20

    runs = []  # two modes taking turns (drawn at random they once came out mostly slow: a narrow CI, not noisy)
    bimodal = lambda: runs.append(1) or time.sleep(0.0005 if len(runs) % 2 else 0.004)  # noqa: E731
    monkeypatch.setattr(latency, "runner", lambda *a, **k: bimodal)
    cfg = LatencyConfig(warmup_runs=2, min_runs=20, max_runs=100, max_seconds=0.05)
    bounded = compare({"m": "unused.onnx"}, cfg, bounded=True)["m"]
    assert bounded.noisy and bounded.attempts == 1
    assert compare({"m": "unused.onnx"}, cfg)["m"].attempts == 2  # the latency protocol measures it again
