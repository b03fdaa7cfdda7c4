import numpy as np
import pytest

from compress.export import export_onnx
from compress.measure.latency import ci_relative_halfwidth, compare, stats_from_samples
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


def test_stability_over_processes(tmp_path, clock, monkeypatch):
    """Each process runs ``compress bench ARTIFACT --vs TEACHER --json``; here the bench runs in this process on
    fake models timed by the fake clock (teacher 3 ms a run, artifact 1 ms), so every figure is known."""
    import json
    import subprocess
    import sys
    from types import SimpleNamespace

    from compress import cli
    from compress.measure import latency
    from compress.measure import stability as stability_module

    # Same file name in two folders: the reference must still be told apart from the candidate.
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    small, big = tmp_path / "a" / "model.onnx", tmp_path / "b" / "model.onnx"
    small.write_bytes(b"artifact")
    big.write_bytes(b"teacher")
    ms = {str(small): 1.0, str(big): 3.0}
    monkeypatch.setattr(latency, "runner", lambda path, *a, **k: clock.model(lambda n: ms[str(path)]))
    commands = []

    def bench_process(cmd, check, stdout):
        commands.append(cmd)
        assert cmd[:4] == [sys.executable, "-m", "compress", "bench"] and check
        assert cli.main(cmd[3:]) == 0
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(stability_module, "subprocess", SimpleNamespace(run=bench_process, DEVNULL=subprocess.DEVNULL))
    r = stability_module.stability(str(big), str(small), processes=2, max_seconds=0.2, out=str(tmp_path / "s.json"))

    assert len(commands) == 2
    assert all(c[4:7] == [str(small), "--vs", str(big)] for c in commands)
    assert len(r["runs"]) == 2
    for run in r["runs"]:
        assert run["p50_teacher_ms"] == pytest.approx(3.0) and run["p50_artifact_ms"] == pytest.approx(1.0)
        assert run["speedup"] == pytest.approx(3.0)  # the teacher is the reference, not the artifact
        assert run["n_runs"] == [200, 200] and run["noisy"] == [False, False]  # min_runs, interleaved
    assert r["p50_cv_teacher"] == r["p50_cv_artifact"] == r["speedup_cv"] == 0.0
    assert json.loads((tmp_path / "s.json").read_text())["runs"] == r["runs"]


@pytest.mark.skipif(not hasattr(__import__("os"), "sched_getaffinity") or len(__import__("os").sched_getaffinity(0)) < 2,
                    reason="needs Linux CPU affinity and at least 2 CPUs")
def test_measurement_is_pinned_to_fixed_cpus_and_released():
    import os

    from compress.measure.latency import pinned

    before = os.sched_getaffinity(0)
    with pinned(1):
        inside = os.sched_getaffinity(0)
    assert len(inside) == 1 and inside < before
    assert os.sched_getaffinity(0) == before


def test_rounds_shrink_for_slow_models_only():
    from compress.measure.latency import REWARM, ROUND, round_size

    assert round_size([0.2, 2.3]) == (ROUND, REWARM)  # the study's final measurement: full rounds
    assert round_size([0.2, 10.0]) == (12, 2)
    assert round_size([150.0]) == (1, 1)  # a batch-128 teacher: one run a round, one re-warm


class FakeClock:
    """Stands in for the ``time`` module in compress.measure.latency (it reads ``perf_counter`` and
    ``perf_counter_ns``): time moves only when a fake model runs, by the run's scripted duration."""

    def __init__(self):
        self.ns = 0

    def perf_counter_ns(self) -> int:
        return self.ns

    def perf_counter(self) -> float:
        return self.ns / 1e9

    def model(self, durations_ms):
        """A runner whose n-th run (from 0) takes ``durations_ms(n)`` ms; ``.calls`` counts its runs."""

        def run():
            self.ns += round(durations_ms(run.calls) * 1e6)
            run.calls += 1

        run.calls = 0
        return run


@pytest.fixture
def clock(monkeypatch):
    from compress.measure import latency

    fake = FakeClock()
    monkeypatch.setattr(latency, "time", fake)
    monkeypatch.setenv("COMPRESS_HOST_LOCK", "0")  # the host lock has no part in these tests
    return fake


