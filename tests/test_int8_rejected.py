"""A search candidate whose int8 copy fails its parity gate is finished in fp32, not failed."""

import optuna
import pytest

import compress.pipeline as pipeline
from compress.errors import ParityError
from compress.recipe import load_recipe
from compress.report import print_study_summary
from compress.search.records import recipe_of
from compress.search.run import run_study


@pytest.mark.timeout(600)
def test_a_candidate_whose_int8_fails_its_gate_is_kept_in_fp32(tmp_path, capsys, monkeypatch):
    real = pipeline.check_parity

    def gate(model, path, split, int8=False, **kw):  # every int8 copy disagrees, as on a model int8 does not suit
        if int8:
            raise ParityError(f"{path}: int8 top-1 agreement with PyTorch is 0.9000 on 1000 validation images")
        return real(model, path, split, int8=int8, **kw)

    monkeypatch.setattr(pipeline, "check_parity", gate)
    r = load_recipe("recipes/tiny_search.yaml", [
        f"output_dir={tmp_path}", "search.baselines=false", "capacity.enabled=false", "search.n_trials=2",
        "search.space={student.width: 8, prune.enabled: [false], quantize.enabled: [true]}"])
    summary = run_study(r)
    trials = optuna.load_study(study_name=r.name, storage=f"sqlite:///{tmp_path}/{r.name}/study.db").trials
    # Complete, not failed: the trained model is the trial's result, measured and evaluated like any other.
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    for t in trials:
        assert "0.9000" in t.user_attrs["int8_rejected"] and t.params["quantize.enabled"] is True
        assert t.user_attrs["overrides"] == {"quantize.enabled": False}
        assert t.user_attrs["metrics"]["int8"] is False and t.user_attrs["metrics"]["stage"] == "student_fp32"
    assert summary["n_trials_int8_rejected"] == 2 and summary["n_trials_failed"] == 0
    # The recipe the report hands over with the chosen model makes that model: fp32.
    chosen = {"params_": dict(trials[summary["chosen_trial"]].params),
              "overrides": trials[summary["chosen_trial"]].user_attrs["overrides"]}
    assert recipe_of(r, chosen).quantize.enabled is False
    out = capsys.readouterr().out
    assert out.count("int8 failed its parity gate, finished in fp32") == 2
    # The bundle says so to the serving team: its recipe is fp32, and the card says why.
    import json

    manifest = json.loads((tmp_path / r.name / "artifact" / "manifest.json").read_text())
    assert manifest["recipe"]["quantize"]["enabled"] is False and "0.9000" in manifest["trial"]["int8_rejected"]
    card = (tmp_path / r.name / "artifact" / "MODEL_CARD.md").read_text()
    assert "Its int8 copy failed the parity gate, so the model is fp32" in card
    print_study_summary(summary)
    assert "2 finished in fp32 (int8 failed its parity gate)" in capsys.readouterr().out


def test_a_single_run_still_stops_on_a_failing_int8_gate(tiny_data, tmp_path, monkeypatch):
    """`compress run` asked for int8: no silent fp32 there."""
    from compress.teacher import load_teacher

    def gate(model, path, split, int8=False, **kw):
        if int8:
            raise ParityError("int8 disagrees")
        return {"top1_agreement": 1.0, "max_abs_logit_diff": 0.0, "n": 1, "int8": False}

    monkeypatch.setattr(pipeline, "check_parity", gate)
    r = load_recipe("recipes/tiny.yaml", ["quantize.enabled=true", "prune.enabled=false", "distill.train.epochs=1"])
    teacher, info = load_teacher(r.teacher, tiny_data.spec)
    with pytest.raises(ParityError, match="int8 disagrees"):
        pipeline.compress_student(r, tiny_data, teacher, info, tmp_path)


def test_a_short_chosen_candidate_kept_in_fp32_gets_its_full_schedule_in_fp32(tmp_path):
    """Handed over with its full schedule after the search (search.halving kept it short), it stays the fp32
    model its trial made, and so does the recipe it is handed over with (and its no-KD baseline's)."""
    from compress.search.halving import full_plan

    r = load_recipe("recipes/tiny_search.yaml", [f"output_dir={tmp_path}", "search.halving.enabled=true",
                                                 "distill.train.epochs=4"])
    chosen = {"trial": 0, "schedule": "short", "params_": {"student.width": 8, "quantize.enabled": True},
              "overrides": {"distill.train.epochs": 1, "quantize.enabled": False}, "int8_rejected": "agreement 0.90",
              "artifact_path": str(tmp_path / "trials" / "0000" / "model.onnx")}
    plan = full_plan(r, chosen)
    assert plan.build.recipe.quantize.enabled is False and plan.build.recipe.distill.train.epochs == 4
    assert plan.trial_schedule == {"distill.train.epochs": 1} and plan.restart == {"quantize.enabled": False}
    assert recipe_of(r, {**chosen, "overrides": plan.restart}).quantize.enabled is False
