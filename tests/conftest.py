from __future__ import annotations

import os
from pathlib import Path

import pytest

from compress.data import load_dataset
from compress.recipe import DataConfig

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_data():
    """Small subsets of the real dataset: enough for parity and accuracy checks, fast on 2 cores."""
    return load_dataset(DataConfig(train_subset=1000, val_subset=300, test_subset=300))


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    # Recipes name paths relative to the repository root (teachers/, results/).
    monkeypatch.chdir(ROOT)


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory):
    """One 3-trial search on recipes/tiny_search.yaml, shared by the search and bundle tests."""
    from compress.recipe import load_recipe
    from compress.study import run_study

    out = tmp_path_factory.mktemp("study")
    os.chdir(ROOT)
    recipe = load_recipe("recipes/tiny_search.yaml", [f"output_dir={out}"])
    return recipe, run_study(recipe)
