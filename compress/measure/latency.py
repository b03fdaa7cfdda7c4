"""The latency measurement protocol, used by every part of the product that reports speed.

ONNX Runtime with a fixed intra-op thread count and a sequential graph (inter-op 1), warm-up runs, then
timed runs until the 95% confidence intervals of p50 and p95 are within 2% and 4% of them (or the run/time
cap is hit): a service level is a p95, and a few hundred runs leave its rank uncertain by several percent.
Models that are compared are timed *interleaved* in one process, so drift of a shared machine hits
both alike and cancels in their ratio; each switch to a model is followed by untimed re-warm runs, so
the tail percentiles describe the model, not the switch.
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import platform
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from typing import TYPE_CHECKING

from compress.errors import ModelFileError, TargetError
from compress.measure.hostlock import measuring

if TYPE_CHECKING:  # at run time any object with these fields will do: verify runs without pydantic
    from compress.recipe import LatencyConfig

ROUND = 50  # timed runs per model per interleaving round (fewer when the slowest model is slow; see round_size)
ROUND_MS = 120.0  # ... so that a round of the slowest model takes about this long, at least 1 run
# Untimed runs of a model each time the interleaving switches to it: its first runs find its weights out of
# cache, and timing them would put a switching cost a serving replica never pays into the tail.
REWARM = 10  # (a fifth of the round when rounds are shorter, at least 1)
CI_TARGET = 0.02  # stop once the 95% CI of p50 is within +-2% of it
P95_CI_TARGET = 0.04  # ... and that of p95 within +-4%: with 300 runs the p95 rank is uncertain by +-2.5%-points
ATTEMPTS = 2  # a measurement still noisy at its cap is repeated once with twice the time


@dataclass(frozen=True)
class LatencyStats:
    batch_size: int
    threads: int
    n_runs: int
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    std_ms: float
    p50_ci95_ms: tuple[float, float]
    throughput_sps: float  # samples per second at this batch size, from the mean
    noisy: bool = False  # the p50 or p95 CI never got within its target: treat the figures with care
    attempts: int = 1
    p95_ci95_ms: tuple[float, float] = (math.nan, math.nan)

    def to_dict(self) -> dict:
        return asdict(self)

    def record_fields(self) -> dict:
        """The flat keys every metrics record carries, plus the full statistics under ``latency``."""
        return {"latency_p50_ms": self.p50_ms, "latency_p95_ms": self.p95_ms, "latency_p99_ms": self.p99_ms,
                "throughput_sps": self.throughput_sps, "latency": self.to_dict()}


def quantile_ci(sorted_ms: np.ndarray, q: float, z: float = 1.96) -> tuple[float, float]:
    """Distribution-free 95% confidence interval of the ``q`` quantile: the order statistics whose ranks are
    n*q -+ z*sqrt(n*q*(1-q)) (normal approximation to the binomial count of samples below the quantile)."""
    n = len(sorted_ms)
    half = z * math.sqrt(n * q * (1 - q))
    lo = sorted_ms[max(0, int(math.floor(n * q - half)))]
    hi = sorted_ms[min(n - 1, int(math.ceil(n * q + half)))]
    return float(lo), float(hi)


def stats_from_samples(samples_ms, batch_size: int, threads: int) -> LatencyStats:
    """Percentiles, spread and distribution-free 95% CIs of the median and of p95."""
    s = np.sort(np.asarray(samples_ms, dtype=np.float64))
    n = len(s)
    if n == 0:
        raise ValueError("no timing samples")
    mean = float(s.mean())
    stats = LatencyStats(
        batch_size=batch_size, threads=threads, n_runs=n,
        p50_ms=float(np.percentile(s, 50)), p90_ms=float(np.percentile(s, 90)),
        p95_ms=float(np.percentile(s, 95)), p99_ms=float(np.percentile(s, 99)),
        mean_ms=mean, std_ms=float(s.std(ddof=1)) if n > 1 else 0.0,
        p50_ci95_ms=quantile_ci(s, 0.5), p95_ci95_ms=quantile_ci(s, 0.95),
        throughput_sps=batch_size * 1000.0 / mean,
    )
    return replace(stats, noisy=ci_relative_halfwidth(stats) > CI_TARGET
                   or ci_relative_halfwidth(stats, 0.95) > P95_CI_TARGET)


def ci_relative_halfwidth(stats: LatencyStats, q: float = 0.5) -> float:
    """Half the width of the 95% CI of p50 (``q=0.5``) or p95 (``q=0.95``), relative to that percentile."""
    (lo, hi), mid = {0.5: (stats.p50_ci95_ms, stats.p50_ms), 0.95: (stats.p95_ci95_ms, stats.p95_ms)}[q]
    return (hi - lo) / 2 / mid if mid > 0 else math.inf


def make_session(path: str | Path, threads: int, device: str = "cpu"):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
    if not Path(path).is_file():
        raise ModelFileError(f"{path}: no such file")
    try:
        return ort.InferenceSession(str(path), opts, providers=providers)
    except Exception as err:  # noqa: BLE001 - onnxruntime's protobuf / graph errors
        msg = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise ModelFileError(f"{path}: not a loadable ONNX model ({msg}); give an .onnx file, e.g. one written by "
                             "compress (results/<study>/artifact/model.onnx) or by torch.onnx.export") from None


def backend_for(device: str) -> str:
    """What runs a model on ``device``: ONNX Runtime, or for CUDA without ONNX Runtime's CUDA provider,
    PyTorch on CUDA. Raises ``TargetError`` when the device is not there at all."""
    if device == "cpu":
        return "onnxruntime"
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        return "onnxruntime"
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None and torch.cuda.is_available():
        return "torch"
    raise TargetError(
        f"device 'cuda': ONNX Runtime here has only {ort.get_available_providers()} and PyTorch sees no CUDA GPU; "
        "install onnxruntime-gpu (or a CUDA build of torch) on a machine with an NVIDIA GPU, or measure on the CPU "
        "(target.device: cpu in a recipe, --device cpu for compress bench)")


def _is_int8(proto) -> bool:
    ops = {n.op_type for n in proto.graph.node}
    return bool(ops & {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger"})


def _inline_shared_initializers(proto) -> None:
    """torch.onnx stores a weight tensor once and feeds its other users through Identity nodes (two equal conv
    biases of an untrained network, say); onnx2torch wants a Conv's weights and bias as initializers, so
    each such Identity becomes an initializer of its own."""
    import onnx

    inits = {t.name: t for t in proto.graph.initializer}
    for node in [n for n in proto.graph.node if n.op_type == "Identity" and n.input[0] in inits]:
        copy = onnx.TensorProto()
        copy.CopyFrom(inits[node.input[0]])
        copy.name = node.output[0]
        proto.graph.initializer.append(copy)
        proto.graph.node.remove(node)


class _OrtRunner:
    """One synchronous ONNX Runtime inference on a fixed random input."""

    def __init__(self, path: str | Path, batch_size: int, threads: int, device: str):
        self.sess = make_session(path, threads, device)
        self.feed = _input_for(self.sess, batch_size)

    def __call__(self) -> None:
        self.sess.run(None, self.feed)


class TorchRunner:
    """The ONNX graph rebuilt as a PyTorch module (onnx2torch) and run by PyTorch on ``device``; each call
    waits for the device, so a timing covers the whole inference. fp32 graphs only: PyTorch has no CUDA
    kernels for ONNX's int8 operators."""

    def __init__(self, path: str | Path, batch_size: int, threads: int, device: str):
        import onnx
        import torch
        from onnx2torch import convert

        proto = onnx.load(str(path))
        if _is_int8(proto):
            raise TargetError(
                f"{path} is an int8 ONNX model; PyTorch cannot run ONNX int8 graphs on {device}. Install "
                "onnxruntime-gpu so ONNX Runtime's CUDA provider measures it, or set quantize.enabled: false "
                "(and leave quantize.enabled out of search.space)")
        self.torch, self.device = torch, torch.device(device)
        torch.set_num_threads(threads)
        _inline_shared_initializers(proto)
        self.model = convert(proto).to(self.device).eval()
        dims = proto.graph.input[0].type.tensor_type.shape.dim
        shape = [batch_size] + [int(d.dim_value) for d in dims[1:]]
        self.x = torch.from_numpy(np.random.default_rng(0).standard_normal(shape).astype(np.float32)).to(self.device)

    def __call__(self) -> None:
        with self.torch.inference_mode():
            self.model(self.x)
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()


