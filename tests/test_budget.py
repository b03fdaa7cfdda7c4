"""search.wall_time_s: the whole run within a budget, the search getting what the rest of the run leaves it."""

import datetime
import time

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState

from compress.search import budget
from compress.recipe import load_recipe, with_values
from compress.search.halving import rest_overruns, short_schedule
from compress.search.study import search_fingerprint
from compress.report import print_study_summary
from compress.search.run import run_study
from compress.search.workers import budget_left


def _recipe(*overrides):
    return load_recipe("recipes/tiny_search.yaml", list(overrides))


def _trial(number: int, seconds: float, width: int, val: float, p50: float, macs: int,
           overrides: dict | None = None) -> FrozenTrial:
    """A complete, feasible trial of the tiny recipe's CNN (2 epochs of distillation, not pruned, unless
    ``overrides`` say otherwise) that took ``seconds``."""
    start = datetime.datetime(2026, 11, 27, 12, 0, 0)
    params = {"student.width": width, "prune.enabled": False, "quantize.enabled": False}
    return FrozenTrial(
        number=number, state=TrialState.COMPLETE, value=None, values=[val, 1.25 * p50],
        datetime_start=start, datetime_complete=start + datetime.timedelta(seconds=seconds), params=params,
        distributions={"student.width": CategoricalDistribution([4, 8, 12]),
                       "prune.enabled": CategoricalDistribution([True, False]),
                       "quantize.enabled": CategoricalDistribution([True, False])},
        user_attrs={"metrics": {"val_accuracy": val, "test_accuracy": val, "latency_p50_ms": p50,
                                "latency_p95_ms": 1.25 * p50, "throughput_sps": 1e3 / p50, "macs": macs,
                                "params": 1000 * width, "size_bytes": 4000 * width, "int8": False},
                    **({"overrides": overrides, "halving": {"promoted": False}} if overrides else {})},
        system_attrs={"constraints": [-0.1, -1.0, -1.0]}, intermediate_values={}, trial_id=number)


def _study(*trials: FrozenTrial) -> optuna.Study:
    study = optuna.create_study(directions=["maximize", "minimize"])
    for t in trials:
        study.add_trial(t)
    return study


def test_the_budget_is_not_part_of_the_study():
    """A run with another budget resumes the same study, as with search.timeout_s."""
    assert _recipe().search.wall_time_s is None
    assert search_fingerprint(_recipe()) == search_fingerprint(_recipe("search.wall_time_s=900"))


def test_the_rest_of_the_run_is_predicted_from_the_studys_own_trials():
    r = _recipe("search.wall_time_s=600")
    # Trial 1 kept 1 of its 2 epochs (halving): its full schedule takes 2 x 70 s, longer than trial 0's 100 s.
    # Trial 2 took longest, but trial 1 is as accurate and 4x as fast: out of the final measurement's reach, it
    # cannot be chosen.
    study = _study(_trial(0, 100.0, 8, 0.90, 0.08, 1_000_000),
                   _trial(1, 70.0, 4, 0.85, 0.05, 500_000, {"distill.train.epochs": 1}),
                   _trial(2, 300.0, 12, 0.84, 0.20, 1_500_000))
    assert budget.tail([], r) is None  # nothing trained: nothing to predict from
    rest = budget.tail(study.trials, r)
    assert rest["parts"]["training"] == pytest.approx(140.0, abs=0.5)
    lat, cap = r.latency, r.capacity
    alone = (min(lat.max_seconds, lat.max_runs * 0.08e-3) + min(lat.max_seconds, lat.max_runs * 0.05e-3)
             + lat.max_seconds + 3 * budget.MEASURE_OVERHEAD_S)  # the teacher and both trials, each on the front
    baselines = 2 * budget.N_BASELINES * (lat.max_seconds + budget.MEASURE_OVERHEAD_S)
    assert rest["parts"]["final_measurement"] == pytest.approx(2 * alone + baselines)
    assert rest["parts"]["capacity"] == pytest.approx(3 * len(cap.batch_sizes) * len(cap.threads) * 2
                                                      * cap.max_seconds)
    assert rest["seconds"] == pytest.approx(sum(rest["parts"].values()))
    no_baselines = budget.tail(study.trials, _recipe("search.baselines=false"))
    assert no_baselines["parts"]["final_measurement"] == pytest.approx(2 * alone)


