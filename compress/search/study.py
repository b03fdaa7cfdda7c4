"""The Optuna study: where it is kept, what makes two runs the same study, its sampler."""

from __future__ import annotations

import warnings
from pathlib import Path

import optuna
from optuna.artifacts import (
    Boto3ArtifactStore,
    FileSystemArtifactStore,
    GCSArtifactStore,
)

from compress.recipe import Recipe, RecipeError, fingerprint_of
from compress.search.space import covering_startup
from compress.storage import StudyLock, mask, open_storage


def storage_url(recipe: Recipe) -> str:
    if recipe.search.storage:
        return recipe.search.storage
    return f"sqlite:///{(recipe.out_path / 'study.db').as_posix()}"


def artifact_location(recipe: Recipe) -> str:
    """Where trial models are uploaded (Optuna's artifact store): a folder every worker can reach."""
    return recipe.search.artifacts or str((recipe.out_path / "artifacts").resolve())


# The search settings that say how long, where and with how many processes a search runs, not which search it is.
NOT_THE_STUDY = ("n_trials", "timeout_s", "wall_time_s", "storage", "artifacts", "workers", "finish_processes")


def search_fingerprint(recipe: Recipe) -> str:
    """What makes two runs the same study: the resolved recipe (every default filled in) less
    ``NOT_THE_STUDY`` and output_dir."""
    data = recipe.to_dict()
    del data["output_dir"]
    for k in NOT_THE_STUDY:
        del data["search"][k]
    return fingerprint_of(data)


def sampler(recipe: Recipe, offset: int = 0) -> optuna.samplers.BaseSampler:
    """The recipe's sampler, seeded with ``recipe.seed + offset``: workers seed it by the number of the trial
    they are about to create, so two workers never draw the same random sequence (identical trials) and a
    single worker's study stays reproducible."""
    s = recipe.search
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if s.sampler == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=recipe.seed + offset,
                                                 population_size=max(4, min(50, s.n_trials // 2)))
        # Both samplers find the constraints on the trials (see Objective). group=True: multivariate TPE
        # over a conditional space (see ``suggest``) models each subspace on its own.
        # constant_liar: workers sharing the study see each other's running trials as bad, not as absent, so
        # two of them do not sample the same region at once.
        return optuna.samplers.TPESampler(seed=recipe.seed + offset, n_startup_trials=s.startup_trials,
                                          multivariate=True, group=True, constant_liar=True)


def open_study(recipe: Recipe) -> optuna.Study:
    """Create the study, or load it to resume or to join it; refuses a stored study made by a different recipe
    or by an older version of compress (its fingerprint differs)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = storage_url(recipe)
    storage = open_storage(url)
    with StudyLock(url, recipe.name):
        study = optuna.create_study(storage=storage, sampler=sampler(recipe), study_name=recipe.name,
                                    directions=["maximize", "minimize"], load_if_exists=True)
        fp = search_fingerprint(recipe)
        attrs = study.user_attrs
        stored = attrs.get("recipe_fingerprint")
        if stored is None:
            study.set_user_attr("recipe_fingerprint", fp)
            public = recipe.to_dict()
            public["search"]["storage"] = mask(public["search"]["storage"])
            study.set_user_attr("recipe", public)
            study.set_user_attr("covering", covering_startup(recipe))  # queued one at a time, by whoever claims next
            if recipe.search.artifacts:
                study.set_user_attr("artifact_store", recipe.search.artifacts)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.set_metric_names(["val_accuracy", "latency_p95_ms"])
        elif stored != fp:
            raise RecipeError(
                f"study {recipe.name!r} in {mask(url)} was made by a different recipe or by an older version of "
                f"compress (fingerprint {stored} vs {fp} now); resuming would mix trials of two searches, and an "
                "older version's study is not read. Delete the old study to search again, or keep it and rename "
                "the recipe (name:) or pass another --storage.")
    return study


def artifact_store(recipe: Recipe, study: optuna.Study):
    """The Optuna artifact store: ``--artifacts``, else the one the study was made with, else results/<name>/artifacts.
    A folder (shared by every worker), ``s3://bucket`` (boto3) or ``gs://bucket`` (google-cloud-storage)."""
    where = recipe.search.artifacts or study.user_attrs.get("artifact_store") or artifact_location(recipe)
    if where.startswith("s3://"):

        return Boto3ArtifactStore(where[len("s3://"):].split("/", 1)[0])
    if where.startswith("gs://"):

        return GCSArtifactStore(where[len("gs://"):].split("/", 1)[0])


    Path(where).mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(where)