def runner(path: str | Path, batch_size: int = 1, threads: int = 1, device: str = "cpu", backend: str | None = None):
    """A zero-argument callable that runs the model once, on ``backend`` (default: ``backend_for(device)``)."""
    backend = backend or backend_for(device)
    return (TorchRunner if backend == "torch" else _OrtRunner)(path, batch_size, threads, device)


def _input_for(sess, batch_size: int) -> dict[str, np.ndarray]:
    inp = sess.get_inputs()[0]
    shape = [batch_size] + [int(d) for d in inp.shape[1:]]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    return {inp.name: x}


def compare(models: dict[str, str | Path], cfg: LatencyConfig, batch_size: int = 1, threads: int = 1,
            device: str = "cpu", backend: str | None = None, bounded: bool = False) -> dict[str, LatencyStats]:
    """Time several ONNX models interleaved in this process; one LatencyStats per name.

    A set whose p50 or p95 confidence interval is still too wide at the cap is measured again with twice the time.
    ``bounded``: a throughput figure, not a tail percentile: the warm-up after ``cfg.warmup_runs`` lasts at
    most ``cfg.max_seconds`` and a noisy set is not measured again, so a setting costs about the warm-up runs
    + max(``cfg.min_runs`` runs, ``cfg.max_seconds``) whatever the model.
    """
    with measuring(), pinned(threads), _gc_paused():  # neighbours on this host pause meanwhile
        runners = {k: runner(p, batch_size, threads, device, backend) for k, p in models.items()}
        medians = [_warm_up(run, cfg.warmup_runs, max_s=cfg.max_seconds if bounded else None)
                   for run in runners.values()]
        size = round_size(medians)
        result: dict[str, LatencyStats] = {}
        for attempt in range(1, (1 if bounded else ATTEMPTS) + 1):
            samples = _timed_rounds(runners, cfg, cfg.max_seconds * len(runners) * attempt, batch_size, threads, size)
            result = {k: replace(stats_from_samples(v, batch_size, threads), attempts=attempt) for k, v in samples.items()}
            if not any(s.noisy for s in result.values()):
                break
    return result


