from __future__ import annotations

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
