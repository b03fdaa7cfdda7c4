import json
from pathlib import Path

import numpy as np
import pytest

from compress.measure.verdicts import (accuracy_ci95, baseline_verdict, compare, front_hypervolume, hypervolume,
                               mcnemar)

RESULTS = Path(__file__).resolve().parents[1] / "results"


def test_wilson_interval_known_value_and_width():
    lo, hi = accuracy_ci95(90, 100)
    assert lo == pytest.approx(0.8256, abs=1e-4) and hi == pytest.approx(0.9448, abs=1e-4)
    lo2, hi2 = accuracy_ci95(9000, 10000)
    assert lo < lo2 < 0.9 < hi2 < hi  # more images, narrower interval around the same accuracy
    assert accuracy_ci95(100, 100)[1] == pytest.approx(1.0) and accuracy_ci95(100, 100)[0] < 1.0


def _pair(n, both, only_a, only_b):
    """Correctness arrays over n images: ``both`` right for both, then a-only, then b-only, rest wrong."""
    a, b = np.zeros(n, bool), np.zeros(n, bool)
    a[:both] = b[:both] = True
    a[both:both + only_a] = True
    b[both + only_a:both + only_a + only_b] = True
    return a, b


def test_mcnemar_exact_p_values():
    a, b = _pair(100, 80, 10, 0)
    t = mcnemar(a, b)
    assert (t["only_a_right"], t["only_b_right"]) == (10, 0)
    assert t["p_value"] == pytest.approx(2 * 0.5**10)
    assert mcnemar(b, a)["p_value"] == pytest.approx(t["p_value"])  # two-sided, symmetric
    assert mcnemar(a, a)["p_value"] == 1.0
    with pytest.raises(ValueError, match="different image sets"):
        mcnemar(a, b[:50])


def test_same_accuracies_apart_by_0_3pp_can_go_either_way():
    # 93.9% vs 93.6% on 10,000 images: 30 more right. Disagreeing on 40 images it is a difference;
    # disagreeing on 600 it is not. Rounded accuracies cannot tell these apart; the paired test can.
    few = compare(*_pair(10000, 9355, 35, 5))
    many = compare(*_pair(10000, 9075, 315, 285))
    assert few["verdict"] == "a more accurate" and few["p_value"] < 0.05
    assert many["verdict"] == "not distinguishable" and many["p_value"] > 0.05


def _model(trial, acc, p95, ci):
    return {"trial": trial, "test_accuracy": acc, "latency_p95_ms": p95, "latency": {"p95_ci95_ms": list(ci)}}


def test_baseline_verdicts():
    n = 10000
    base_c = np.zeros(n, bool)
    base_c[:9300] = True  # 93.0%
    base = _model(None, 0.93, 1.0, (0.95, 1.05))

    def member(trial, gained, lost, p95, ci):
        c = base_c.copy()
        c[9300:9300 + gained] = True
        c[:lost] = False
        return _model(trial, c.mean(), p95, ci), c

    better, c_better = member(1, 60, 10, 1.02, (0.98, 1.06))     # +0.5 pp, 70 discordant: significant
    same, c_same = member(2, 40, 30, 1.0, (0.96, 1.04))         # +0.1 pp of 70: not distinguishable
    worse, c_worse = member(3, 5, 60, 0.9, (0.88, 0.93))         # -0.55 pp, faster
    fast_same, c_fast = member(4, 35, 30, 0.5, (0.48, 0.52))     # clearly faster, +0.05 pp: dominated
    slower, c_slower = member(5, 200, 0, 3.0, (2.9, 3.1))        # far more accurate but slower: does not count
    overlap, c_overlap = member(6, 60, 10, 1.1, (1.04, 1.2))     # p95 above the baseline's CI, intervals overlap

    def v(*ms):
        return baseline_verdict(base, base_c, [m for m, _ in ms], {m["trial"]: c for m, c in ms})

    assert v((better, c_better))["verdict"] == "dominated"
    got = v((same, c_same))
    assert got["verdict"] == "not distinguishable" and got["trial"] == 2 and got["p_value"] > 0.05
    got = v((worse, c_worse))
    assert (got["verdict"], got["trial"], got["why"]) == ("not dominated", 3, "the baseline is more accurate")
    assert got["p_value"] < 0.05
    assert v((better, c_better))["why"] == "more accurate at equal or lower latency"
    assert v((fast_same, c_fast)) | {"p_value": None} == {
        "verdict": "dominated", "why": "clearly faster, accuracy not distinguishable", "trial": 4, "p_value": None,
        "only_trial_right": 35, "only_baseline_right": 30}
    assert v((slower, c_slower)) == {"verdict": "not dominated", "why": None, "trial": None, "p_value": None}
    assert v((overlap, c_overlap))["verdict"] == "dominated"  # overlapping p95 intervals: equally fast
    # The strongest verdict over the members wins.
    assert v((same, c_same), (better, c_better), (worse, c_worse))["trial"] == 1
    # Numerically more accurate at equal latency is not enough: that is the "not distinguishable" case.
    assert same["test_accuracy"] > base["test_accuracy"]


def test_a_baseline_with_the_members_architecture_is_compared_at_equal_latency():
    # The chosen student and the same student without KD run one graph: a slower measurement of the
    # member (a drifting machine) must not let the baseline pass for faster and "not dominated".
    n = 10000
    base_c = np.zeros(n, bool)
    base_c[:9408] = True
    member_c = base_c.copy()
    member_c[:30] = False
    member_c[9408:9430] = True  # 94.00% vs 94.08%, 52 discordant images: not distinguishable
    arch = {"macs": 20_910_000, "params": 329_346, "int8": True, "size_bytes": 368_201}
    base = {**_model(None, base_c.mean(), 0.703, (0.69, 0.71)), **arch}
    member = {**_model(3, member_c.mean(), 0.744, (0.73, 0.76)), **arch, "size_bytes": 368_150}
    got = baseline_verdict(base, base_c, [member], {3: member_c})
    assert (got["verdict"], got["trial"], got["why"]) == ("not distinguishable", 3, "same architecture: equally fast")
    # Another architecture with those latencies is slower: it does not count against the baseline.
    other = {**member, "params": 329_000}
    assert baseline_verdict(base, base_c, [other], {3: member_c})["verdict"] == "not dominated"


def test_hypervolume_known_cases():
    assert hypervolume([(1.0, 0.1)]) == pytest.approx(0.1)
    assert hypervolume([(1.0, 0.1), (0.5, 0.2)]) == pytest.approx(0.1 + 0.5 * 0.1)
    assert hypervolume([(1.0, 0.1), (0.5, 0.05)]) == pytest.approx(0.1)  # dominated point adds nothing
    assert hypervolume([(-0.2, 0.3), (1.0, -0.1)]) == 0.0  # slower than the teacher / below the floor
    front = [{"latency_p95_ms": 1.0, "test_accuracy": 0.9}, {"latency_p95_ms": 0.1, "test_accuracy": 0.85}]
    assert front_hypervolume(front, 10.0)["value"] == pytest.approx(2 * 0.05 + 1 * 0.05)


@pytest.mark.parametrize("pareto", sorted(RESULTS.glob("*/pareto.json")), ids=lambda p: p.parent.name)
def test_committed_hypervolume_matches_its_front(pareto):
    """Every committed search's summary carries its front's hypervolume."""
    s = json.loads(pareto.with_name("summary.json").read_text())
    front = json.loads(pareto.read_text())["front"]
    assert s["hypervolume"]["value"] == pytest.approx(front_hypervolume(front, s["teacher"]["latency_p95_ms"])["value"])