@contextlib.contextmanager
def _gc_paused():
    """No Python garbage collection while timing (as ``timeit`` does): in a process holding a large heap, such
    as a study's, a collection landing inside a timed run adds its pause to that sample's latency."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


@contextlib.contextmanager
def pinned(threads: int):
    """Keep this process on ``threads`` fixed CPUs (the last ones it may use) while it measures: a
    migration to another core leaves a model's weights in the old core's caches. Linux only; elsewhere
    (or with fewer CPUs than threads) nothing changes."""
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(allowed) <= threads:
        yield
        return
    os.sched_setaffinity(0, allowed[-threads:])
    try:
        yield
    finally:
        os.sched_setaffinity(0, allowed)


def round_size(medians_ms: list[float]) -> tuple[int, int]:
    """(timed runs, re-warm runs) per model per round: ROUND and REWARM, fewer when the slowest model would
    make a round last much longer than ROUND_MS (a 150 ms batch-128 teacher gets 1 + 1)."""
    runs = int(max(1, min(ROUND, ROUND_MS / max(max(medians_ms), 1e-6))))
    return runs, min(REWARM, max(1, runs // 5))


def _warm_up(run, runs: int, window: int = 20, max_windows: int = 25, max_s: float | None = None) -> float:
    """Run until two successive window medians agree within 2% (or the window/time cap); the last median in ms."""
    for _ in range(runs):
        run()
    deadline = math.inf if max_s is None else time.perf_counter() + max_s
    prev = None
    for _ in range(max_windows):
        times = []
        for _ in range(window):
            t0 = time.perf_counter_ns()
            run()
            times.append(time.perf_counter_ns() - t0)
            if time.perf_counter() > deadline:
                break
        med = float(np.median(times))
        if (prev is not None and abs(med - prev) <= 0.02 * prev) or time.perf_counter() > deadline:
            return med / 1e6
        prev = med
    return prev / 1e6 if prev is not None else 0.0


def _timed_rounds(runners, cfg: LatencyConfig, budget: float, batch_size: int, threads: int,
                  size: tuple[int, int] = (ROUND, REWARM)):
    runs, rewarm = size
    samples: dict[str, list[float]] = {k: [] for k in runners}
    start = time.perf_counter()
    while True:
        for k, run in runners.items():
            out = samples[k]
            if len(runners) > 1:
                for _ in range(rewarm):
                    run()
            for _ in range(runs):
                t0 = time.perf_counter_ns()
                run()
                out.append((time.perf_counter_ns() - t0) / 1e6)
        n = len(next(iter(samples.values())))
        if n < cfg.min_runs:
            continue
        if n >= cfg.max_runs or time.perf_counter() - start > budget:
            break
        if not any(stats_from_samples(v, batch_size, threads).noisy for v in samples.values()):
            break
    return samples


def measure(path: str | Path, cfg: LatencyConfig, batch_size: int = 1, threads: int = 1,
            device: str = "cpu", backend: str | None = None) -> LatencyStats:
    return compare({"model": path}, cfg, batch_size, threads, device, backend)["model"]


def environment(device: str = "cpu") -> dict:
    """What a latency figure depends on: CPU model, cores, int8-relevant flags, runtime versions."""
    import onnxruntime as ort

    flags: set[str] = set()
    model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    wanted = ["avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16"]
    env = {"cpu": model, "cores": os.cpu_count(), "flags": [f for f in wanted if f in flags],
           "onnxruntime": ort.__version__, "python": platform.python_version(),
           "execution_provider": _provider(device)}
    try:
        import torch

        env["torch"] = torch.__version__
    except ImportError:  # verify/bench run without torch
        pass
    return env


def _provider(device: str) -> str:
    if device == "cpu":
        return "CPUExecutionProvider"
    try:
        backend = backend_for(device)
    except TargetError:
        return "unavailable"
    if backend == "onnxruntime":
        return "CUDAExecutionProvider"
    import torch

    return f"PyTorch {torch.__version__} on CUDA ({torch.cuda.get_device_name(0)}), via onnx2torch"


def sweep(models: dict[str, str | Path], cfg: LatencyConfig, batch_sizes: list[int], threads: list[int],
          device: str = "cpu", backend: str | None = None, bounded: bool = False) -> list[dict]:
    """``compare`` at every (batch size, threads) pair; one row per model and pair."""
    rows = []
    for t in threads:
        for b in batch_sizes:
            res = compare(models, cfg, b, t, device, backend, bounded)
            rows += [{"model": k, **s.to_dict()} for k, s in res.items()]
    return rows