def test_no_trial_starts_that_would_end_after_the_time_the_rest_of_the_run_needs():
    r = _recipe("search.wall_time_s=600", "search.n_trials=30")
    study = _study(_trial(0, 100.0, 8, 0.90, 0.08, 1_000_000), _trial(1, 40.0, 4, 0.85, 0.05, 500_000))
    assert budget_left(study, r) is None  # no deadline: the trial budget only
    budget.begin(study, r, time.time())
    assert budget_left(study, r) is None  # 10 minutes, of which ~2 for the rest of the run
    tail = budget.tail(study.trials, r)["seconds"]
    # 60 s left for trials after the rest of the run, less than the median trial (70 s): no new trial.
    budget.begin(study, r, time.time() + tail + 60.0 - 600)
    why = budget_left(study, r)
    assert "search.wall_time_s 600 s" in why and "typical trial (1.2 min)" in why
    budget.end(study)
    assert budget_left(study, r) is None
    # Before any trial has trained there is nothing to predict from: the first trial starts whatever the budget.
    empty = _study()
    budget.begin(empty, r, time.time() - 600)
    assert budget_left(empty, r) is None


def test_a_promotion_waits_for_the_run_budget_too(monkeypatch):
    from compress.search import halving

    r = _recipe("search.halving.enabled=true", "distill.train.epochs=8", "search.wall_time_s=600")
    cnn = with_values(r, {"prune.enabled": False})
    short = short_schedule(cnn)  # 2 of 8 epochs
    # The other trial kept its 1-epoch short schedule: its recipe cannot be made from this trial's, whose restart
    # is at epoch 2.
    study = _study(_trial(0, 100.0, 8, 0.90, 0.08, 1_000_000), _trial(1, 30.0, 4, 0.80, 0.05, 500_000,
                                                                        {"distill.train.epochs": 1}))
    monkeypatch.setattr(halving, "busy_seconds", lambda trials: 0.0)
    tail = budget.tail(study.trials, r)["seconds"]
    budget.begin(study, r, time.time() + tail + 100.0 - 600)  # 100 s left for the search
    # 60 s for 2 epochs: the 6 left take ~180 s, past what the run leaves the search. The trial's own recipe
    # (its restart) is not the study's, which the other trials' recipes are made from.
    trial = with_values(cnn, {"distill.train.restart_epochs": 2})
    why = rest_overruns(study, trial, short, 60.0, r)
    assert "~3.0 min" in why and "search.wall_time_s" in why
    assert rest_overruns(study, trial, short, 20.0, r) is None  # 6 x 10 s: fits


@pytest.mark.timeout(600)
def test_a_run_past_its_budget_stops_after_its_first_trial_and_says_what_it_predicted(tmp_path, capsys, monkeypatch):
    from compress.search import baselines as bl

    # The chosen trial's full schedule is kept in the shared cache: its own here, so that the test of the same
    # trial under search.timeout_s (test_halving) still trains it.
    monkeypatch.setattr(bl, "CACHE_DIR", tmp_path / "cache")
    r = _recipe(f"output_dir={tmp_path}", "search.baselines=false", "capacity.enabled=false", "search.n_trials=3",
                "search.wall_time_s=1", "search.halving.enabled=true", "distill.train.epochs=4",
                "search.space={student.width: 8, prune.enabled: [false], quantize.enabled: [false]}")
    summary = run_study(r)
    study = optuna.load_study(study_name=r.name, storage=f"sqlite:///{tmp_path}/{r.name}/study.db")
    assert len(study.trials) == 1
    # The first trial starts whatever the budget, wins its rung as the first of its tier, and stops at its short
    # schedule: the budget is gone.
    assert "search.wall_time_s" in study.trials[0].user_attrs["halving"]["late"]
    assert "deadline" in study.user_attrs and study.user_attrs["deadline"] is None  # cleared for later workers
    b = summary["wall_time_budget"]
    assert b["wall_time_s"] == 1 and b["predicted_after_search_s"] > 0 and b["after_search_s"] > 0
    assert set(b["predicted_parts_s"]) == {"training", "final_measurement", "capacity", "report"}
    print_study_summary(summary)
    out = capsys.readouterr().out
    assert "no new trial from this worker: the run's time budget (search.wall_time_s 1 s)" in out
    assert "run budget 0.0 min (search.wall_time_s)" in out


def test_a_failed_run_leaves_no_deadline_behind(tmp_path, monkeypatch):
    """A worker that joins the study after a run failed is not stopped by that run's budget."""
    from compress.search import run as run_mod

    def broken(recipe):
        raise RuntimeError("the data went away")

    monkeypatch.setattr(run_mod, "prepare", broken)
    r = _recipe(f"output_dir={tmp_path}", "search.wall_time_s=600")
    with pytest.raises(RuntimeError, match="the data went away"):
        run_study(r)
    study = optuna.load_study(study_name=r.name, storage=f"sqlite:///{tmp_path}/{r.name}/study.db")
    assert "deadline" in study.user_attrs and study.user_attrs["deadline"] is None
