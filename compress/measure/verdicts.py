"""Accuracy verdicts a reader can trust: confidence intervals, paired tests, and the front's hypervolume.

Two models scored on the same test images are compared with McNemar's exact test (the images one gets right
and the other wrong), not by two rounded percentages: on 10,000 images, 93.6% vs 93.9% may or may not be a
difference, depending on how many images the two disagree on. Records only (numpy, scipy): no torch.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import binomtest

ALPHA = 0.05  # a difference is claimed when the paired test's two-sided p-value is below this


def accuracy_ci95(correct: int, n: int) -> list[float]:
    """Wilson 95% interval of an accuracy of ``correct`` right out of ``n`` (well behaved near 100%)."""
    if n <= 0:
        return [0.0, 1.0]
    ci = binomtest(int(correct), int(n)).proportion_ci(0.95, method="wilson")
    return [float(ci.low), float(ci.high)]


def test_accuracy_fields(correct: np.ndarray) -> dict:
    """Test accuracy and its Wilson 95% interval from per-sample correctness on the test split."""
    return {"test_accuracy": float(correct.mean()), "test_accuracy_ci95": accuracy_ci95(int(correct.sum()), correct.size)}


def mcnemar(a: np.ndarray, b: np.ndarray) -> dict:
    """Exact McNemar test of two models' per-image correctness (boolean arrays over the same images):
    a two-sided binomial test on the images exactly one of them gets right."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    if a.shape != b.shape:
        raise ValueError(f"paired test on different image sets: {a.shape} vs {b.shape}")
    a_only, b_only = int((a & ~b).sum()), int((~a & b).sum())
    p = binomtest(a_only, a_only + b_only, 0.5).pvalue if a_only + b_only else 1.0
    return {"p_value": float(p), "only_a_right": a_only, "only_b_right": b_only, "n": int(a.size)}


def compare(a: np.ndarray, b: np.ndarray) -> dict:
    """McNemar's test plus its reading: "a more accurate", "b more accurate" or "not distinguishable"."""
    t = mcnemar(a, b)
    if t["p_value"] >= ALPHA:
        t["verdict"] = "not distinguishable"
    else:
        t["verdict"] = "a more accurate" if t["only_a_right"] > t["only_b_right"] else "b more accurate"
    return t


def baseline_verdict(base: dict, base_correct: np.ndarray, front: list[dict], correct: dict[int, np.ndarray]) -> dict:
    """How the front fares against one baseline, from paired accuracy tests and latency intervals.

    Only front members at least as fast count: the lower end of the member's p95 95% CI at most the upper
    end of the baseline's (two models whose p95 intervals overlap cannot be told apart: equally fast).
    Against each:
      - dominated: the member is more accurate on the paired test (p < 0.05), or it is clearly faster (its
        p95 CI lies below the baseline's) and no less accurate, in number or by the test;
      - not distinguishable: neither is more accurate on the paired test, at equal latency;
      - not dominated: the baseline is more accurate than every member at least as fast (the most accurate
        of them is named, with the p-value), or faster than all (no member named).
    The strongest verdict over the members wins (the most accurate member within a verdict is named).
    A member with the baseline's very architecture (same MACs, parameters, int8 or not, file size within
    2%: the chosen student and the same student trained without KD) runs the same graph, so it is equally
    fast whatever two measurements on a drifting machine said.
    ``correct`` maps trial number -> per-image correctness on the test split; records carry ``latency``.
    """
    lo, hi = base["latency"]["p95_ci95_ms"]
    hi = max(hi, base["latency_p95_ms"])
    rank = {"dominated": 2, "not distinguishable": 1, "not dominated": 0}
    best = None
    for m in sorted(front, key=lambda r: -r["test_accuracy"]):
        twin = same_architecture(m, base)
        if not twin and min(m["latency"]["p95_ci95_ms"][0], m["latency_p95_ms"]) > hi:
            continue
        t = compare(correct[m["trial"]], base_correct)
        faster = not twin and m["latency"]["p95_ci95_ms"][1] < lo
        why = "same architecture: equally fast" if twin else None
        if t["verdict"] == "a more accurate":
            v, why = "dominated", "more accurate at equal or lower latency"
        elif faster and t["verdict"] == "not distinguishable" and m["test_accuracy"] >= base["test_accuracy"]:
            v, why = "dominated", "clearly faster, accuracy not distinguishable"
        elif t["verdict"] == "not distinguishable":
            v = "not distinguishable"
        else:
            v, why = "not dominated", "the baseline is more accurate"
        if best is None or rank[v] > rank[best["verdict"]]:
            best = {"verdict": v, "why": why, "trial": m["trial"], "p_value": t["p_value"],
                    "only_trial_right": t["only_a_right"], "only_baseline_right": t["only_b_right"]}
    return best or {"verdict": "not dominated", "why": None, "trial": None, "p_value": None}


def same_architecture(a: dict, b: dict) -> bool:
    """Two records of one graph: equal MACs and parameters, both int8 or both not, file sizes within 2%."""
    keys = ("macs", "params", "int8", "size_bytes")
    if not all(a.get(k) is not None and b.get(k) is not None for k in keys):
        return False
    return (a["macs"], a["params"], a["int8"]) == (b["macs"], b["params"], b["int8"]) \
        and abs(a["size_bytes"] - b["size_bytes"]) <= 0.02 * max(a["size_bytes"], b["size_bytes"])


def hypervolume(points: list[tuple[float, float]]) -> float:
    """Area dominated by ``points`` (both coordinates maximised) above the reference point (0, 0)."""
    pts = sorted(((x, y) for x, y in points if x > 0 and y > 0), key=lambda p: (-p[0], -p[1]))
    area, top = 0.0, 0.0
    for x, y in pts:  # sweep from the largest x: each point adds the strip [0, x] x [top, y]
        if y > top:
            area += x * (y - top)
            top = y
    return area


def front_hypervolume(front: list[dict], teacher_p95_ms: float, floor: float = 0.80) -> dict:
    """The front's hypervolume in (log10 of the teacher's p95 over the member's, test accuracy - ``floor``),
    reference point (0, 0): members slower than the teacher or below ``floor`` add nothing. Machine speed
    cancels in the ratio; a front that reaches further toward fast and accurate scores higher."""
    pts = [(math.log10(teacher_p95_ms / r["latency_p95_ms"]), r["test_accuracy"] - floor) for r in front]
    return {"value": hypervolume(pts), "x": "log10(teacher p95 / member p95)",
            "y": f"test accuracy - {floor:.2f}", "reference_point": [0, 0]}


# How much faster at trial time another, as accurate trial must have been for a trial to be out of the final
# measurement's reach: the p95 of one model moved by up to ~1.6x between minutes of a study (results/README.md).
NEAR_FRONT = 1.6


def pareto_indices(points: list[tuple[float, float]], margin: float = 1.0) -> list[int]:
    """Indices of the non-dominated (accuracy to maximise, latency to minimise) points, fastest first. With
    ``margin`` > 1 a point is left out only when another is at least as accurate and ``margin`` times as fast:
    those a measurement that far off could still put on the front."""
    front = []
    for i, (acc_i, lat_i) in enumerate(points):
        dominated = any(acc_j >= acc_i and lat_j * margin <= lat_i and (acc_j > acc_i or lat_j * margin < lat_i)
                        for j, (acc_j, lat_j) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (points[i][1], -points[i][0]))
