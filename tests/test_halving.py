"""search.halving: a short schedule for every candidate that trains, the full one only when promoted."""

import csv

import optuna
import pytest

from compress.recipe import load_recipe, with_values
from compress.search.halving import promote, short_schedule
from compress.search.study import search_fingerprint
from compress.report import print_study_summary
from compress.search.run import run_study


def _recipe(*overrides):
    return load_recipe("recipes/tiny_search.yaml", list(overrides))


def _full_schedule(recipe, chosen, data, teacher, tinfo, teacher_val, target):
    """What the study does with its chosen trial after the search, on its own: planned, built, judged."""
    from compress.search import baselines as bl
    from compress.search.halving import full_plan, full_result

    plan = full_plan(recipe, chosen)
    if plan is None:
        return None, None
    return full_result(recipe, chosen, plan, bl.build(plan.build, data, teacher, tinfo), data, teacher_val, target, 0)


def test_short_schedule_cuts_every_schedule_the_candidate_trains():
    r = _recipe("search.halving.enabled=true", "distill.train.epochs=8", "prune.finetune.epochs=4")
    assert short_schedule(with_values(r, {"prune.enabled": True})) == {"distill.train.epochs": 2,
                                                                       "prune.finetune.epochs": 1}
    assert short_schedule(with_values(r, {"prune.enabled": False})) == {"distill.train.epochs": 2}
    # A pruned teacher trains its fine-tuning schedule only; the teacher as is does not train at all.
    teacher = with_values(r, {"student.model": "teacher", "prune.enabled": True, "prune.ratio": 0.5})
    assert short_schedule(teacher) == {"prune.finetune.epochs": 1}
    assert short_schedule(with_values(teacher, {"prune.ratio": 0.0})) == {}
    # One-epoch schedules cannot get shorter; halving off changes nothing.
    assert short_schedule(with_values(r, {"distill.train.epochs": 1, "prune.enabled": False})) == {}
    assert short_schedule(_recipe("distill.train.epochs=8")) == {}
    # Promotion is decided at the first schedule's restart: when that one cannot get shorter, no halving.
    assert short_schedule(with_values(r, {"distill.train.epochs": 1, "prune.enabled": True})) == {}


def test_a_candidate_not_promoted_is_what_its_short_recipe_makes(tiny_data, tmp_path):
    """The whole candidate (distil with a restart, stopped at it; prune; fine-tune cut short; export): the same
    model as the recipe with the short schedule's epochs, which is what the trial records as its recipe."""
    import numpy as np

    from compress.export import onnx_logits
    from compress.pipeline import compress_student
    from compress.teacher import load_teacher

    # On the CPU: CUDA's kernels are not bit-reproducible run to run, so on a GPU "the same model" holds only
    # to float rounding.
    r = load_recipe("recipes/tiny.yaml", ["search.halving.enabled=true", "distill.train.epochs=4",
                                          "prune.finetune.epochs=4", "quantize.enabled=false",
                                          "distill.train.device=cpu", "prune.finetune.device=cpu"])
    short = short_schedule(r)
    assert short == {"distill.train.epochs": 1, "prune.finetune.epochs": 1}
    teacher, tinfo = load_teacher(r.teacher)
    asked = []
    stopped = compress_student(with_values(r, {"distill.train.restart_epochs": 1}), tiny_data, teacher, tinfo,
                               tmp_path / "stopped", at_restart=lambda acc, s: asked.append(acc) or False,
                               short=short)
    made = compress_student(with_values(r, short), tiny_data, teacher, tinfo, tmp_path / "short")
    assert len(asked) == 1 and [s.name for s in stopped] == [s.name for s in made]
    x = tiny_data.val.inputs().numpy()
    for a, b in zip(stopped, made):
        np.testing.assert_array_equal(onnx_logits(a.onnx, x), onnx_logits(b.onnx, x))


def test_halving_makes_another_study():
    r = _recipe()
    assert search_fingerprint(r) == search_fingerprint(_recipe("search.halving.short_fraction=0.25"))  # the default
    assert search_fingerprint(r) != search_fingerprint(_recipe("search.halving.enabled=true"))


