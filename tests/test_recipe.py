import subprocess
import sys
from pathlib import Path

import pytest

from compress.recipe import Recipe, RecipeError, apply_overrides, load_recipe, recipe_from_dict

RECIPES = sorted(Path(__file__).resolve().parents[1].joinpath("recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_shipped_recipe_loads(path):
    recipe = load_recipe(path)
    assert isinstance(recipe, Recipe)
    assert recipe.name == path.stem  # results/<name>/ matches the file, so outputs are easy to find


def test_unknown_key_names_the_path():
    with pytest.raises(RecipeError) as e:
        recipe_from_dict({"name": "x", "distill": {"temprature": 3}})
    assert "distill.temprature" in str(e.value) and "unknown key" in str(e.value)


def test_wrong_type_names_path_and_value():
    with pytest.raises(RecipeError) as e:
        recipe_from_dict({"name": "x", "student": {"width": "wide"}})
    msg = str(e.value)
    assert "student.width" in msg and "'wide'" in msg and "integer" in msg


def test_out_of_range_says_what_is_allowed():
    with pytest.raises(RecipeError) as e:
        recipe_from_dict({"name": "x", "distill": {"alpha": 1.5}})
    msg = str(e.value)
    assert "distill.alpha" in msg and "1.5" in msg and "less than or equal to 1" in msg


def test_choice_lists_allowed_values():
    with pytest.raises(RecipeError) as e:
        recipe_from_dict({"name": "x", "quantize": {"calibration": "kl"}})
    assert "quantize.calibration" in str(e.value) and "'minmax', 'entropy' or 'percentile'" in str(e.value)


def test_overrides_are_typed_and_nested():
    data = apply_overrides({"name": "x"}, ["distill.temperature=6", "prune.enabled=true", "quantize.calibration_size=64"])
    r = recipe_from_dict(data)
    assert r.distill.temperature == 6.0 and r.prune.enabled is True and r.quantize.calibration_size == 64


def test_override_without_equals_is_an_error():
    with pytest.raises(RecipeError, match="key.path=value"):
        apply_overrides({}, ["distill.temperature"])


def test_resolved_recipe_round_trips():
    r = load_recipe(RECIPES[0])
    assert recipe_from_dict(r.to_dict()) == r


def test_cli_bad_recipe_exits_2_and_writes_nothing(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"name: bad\noutput_dir: {tmp_path / 'out'}\nprune: {{ratio: 1.5}}\n")
    proc = subprocess.run([sys.executable, "-m", "compress", "run", str(bad)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "prune.ratio = 1.5" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_cli_missing_recipe_file_exits_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "compress", "run", str(tmp_path / "nope.yaml")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "no such recipe file" in proc.stderr


@pytest.mark.parametrize("space, message", [
    ({"distill.temperature": {"low": 6.0, "high": 2.0}}, r"search.space.distill.temperature.*low \(6.0\) must be below high"),
    ({"quantize.calibration": {"low": 1, "high": 2}}, r"quantize.calibration.*a range needs a numeric field"),
    ({"student.width": []}, r"search.space.student.width = \[\]: give at least one choice"),
    ({"data.val_size": [100, 200]}, r"the data section is not searchable"),
    ({"distill.nosuch": [1, 2]}, r"'distill.nosuch' is not a recipe field"),
    ({"student.width": {"low": 4.5, "high": 8}}, r"student.width is an integer; use whole numbers"),
])
def test_search_space_mistakes_name_the_entry(space, message):
    with pytest.raises(RecipeError, match=message):
        recipe_from_dict({"name": "x", "student": {"width": 8}, "search": {"space": space}})


def test_student_kwargs_are_searchable_with_inferred_types():
    r = recipe_from_dict({"name": "x", "student": {"model": "mlp"},
                          "search": {"space": {"student.kwargs.dropout": {"low": 0.0, "high": 0.5},
                                               "student.kwargs.width": {"low": 16, "high": 64, "step": 16}}}})
    from compress.recipe import Range, range_is_int, space_spec, with_values

    assert range_is_int(space_spec(r.search.space["student.kwargs.width"]), None)
    assert not range_is_int(space_spec(r.search.space["student.kwargs.dropout"]), None)
    assert isinstance(space_spec(r.search.space["student.kwargs.width"]), Range)
    assert with_values(r, {"student.kwargs.width": 32}).student.kwargs == {"width": 32}


@pytest.mark.parametrize("data, message", [
    ({"source": "torchvision"}, "source 'torchvision' needs data.name"),
    ({"source": "arrays"}, "source 'arrays' needs data.path"),
    ({"source": "folder", "train_dir": "a"}, "needs test_dir too"),
    ({"source": "import", "factory": "no_colon"}, "expected package.module:function"),
    ({"mean": [0.5]}, "give both mean and std"),
    ({"augment": True}, "unknown key"),
])
def test_data_section_mistakes_are_named(data, message):
    with pytest.raises(RecipeError, match=message):
        recipe_from_dict({"name": "x", "data": data})
