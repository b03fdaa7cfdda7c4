import numpy as np
import pytest

from compress.measure.verdicts import pareto_indices
from compress.report import plot_pareto_png, write_csv
from compress.search.records import choose, tied


def _brute_force(points):
    """Sweep by latency (ties: most accurate first), keeping each point that beats every faster one."""
    order = sorted(range(len(points)), key=lambda i: (points[i][1], -points[i][0]))
    front, best = [], -np.inf
    for i in order:
        acc, lat = points[i]
        if acc > best:
            front.append(i)
            best = acc
        elif acc == best and lat == points[front[-1]][1] and points[front[-1]][0] == acc:
            front.append(i)  # an exact duplicate of a front point is not dominated either
    return sorted(front)


@pytest.mark.parametrize("seed", range(20))
def test_pareto_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 40))
    # Coarse values force ties in accuracy and in latency.
    points = [(float(a), float(b)) for a, b in zip(rng.integers(0, 8, n) / 8, rng.integers(1, 9, n) / 4)]
    assert sorted(pareto_indices(points)) == _brute_force(points)


def test_pareto_known_case():
    pts = [(0.90, 1.0), (0.92, 2.0), (0.91, 3.0), (0.80, 0.5), (0.92, 2.5)]
    assert pareto_indices(pts) == [3, 0, 1]  # fastest first


def test_twins_are_judged_at_one_latency():
    """Two copies of one architecture and int8 format (they differ only in training) run the same kernels:
    the less accurate leaves the front even where its own measurement read faster; another format, or another
    architecture, is a point of its own."""
    from compress.recipe import recipe_from_dict
    from compress.search.records import still_pareto

    recipe = recipe_from_dict({"name": "x", "student": {"model": "teacher"}, "quantize": {"enabled": True},
                               "search": {"space": {"quantize.format": ["qdq", "qoperator"]}}})

    def rec(trial, acc, p95, fmt="qdq", params=200, int8=True):
        return {"trial": trial, "val_accuracy": acc, "latency_p95_ms": p95, "params": params, "macs": 10 * params,
                "int8": int8, "params_": {"quantize.format": fmt}}

    front = [rec(0, 0.94, 0.175), rec(1, 0.926, 0.161), rec(2, 0.93, 0.170, fmt="qoperator"),
             rec(3, 0.90, 0.05, params=20, int8=False)]
    kept = still_pareto(front, recipe)
    assert [r["trial"] for r in kept] == [0, 2, 3] and all(r["pareto"] for r in kept)
    assert all("pareto" not in r for r in front)  # its argument is not changed
    # The chosen one stays whatever its twins.
    assert [r["trial"] for r in still_pareto(front, recipe, chosen=front[1]["trial"])] == [0, 1, 2, 3]
    # Equally accurate twins: one stays, the first.
    tied = [rec(0, 0.883, 0.1216), rec(1, 0.883, 0.1219), rec(2, 0.883, 0.1416), rec(3, 0.80, 0.05, params=20, int8=False)]
    assert [r["trial"] for r in still_pareto(tied, recipe)] == [0, 3]


def test_pareto_margin_keeps_what_a_remeasurement_could_put_on_the_front():
    """margin 1.6 (the final measurement's candidates): (0.90, 1.0) beats (0.88, 1.5) by 1.5x only, which
    noise can undo, but (0.87, 2.0) by 2x; a point no other is as accurate as stays either way."""
    pts = [(0.90, 1.0), (0.88, 1.5), (0.87, 2.0), (0.95, 9.0)]
    assert pareto_indices(pts) == [0, 3]
    assert pareto_indices(pts, margin=1.6) == [0, 1, 3]
    assert sorted(pareto_indices(pts, margin=1.6)) == sorted(set(pareto_indices(pts)) | {1})


def _rec(i, acc, lat, drop_ok=True, feasible=True):
    return {"trial": i, "val_accuracy": acc, "latency_p95_ms": lat, "feasible": feasible,
            "constraint": [-1 if feasible else 1, -1 if drop_ok else 1]}


def test_choice_is_most_accurate_feasible():
    front = [_rec(0, 0.80, 0.1), _rec(1, 0.85, 0.2), _rec(2, 0.90, 0.5, feasible=False)]
    assert choose(front)["trial"] == 1


def test_choice_is_the_fastest_feasible_member_as_accurate_on_validation_as_the_best():
    """Trial 2 is the most accurate feasible one (86%); trial 1 (85.5%) differs from it on 30 + 20 samples,
    which McNemar's test cannot tell from chance (p = 0.2): the faster trial 1 is taken. Trial 0 (80%) is
    clearly less accurate, and the infeasible trial 3 is never a candidate."""
    n = 2000
    right = {t: np.zeros(n, bool) for t in range(4)}
    right[2][:1720] = True
    right[1][:1690] = True
    right[1][1720:1740] = True
    right[0][:1600] = True
    right[3][:1900] = True
    front = [_rec(0, 0.80, 0.1), _rec(1, 0.855, 0.2), _rec(2, 0.86, 0.6), _rec(3, 0.95, 0.5, feasible=False)]
    assert choose(front, right)["trial"] == 1
    assert [r["trial"] for r in tied(front[:3], right)] == [1, 2]
    assert choose(front)["trial"] == 2  # without the validation samples: the most accurate
    right[1][1720:1730] = False  # 30 vs 10 discordant samples: p = 0.002, trial 2 is more accurate
    assert choose(front, right)["trial"] == 2


def test_choice_without_feasible_trial_is_fastest_within_accuracy_bound():
    front = [_rec(0, 0.70, 0.3, drop_ok=False, feasible=False), _rec(1, 0.88, 0.4, feasible=False),
             _rec(2, 0.90, 0.9, feasible=False)]
    assert choose(front)["trial"] == 1
    nothing_accurate = [_rec(0, 0.5, 0.3, False, False), _rec(1, 0.6, 0.9, False, False)]
    assert choose(nothing_accurate)["trial"] == 1


def test_plot_and_csv_from_records_alone(tmp_path):
    trials = [{"trial": i, "state": "COMPLETE", "feasible": i != 2, "pareto": i < 2, "val_accuracy": 0.8 + i / 100,
               "test_accuracy": 0.8, "latency_p50_ms": 0.1 * (i + 1), "latency_p95_ms": 0.12 * (i + 1),
               "params": 10, "macs": 100, "size_bytes": 1, "int8": True, "params_": {"student.width": 8 * (i + 1)}}
              for i in range(3)]
    refs = {"teacher": {"val_accuracy": 0.9, "test_accuracy": 0.9, "latency_p95_ms": 2.5, "latency_p50_ms": 2.4,
                        "params": 1, "macs": 1}}
    plot_pareto_png(tmp_path / "p.png", trials, refs, 0.25, "t")
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    write_csv(tmp_path / "t.csv", trials, ["student.width"])
    lines = (tmp_path / "t.csv").read_text().splitlines()
    assert len(lines) == 4 and lines[0].endswith("params.student.width") and lines[3].endswith(",24")