def test_promotion_is_successive_halving_within_a_tier():
    r = _recipe("search.halving.enabled=true", "search.halving.reduction_factor=3")
    study = optuna.create_study(directions=["maximize", "minimize"])  # in memory; the rungs go beside it
    decisions = [promote(study, r, "cnn-17", acc)[0] for acc in (0.80, 0.70, 0.85, 0.60, 0.75, 0.90)]
    # First of a kind: promoted. Then, with fewer than 2x3 competitors, only a new best; with 6, the top 2.
    assert decisions == [True, False, True, False, False, True]
    # Another tier keeps its own ranking: a weak first candidate there is promoted.
    assert promote(study, r, "teacher-23", 0.50)[0] is True


def test_with_a_bootstrap_the_first_of_a_kind_waits_for_a_rival_but_a_named_candidate_goes_on():
    from compress.search.study import search_fingerprint

    r = _recipe("search.halving.enabled=true", "search.halving.bootstrap=1")
    study = optuna.create_study(directions=["maximize", "minimize"])
    decisions = [promote(study, r, "cnn-17", acc)[0] for acc in (0.80, 0.70, 0.85)]
    # The first is not promoted for being first; the second only for beating it; the third is the new best.
    assert decisions == [False, False, True]
    # A candidate of search.enqueue goes on whatever its rank, and its accuracy counts for the next one.
    assert promote(study, r, "teacher-23", 0.50, named=True)[0] is True
    assert promote(study, r, "teacher-23", 0.45)[0] is False
    # A bootstrap makes another study; none, the default, is the same study whether written or not.
    on = _recipe("search.halving.enabled=true")
    assert search_fingerprint(on) == search_fingerprint(_recipe("search.halving.enabled=true",
                                                                "search.halving.bootstrap=0"))
    assert search_fingerprint(on) != search_fingerprint(r)


@pytest.mark.timeout(900)
def test_a_search_with_halving_trains_short_first_and_records_what_each_model_had(tmp_path, capsys):
    import yaml

    from compress.recipe import recipe_from_dict

    data = yaml.safe_load(open("recipes/tiny_search.yaml"))
    data["output_dir"] = str(tmp_path)
    data["distill"]["train"]["epochs"] = 8  # short: 2 epochs, enough to tell the candidates apart
    data["capacity"]["enabled"] = False
    data["search"].update({"halving": {"enabled": True, "short_fraction": 0.25}, "baselines": False, "n_trials": 5})
    data["search"]["space"].update({"student.width": 8, "prune.enabled": [False]})  # one tier: they compete
    r = recipe_from_dict(data)
    summary = run_study(r)
    log = capsys.readouterr().out
    trials = optuna.load_study(study_name=r.name, storage=f"sqlite:///{tmp_path}/{r.name}/study.db").trials
    assert len(trials) == 5 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    promoted = [t.user_attrs["halving"]["promoted"] for t in trials]
    assert promoted[0] is True and False in promoted  # the first of its tier; a weaker one is not
    assert summary["n_trials_promoted"] == sum(promoted) and summary["n_trials_short_schedule"] == 5 - sum(promoted)
    # Every trial ran the first 2 epochs, the short schedule's cycle; only the promoted ones went on to epoch 8,
    # from that model (a warm restart), without training again from scratch.
    assert log.count("epoch 2/8:") == 5 and log.count("epoch 8/8:") == log.count("epoch 3/8:") == sum(promoted)
    assert sum(line.endswith("%: promoted") for line in log.splitlines()) == sum(promoted)
    for t in trials:
        h = t.user_attrs["halving"]
        assert h["short_schedule"] == {"distill.train.epochs": 2}
        assert t.user_attrs["overrides"] == ({"distill.train.restart_epochs": 2} if h["promoted"]
                                             else {"distill.train.epochs": 2})
        assert 0 < t.user_attrs["metrics"]["test_accuracy"] <= 1  # every model evaluated in full
    with open(tmp_path / r.name / "trials.csv") as f:
        rows = {int(row["trial"]): row["schedule"] for row in csv.DictReader(f)}
    assert rows == {t.number: "full" if t.user_attrs["halving"]["promoted"] else "short" for t in trials}
    # The artifact's recipe has the epochs its model was trained with.
    import json

    manifest = json.loads((tmp_path / r.name / "artifact" / "manifest.json").read_text())
    chosen = trials[summary["chosen_trial"]]
    train = manifest["recipe"]["distill"]["train"]
    if chosen.user_attrs["halving"]["promoted"]:
        assert train["epochs"] == 8 and train["restart_epochs"] == 2
    else:
        assert train["epochs"] == 2 and "restart_epochs" not in train


