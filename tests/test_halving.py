"""search.halving: a short schedule for every candidate that trains, the full one only when promoted."""

import csv

import optuna
import pytest

from compress.recipe import load_recipe, with_values
from compress.search import promote, search_fingerprint, short_schedule
from compress.study import run_study


def _recipe(*overrides):
    return load_recipe("recipes/tiny_search.yaml", list(overrides))


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


def test_halving_off_keeps_the_fingerprint_of_studies_made_before_it_existed():
    r = _recipe()
    assert search_fingerprint(r) == search_fingerprint(_recipe("search.halving.short_fraction=0.25"))
    assert search_fingerprint(r) != search_fingerprint(_recipe("search.halving.enabled=true"))
    # The hash of the resolved recipe without the section, as the code before it computed it.
    assert search_fingerprint(r) == "e334679fec06"  # what the code before halving gave


def test_promotion_is_successive_halving_within_a_tier():
    r = _recipe("search.halving.enabled=true", "search.halving.reduction_factor=3")
    study = optuna.create_study(directions=["maximize", "minimize"])  # in memory; the rungs go beside it
    decisions = [promote(study, r, "cnn-17", acc)[0] for acc in (0.80, 0.70, 0.85, 0.60, 0.75, 0.90)]
    # First of a kind: promoted. Then, with fewer than 2x3 competitors, only a new best; with 6, the top 2.
    assert decisions == [True, False, True, False, False, True]
    # Another tier keeps its own ranking: a weak first candidate there is promoted.
    assert promote(study, r, "teacher-23", 0.50)[0] is True


@pytest.mark.timeout(900)
def test_a_search_with_halving_trains_short_first_and_records_what_each_model_had(tmp_path, capsys):
    import yaml

    from compress.recipe import recipe_from_dict

    data = yaml.safe_load(open("recipes/tiny_search.yaml"))
    data["output_dir"] = str(tmp_path)
    data["distill"]["train"]["epochs"] = 4
    data["capacity"]["enabled"] = False
    data["search"].update({"halving": {"enabled": True, "short_fraction": 0.25}, "baselines": False})
    data["search"]["space"].update({"student.width": 8, "prune.enabled": [False]})  # one tier: they compete
    r = recipe_from_dict(data)
    summary = run_study(r)
    log = capsys.readouterr().out
    trials = optuna.load_study(study_name=r.name, storage=f"sqlite:///{tmp_path}/{r.name}/study.db").trials
    assert len(trials) == 3 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    promoted = [t.user_attrs["halving"]["promoted"] for t in trials]
    assert promoted[0] is True  # the first of its tier
    assert summary["n_trials_promoted"] == sum(promoted) and summary["n_trials_short_schedule"] == 3 - sum(promoted)
    # Every trial ran the 1-epoch short schedule; only the promoted ones ran the 4-epoch one after it.
    assert log.count("epoch 1/1:") == 3 and log.count("epoch 4/4:") == sum(promoted)
    for t in trials:
        h = t.user_attrs["halving"]
        assert h["short_schedule"] == {"distill.train.epochs": 1}
        assert t.user_attrs.get("overrides", {}) == ({} if h["promoted"] else {"distill.train.epochs": 1})
        assert 0 < t.user_attrs["metrics"]["test_accuracy"] <= 1  # every model evaluated in full
    with open(tmp_path / r.name / "trials.csv") as f:
        rows = {int(row["trial"]): row["schedule"] for row in csv.DictReader(f)}
    assert rows == {t.number: "full" if t.user_attrs["halving"]["promoted"] else "short" for t in trials}
    # The artifact's recipe has the epochs its model was trained with.
    import json

    manifest = json.loads((tmp_path / r.name / "artifact" / "manifest.json").read_text())
    chosen = trials[summary["chosen_trial"]]
    assert manifest["recipe"]["distill"]["train"]["epochs"] == (4 if chosen.user_attrs["halving"]["promoted"] else 1)
