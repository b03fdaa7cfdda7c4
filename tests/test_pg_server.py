"""The throwaway PostgreSQL server (tests/pg.py, fixtures postgres and pg_url) works for Optuna."""
from __future__ import annotations

import optuna
import pytest

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _objective(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -1.0, 1.0)
    return x * x


def _storage(url: str) -> optuna.storages.RDBStorage:
    return optuna.storages.RDBStorage(url)


def test_study_on_postgres(pg_url, postgres):
    assert pg_url.startswith("postgresql+psycopg2://compress:")
    assert postgres.host == "127.0.0.1" and postgres.password in pg_url
    assert postgres.password not in postgres.url_without_password

    storage = _storage(pg_url)
    study = optuna.create_study(study_name="s", storage=storage)
    study.optimize(_objective, n_trials=3)
    storage.engine.dispose()

    again = optuna.load_study(study_name="s", storage=_storage(pg_url))
    assert len(again.trials) == 3
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in again.trials)


def test_databases_are_per_test(pg_url):
    # test_study_on_postgres's study is in another database.
    assert optuna.get_all_study_names(_storage(pg_url)) == []


def test_password_is_required(postgres):
    import psycopg2

    with pytest.raises(psycopg2.OperationalError):
        psycopg2.connect(host=postgres.host, port=postgres.port, user=postgres.user,
                         password="wrong", dbname=postgres.dbname, connect_timeout=5)


def test_restart_keeps_data(pg_url, postgres):
    # Optuna turns pool_pre_ping on for MySQL only: without it a PostgreSQL storage's first
    # call after a server restart fails on a dead pooled connection (StorageInternalError).
    live = optuna.storages.RDBStorage(pg_url, engine_kwargs={"pool_pre_ping": True})
    study = optuna.create_study(study_name="kept", storage=live)
    study.optimize(_objective, n_trials=2)
    port = postgres.port

    postgres.restart()

    assert postgres.running and postgres.port == port
    again = optuna.load_study(study_name="kept", storage=_storage(pg_url))
    assert len(again.trials) == 2
    study.optimize(_objective, n_trials=1)  # the storage from before the restart still works
    assert len(optuna.load_study(study_name="kept", storage=_storage(pg_url)).trials) == 3