def _done(val, p95, family=None, short_val=None):
    """A finished trial as the search leaves it: measured; with ``family``, promoted from ``short_val``."""
    attrs = {"metrics": {"val_accuracy": val, "latency_p95_ms": p95}}
    if family:
        attrs["halving"] = {"promoted": True, "short_val_accuracy": short_val, "family": family}
    return optuna.trial.create_trial(values=[val, p95], user_attrs=attrs)


def test_a_rung_winner_that_cannot_reach_the_front_is_not_promoted():
    from compress.search.halving import cannot_reach_front

    study = optuna.create_study(directions=["maximize", "minimize"])
    study.add_trial(_done(0.93, 0.20))  # a finished trial that was never cut short: no gain to go by
    assert cannot_reach_front(study, "cnn", 0.85, 0.30) is None
    study.add_trial(_done(0.90, 0.50, "teacher", 0.80))  # another family's gain (+10 pp) says nothing of cnn's
    assert cannot_reach_front(study, "cnn", 0.85, 0.30) is None
    study.add_trial(_done(0.88, 0.06, "cnn", 0.86))  # a cnn gained 2 pp from its full schedule
    # 85% + 2 pp = 87% at best, and trial 0 is as fast and 93%: not worth the full schedule.
    why = cannot_reach_front(study, "cnn", 0.85, 0.30)
    assert why.startswith("trial 0 is as fast") and "87.00%" in why and "+2.00 pp" in why
    # Faster than every finished trial: it could stand on the front, whatever its accuracy.
    assert cannot_reach_front(study, "cnn", 0.60, 0.04) is None
    # As fast as trial 2 (0.06 ms) only: trial 2's 88% is not out of reach of 86.5% + 2 pp.
    assert cannot_reach_front(study, "cnn", 0.865, 0.06) is None
    assert cannot_reach_front(study, "cnn", 0.855, 0.06).startswith("trial 2 is as fast")
    assert cannot_reach_front(study, "cnn", 0.85, None) is None  # not timed before training (no service level)
    # Reaching trial 2's 88% by less than one standard error of it (0.65 pp on 2,500 images) tells nothing apart:
    # 86.4% + 2 pp = 88.4% is out of reach without the margin, within it with.
    assert cannot_reach_front(study, "cnn", 0.864, 0.06) is None
    why = cannot_reach_front(study, "cnn", 0.864, 0.06, n_val=2500)
    assert why.startswith("trial 2 is as fast") and "less one standard error of its accuracy (0.65 pp" in why
    assert cannot_reach_front(study, "cnn", 0.87, 0.06, n_val=2500) is None  # 89%: beyond it


