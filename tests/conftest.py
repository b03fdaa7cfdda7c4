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
    from compress.search.run import run_study

    out = tmp_path_factory.mktemp("study")
    os.chdir(ROOT)
    recipe = load_recipe("recipes/tiny_search.yaml", [f"output_dir={out}"])
    return recipe, run_study(recipe)


# -- PostgreSQL: a throwaway server on loopback (tests/pg.py) ---------------------------------------


@pytest.fixture(scope="session")
def postgres():
    """A started PostgresServer of this test session (127.0.0.1, a free port, its own temp data
    dir, removed at the end); skips when this machine has no server binaries (`make setup`
    installs them on Debian)."""
    import pg

    ok, why = pg.available()
    if not ok:
        pytest.skip(why)
    with pg.PostgresServer() as server:
        yield server


@pytest.fixture
def pg_url(postgres, request):
    """The URL (postgresql+psycopg2://...) of a fresh database of this test's own, so tests do not
    see each other's studies; dropped afterwards."""
    import re
    import uuid

    name = re.sub(r"[^a-z0-9_]+", "_", request.node.name.lower())[:40]
    name = f"t_{name}_{uuid.uuid4().hex[:8]}"
    if not postgres.running:  # an earlier test stopped the shared server
        postgres.start()
    url = postgres.create_database(name)
    yield url
    if postgres.running:
        try:
            postgres.drop_database(name)
        except Exception:  # best effort: the whole data dir goes at the end of the session
            pass