def test_bounded_warm_up_stops_at_its_time_bound(clock):
    """The capacity sweep's settings (a throughput): a slow model's warm-up stops at the time bound instead of
    running windows of 20 until two agree."""
    from compress.measure import latency

    slow = clock.model(lambda n: 10 if n % 2 == 0 else 30)  # 10, 30, 10, 30, ... ms
    median = latency._warm_up(slow, 2, max_s=0.1)
    # 2 untimed runs (40 ms), so the bound is at 140 ms; timed runs end at 50, 80, 90, 120, 130 and 160 ms:
    # the 6th is the first past the bound, and the warm-up ends there, inside its first window of 20.
    assert slow.calls == 2 + 6
    assert clock.ns == 160_000_000
    assert median == pytest.approx(20.0)  # the median of 10, 30, 10, 30, 10, 30 ms

    unbounded = clock.model(lambda n: 10 if n % 2 == 0 else 30)
    assert latency._warm_up(unbounded, 2) == pytest.approx(20.0)
    assert unbounded.calls == 2 + 2 * 20  # whole windows: the second window's median agrees with the first


def test_unbounded_warm_up_runs_whole_windows_up_to_its_cap(clock):
    from compress.measure import latency

    drifting = clock.model(lambda n: 10 + n)  # 1 ms slower each run: two window medians never agree
    latency._warm_up(drifting, 2, max_windows=3)
    assert drifting.calls == 2 + 3 * 20


def test_bounded_measurement_measures_once_and_unbounded_twice(clock, monkeypatch):
    """A noisy set is not measured a second time when bounded; the latency protocol measures it again with
    twice the time."""
    from compress.measure import latency

    # Two modes taking turns: half the runs 0.6 ms, half 4 ms. The p50 interval spans both modes, so it
    # never gets within +-2% of p50, however long the measurement.
    bimodal = clock.model(lambda n: 0.6 if n % 2 == 0 else 4.0)
    monkeypatch.setattr(latency, "runner", lambda *a, **k: bimodal)
    budgets = []
    timed_rounds = latency._timed_rounds
    monkeypatch.setattr(latency, "_timed_rounds",
                        lambda runners, cfg, budget, *a: budgets.append(budget) or timed_rounds(runners, cfg, budget, *a))
    cfg = LatencyConfig(warmup_runs=2, min_runs=20, max_runs=100, max_seconds=0.05)

    bounded = compare({"m": "unused.onnx"}, cfg, bounded=True)["m"]
    assert bounded.noisy and bounded.attempts == 1
    assert budgets == [pytest.approx(0.05)]  # timed once
    # Warm-up medians of 2.3 ms: rounds of 50 runs (115 ms), so one round outlasts the 50 ms budget.
    assert bounded.n_runs == 50
    assert (bounded.p50_ms, bounded.p95_ms) == (pytest.approx(2.3), pytest.approx(4.0))

    budgets.clear()
    unbounded = compare({"m": "unused.onnx"}, cfg)["m"]
    assert unbounded.noisy and unbounded.attempts == 2  # the latency protocol measures it again
    assert budgets == [pytest.approx(0.05), pytest.approx(0.1)]  # ... with twice the time
    assert unbounded.n_runs == 50  # the samples of the second attempt only


def test_a_steady_model_is_not_noisy_and_measured_once(clock, monkeypatch):
    from compress.measure import latency

    steady = clock.model(lambda n: 2.0)
    monkeypatch.setattr(latency, "runner", lambda *a, **k: steady)
    cfg = LatencyConfig(warmup_runs=2, min_runs=120, max_runs=1000, max_seconds=10.0)
    s = compare({"m": "unused.onnx"}, cfg)["m"]
    assert not s.noisy and s.attempts == 1
    assert s.n_runs == 150  # whole rounds of 50 until min_runs, then the intervals are narrow: it stops
    assert s.p50_ms == s.p95_ms == s.p99_ms == pytest.approx(2.0)