@pytest.mark.timeout(600)
def test_a_study_keeps_a_rung_winner_behind_the_front_short(tmp_path, capsys, monkeypatch):
    from compress.search import objective

    seen = []

    def behind(study, family, short_val, p95_ms, n_val):  # the rule is tested above; here, what a study does with it
        seen.append((family, p95_ms))
        return "trial 0 is as fast and already more accurate" if len(seen) > 1 else None

    monkeypatch.setattr(objective, "cannot_reach_front", behind)
    r = _recipe(f"output_dir={tmp_path}", "search.halving.enabled=true", "distill.train.epochs=4",
                "search.baselines=false", "capacity.enabled=false", "search.n_trials=2", "search.startup_trials=2",
                "search.skip_slow=true", "slo.p95_ms=10",  # timed before training: a p95 for the rule, none too slow
                "search.space={student.width: [8, 16], prune.enabled: [false], quantize.enabled: [false]}")
    summary = run_study(r)
    trials = optuna.load_study(study_name=r.name, storage=f"sqlite:///{tmp_path}/{r.name}/study.db").trials
    # Each is the first of its tier (width 8 and 16 differ 4x in MACs): both win their rung; the rule is asked
    # with the architecture's p95 timed before training, and keeps the second short.
    assert len(seen) == 2 and all(family == "cnn" and p95 > 0 for family, p95 in seen)  # n_val: the split's
    h = trials[1].user_attrs["halving"]
    assert h["promoted"] is False and h["behind"] == "trial 0 is as fast and already more accurate"
    assert h["family"] == "cnn" and trials[1].user_attrs["overrides"] == {"distill.train.epochs": 1}
    assert trials[0].user_attrs["halving"]["promoted"] is True
    assert summary["n_trials_short_behind_front"] == summary["n_trials_short_schedule"] == 1
    assert "trial 1: short schedule val" in (out := capsys.readouterr().out) and "kept short (behind the front)" in out
    print_study_summary(summary)
    assert "1 kept their short schedule (of them: 1 as they could not reach the front)" in capsys.readouterr().out


def test_the_front_rule_is_on_by_default_and_part_of_the_study():
    on = _recipe("search.halving.enabled=true")
    assert on.search.halving.front is True
    assert search_fingerprint(on) == search_fingerprint(_recipe("search.halving.enabled=true",
                                                                "search.halving.front=true"))
    assert search_fingerprint(on) != search_fingerprint(_recipe("search.halving.enabled=true",
                                                                "search.halving.front=false"))


def test_promotion_waits_for_the_time_budget(monkeypatch):
    """A rung winner goes on only when the rest of its full schedule, at its short schedule's pace, ends within
    search.timeout_s of the study's busy time."""
    from compress.search import halving
    from compress.search.halving import rest_overruns

    r = _recipe("search.halving.enabled=true", "distill.train.epochs=8", "prune.finetune.epochs=4",
                "search.timeout_s=600")
    cnn = with_values(r, {"prune.enabled": True})
    short = short_schedule(cnn)  # 2 of 8 distillation epochs, 1 of 4 fine-tuning ones
    study = optuna.create_study(directions=["maximize", "minimize"])
    monkeypatch.setattr(halving, "busy_seconds", lambda trials: 400.0)  # 200 s of the budget left
    # 60 s for 2 epochs: the 6 + 3 epochs left take ~270 s at 30 s an epoch, past the budget.
    why = rest_overruns(study, cnn, short, 60.0)
    assert "~4.5 min" in why and "3.3 min left" in why
    assert rest_overruns(study, cnn, short, 40.0) is None  # 9 x 20 s = 180 s: fits
    assert rest_overruns(study, with_values(cnn, {"search.timeout_s": None}), short, 60.0) is None  # no budget


@pytest.mark.timeout(600)
def test_a_rung_winner_past_the_budget_is_finished_as_its_short_schedule(tmp_path, capsys):
    r = _recipe(f"output_dir={tmp_path}", "search.halving.enabled=true", "distill.train.epochs=4",
                "search.baselines=false", "capacity.enabled=false", "search.n_trials=3", "search.timeout_s=0.001",
                "search.space={student.width: 8, prune.enabled: [false], quantize.enabled: [false]}")
    summary = run_study(r)
    trials = optuna.load_study(study_name=r.name, storage=f"sqlite:///{tmp_path}/{r.name}/study.db").trials
    # The first trial starts (no time spent yet) and wins its rung as the first of its tier, but its budget is
    # gone by then: it keeps its short schedule, and no trial starts after it.
    assert len(trials) == 1
    h = trials[0].user_attrs["halving"]
    assert h["promoted"] is False and "time budget" in h["late"]
    assert trials[0].user_attrs["overrides"] == {"distill.train.epochs": 1}
    assert summary["n_trials_short_schedule"] == summary["n_trials_short_for_budget"] == 1
    # Chosen, it is trained on the rest of its full schedule after the search, from where its trial stopped;
    # the state is in the artifact store too, for a finisher on another machine (here: the local copy lost).
    state = tmp_path / r.name / "trials" / "0000" / "short_state.pt"
    assert state.is_file() and trials[0].user_attrs["restart_state"]["artifact"]
    assert summary["full_schedule"]["resumed_from_short"] is True
    out = capsys.readouterr().out
    assert "kept short (run budget)" in out and "resuming at epoch 2/4" in out
    kept = state.read_bytes()
    state.unlink()
    assert run_study(r, report_only=True)["full_schedule"]["resumed_from_short"] is True
    assert state.read_bytes() == kept
    from compress.report import print_study_summary

    print_study_summary(summary)
    assert "1 kept their short schedule (of them: 1 for the time budget)" in capsys.readouterr().out


def test_the_chosen_candidate_kept_short_is_trained_on_its_full_schedule(tiny_data, tmp_path, monkeypatch):
    """Cheap early, exact late: the model handed over gets the schedule the recipe asks for, replaces the short
    one only when at least as accurate on validation, and a report run again does not train it again."""
    from compress.search import baselines as bl
    from compress.teacher import load_teacher

    monkeypatch.setattr(bl, "CACHE_DIR", tmp_path / "cache")
    made = []
    real = bl.compress_student
    monkeypatch.setattr(bl, "compress_student", lambda r, *a, **k: made.append(r.distill.train.epochs) or real(r, *a, **k))
    r = _recipe(f"output_dir={tmp_path}", "data.train_subset=1000", "data.val_subset=300", "data.test_subset=300")
    teacher, tinfo = load_teacher(r.teacher)
    target = (r.target.batch_size, r.target.threads, r.target.device)

    def short(val_accuracy):
        return {"trial": 3, "schedule": "short", "overrides": {"distill.train.epochs": 1}, "feasible": False,
                "params_": {"student.width": 4, "prune.enabled": False, "quantize.enabled": False},
                "val_accuracy": val_accuracy, "artifact_path": "trials/3/model.onnx", "model_sha256": "x"}

    chosen = short(0.0)
    handed, result = _full_schedule(r, chosen, tiny_data, teacher, tinfo, 0.9, target)
    assert made == [2]  # tiny_search's distill.train.epochs
    assert result["handed_over"] == "full" and result["trial_schedule"] == {"distill.train.epochs": 1}
    assert handed["artifact_path"].endswith("trial_3_full/model.onnx") and handed["overrides"] == {}
    assert handed["val_accuracy"] == result["full_val_accuracy"] > 0 and "model_sha256" not in handed
    assert handed["full_schedule"] == result and handed["latency_measured"] == "final"
    assert chosen == short(0.0)  # the trial's record is not changed
    # More accurate on its short schedule (by construction here): the short one stays, the numbers are said.
    kept, result = _full_schedule(r, short(1.0), tiny_data, teacher, tinfo, 0.9, target)
    assert made == [2]  # the same full model, from the first call's folder
    assert result["handed_over"] == "trial" and kept["artifact_path"] == "trials/3/model.onnx"
    assert kept["overrides"] == {"distill.train.epochs": 1} and kept["val_accuracy"] == 1.0
    # A trial that had its full schedule is handed over as it is, unless it trained on part of the split.
    assert _full_schedule(r, {**short(0.5), "schedule": "full"}, tiny_data, teacher, tinfo, 0.9, target)[1] is None
    part = with_values(r, {"search.train_fraction": 0.5})
    _, result = _full_schedule(part, {**short(1.0), "schedule": "full"}, tiny_data, teacher, tinfo, 0.9, target)
    assert made == [2] and result["trial_schedule"] == {} and result["trial_train_fraction"] == 0.5


def _logits_equal(a, b, split) -> None:
    """Two ONNX models (paths or stages) give the same logits on ``split``."""
    import numpy as np

    from compress.export import onnx_logits

    x = split.inputs().numpy()
    np.testing.assert_array_equal(onnx_logits(getattr(a, "onnx", a), x), onnx_logits(getattr(b, "onnx", b), x))


def test_a_schedule_stopped_at_its_restart_resumes_from_its_saved_state(tiny_data, tmp_path, capsys):
    """The state saved where halving stopped a candidate lets the rest of its schedule go on later: the same
    model as the candidate promoted at once (then its pruned fine-tuning whole), the first cycle not trained
    again; a state that cannot be read, or is another schedule's, is said and the schedule trained whole."""
    from compress.pipeline import compress_student
    from compress.teacher import load_teacher

    # On the CPU, for bit-equal models (see the test above).
    r = load_recipe("recipes/tiny.yaml", ["distill.train.epochs=3", "distill.train.restart_epochs=1",
                                          "prune.finetune.epochs=2", "quantize.enabled=false",
                                          "distill.train.device=cpu", "prune.finetune.device=cpu"])
    teacher, tinfo = load_teacher(r.teacher)
    short = {"distill.train.epochs": 1, "prune.finetune.epochs": 1}
    state = tmp_path / "state.pt"
    epochs = []
    stopped = compress_student(r, tiny_data, teacher, tinfo, tmp_path / "stopped", at_restart=lambda a, s: False,
                               short=short, state=state, on_epoch=lambda e, a: epochs.append(e))
    assert state.is_file() and epochs == [0]
    whole = compress_student(r, tiny_data, teacher, tinfo, tmp_path / "whole", at_restart=lambda a, s: True)
    capsys.readouterr()
    epochs.clear()
    resumed = compress_student(r, tiny_data, teacher, tinfo, tmp_path / "resumed", state=state,
                               on_epoch=lambda e, a: epochs.append(e))
    assert epochs == [1, 2]  # its first cycle is not trained again
    assert f"resuming at epoch 2/3 from the state saved at the restart ({state})" in capsys.readouterr().out
    assert [s.name for s in resumed] == [s.name for s in whole]
    for a, b in zip(resumed, whole):
        _logits_equal(a, b, tiny_data.val)
    with pytest.raises(AssertionError):  # the stopped candidate's pruned model was fine-tuned for 1 epoch, not 2
        _logits_equal(stopped[-1], whole[-1], tiny_data.val)
    # Another schedule's state (4 epochs, not 3), then a torn file: trained from the start, and said so.
    other = with_values(r, {"distill.train.epochs": 4})
    compress_student(other, tiny_data, teacher, tinfo, tmp_path / "other", state=state)
    assert "saved for another model or schedule than this one; training from the start" in capsys.readouterr().out
    state.write_bytes(state.read_bytes()[:100])
    again = compress_student(r, tiny_data, teacher, tinfo, tmp_path / "again", state=state)
    assert "cannot read the saved restart state" in capsys.readouterr().out
    _logits_equal(again[-1], whole[-1], tiny_data.val)


def test_the_chosen_candidate_kept_short_goes_on_from_its_saved_state(tiny_data, tmp_path, monkeypatch, capsys):
    """After the search, the chosen candidate that halving kept short (the study's time budget, say) is trained on
    the rest of its full schedule from the state its trial saved: the model its promotion would have made."""
    from compress.search import baselines as bl
    from compress.pipeline import RESTART_STATE, compress_student
    from compress.teacher import load_teacher

    monkeypatch.setattr(bl, "CACHE_DIR", tmp_path / "cache")
    r = _recipe(f"output_dir={tmp_path}", "data.train_subset=1000", "data.val_subset=300", "data.test_subset=300",
                "distill.train.device=cpu", "prune.finetune.device=cpu")
    teacher, tinfo = load_teacher(r.teacher)
    params = {"student.width": 4, "prune.enabled": False, "quantize.enabled": False}
    trial_recipe = with_values(r, {**params, "distill.train.restart_epochs": 1})  # what the trial trained
    folder = tmp_path / "trials" / "0003"
    compress_student(trial_recipe, tiny_data, teacher, tinfo, folder, at_restart=lambda a, s: False,
                     short={"distill.train.epochs": 1}, state=folder / RESTART_STATE)
    def short(trial):
        return {"trial": trial, "schedule": "short", "overrides": {"distill.train.epochs": 1}, "feasible": False,
                "params_": params, "val_accuracy": 0.0, "artifact_path": str(folder / "model.onnx"),
                "model_sha256": "x"}

    chosen = short(3)
    made = []
    real = bl.compress_student
    monkeypatch.setattr(bl, "compress_student", lambda *a, **k: made.append(k.get("state")) or real(*a, **k))
    capsys.readouterr()
    handed, result = _full_schedule(r, chosen, tiny_data, teacher, tinfo, 0.9, (1, 1, "cpu"))
    assert made == [folder / RESTART_STATE] and result["resumed_from_short"] is True
    assert handed["overrides"] == {"distill.train.restart_epochs": 1}  # its recipe: the promoted trial's
    out = capsys.readouterr().out
    assert "(resumed from its short one)" in out and "resuming at epoch 2/2" in out
    promoted = compress_student(trial_recipe, tiny_data, teacher, tinfo, tmp_path / "promoted",
                                at_restart=lambda a, s: True)
    _logits_equal(handed["artifact_path"], promoted[-1], tiny_data.val)
    # Without the saved state (a trial another machine ran), the whole schedule is trained from the start.
    (folder / RESTART_STATE).unlink()
    _, result = _full_schedule(r, short(4), tiny_data, teacher, tinfo, 0.9, (1, 1, "cpu"))
    assert made == [folder / RESTART_STATE, None] and result["resumed_from_short"] is False


def test_tiers_part_candidates_of_equal_macs_but_different_latency():
    from compress.search.halving import tier_of

    # The 8-wide 2-deep and the 16-wide 1-deep CNN: ~2 MMACs each; p50 as timed in two hours of the reference machine.
    assert tier_of("cnn", 1_939_946, 0.060) != tier_of("cnn", 2_007_690, 0.044)
    assert tier_of("cnn", 1_939_946, 0.083) != tier_of("cnn", 2_007_690, 0.054)
    assert tier_of("cnn", 1_939_946) == tier_of("cnn", 2_007_690) == "cnn-20"  # untimed: MACs alone, as before
    assert tier_of("cnn", 1_939_946, 0.060) != tier_of("teacher", 1_939_946, 0.060)


@pytest.mark.timeout(600)
def test_a_named_candidate_is_promoted_as_the_first_of_its_kind_and_the_next_one_must_beat_it(tmp_path):
    r = _recipe(f"output_dir={tmp_path}", "search.halving.enabled=true", "search.halving.bootstrap=1",
                "distill.train.epochs=4", "search.baselines=false", "capacity.enabled=false", "search.n_trials=2",
                "search.startup_trials=0", "search.enqueue=[{student.width: 8, distill.temperature: 4.0}]",
                "search.space={student.width: 8, distill.temperature: {low: 2.0, high: 6.0}, "
                "prune.enabled: [false], quantize.enabled: [false]}")
    run_study(r)
    trials = optuna.load_study(study_name=r.name, storage=f"sqlite:///{tmp_path}/{r.name}/study.db").trials
    first, second = (t.user_attrs["halving"] for t in trials)
    assert trials[0].user_attrs["covering_index"] == 0 and trials[0].params["distill.temperature"] == 4.0
    assert first["promoted"] is True  # named: not held back by the bootstrap
    # The same tier: the second goes on only by beating the first's short schedule.
    assert second["promoted"] is (second["short_val_accuracy"] >= first["short_val_accuracy"])
