"""The recipe schema: one typed, frozen config per section, validated on load.

A recipe is data: every knob lives here with its default and a description (docs/recipe.md). Loading rejects an
unknown key, a wrong type or an out-of-range value with the key path, the bad value and what is allowed
(``RecipeError``, exit code 2), before anything is written.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError

from compress.errors import RecipeError
# The package's names: stages and the search import their recipe types from compress.recipe.
from compress.recipe.sections import (  # noqa: F401
    SOURCES,
    BatchRequirement,
    CapacityConfig,
    CostConfig,
    DataConfig,
    DistillConfig,
    ExportConfig,
    HalvingConfig,
    LatencyConfig,
    PruneConfig,
    QuantizeConfig,
    SearchConfig,
    Section,
    ServiceLevel,
    StudentConfig,
    TargetConfig,
    TeacherConfig,
    TrainConfig,
    format_errors,
)
from compress.recipe.space import (  # noqa: F401
    BRANCH_SEP,
    Branches,
    Range,
    check_enqueue,
    check_space,
    range_is_int,
    space_choices,
    space_leaf,
    space_parameters,
    space_spec,
    with_values,
)
from compress.storage import mask


class Recipe(Section):
    """A whole recipe: one section per stage, every key optional but the name."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="Also the results/<name>/ folder and the study.")
    seed: int = Field(0, description="The run's seed (training, sampler, calibration); the split has its own.")
    output_dir: str = Field("results", description="Where results/<name>/ goes.")
    data: DataConfig = Field(DataConfig(), description="Where the data come from and how a sample becomes an input.")
    teacher: TeacherConfig = Field(TeacherConfig(), description="The model to compress.")
    student: StudentConfig = Field(StudentConfig(), description="The model to train.")
    distill: DistillConfig = Field(DistillConfig(), description="Knowledge distillation.")
    prune: PruneConfig = Field(PruneConfig(), description="Structured pruning.")
    quantize: QuantizeConfig = Field(QuantizeConfig(), description="int8 quantization.")
    export: ExportConfig = Field(ExportConfig(), description="ONNX export and its parity gates.")
    target: TargetConfig = Field(TargetConfig(), description="The serving setting latency is measured in.")
    latency: LatencyConfig = Field(LatencyConfig(), description="The latency protocol.")
    search: SearchConfig = Field(SearchConfig(), description="The Optuna search.")
    slo: ServiceLevel = Field(ServiceLevel(), description="The service level.")
    cost: CostConfig = Field(CostConfig(), description="Prices.")
    capacity: CapacityConfig = Field(CapacityConfig(), description="The capacity sweep and plan.")

    @property
    def out_path(self) -> Path:
        return Path(self.output_dir) / self.name

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def public_dict(self) -> dict[str, Any]:
        """``to_dict`` for outputs: the storage URL with any password masked."""

        data = self.to_dict()
        data["search"]["storage"] = mask(data["search"]["storage"])
        return data


def fingerprint_of(data: Any, length: int = 12) -> str:
    """The sha256 of a JSON-able value (keys sorted), cut to ``length`` hex digits."""
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:length]


def _parse_scalar(text: str) -> Any:
    # YAML's scalar rules: "3" -> 3, "0.5" -> 0.5, "true" -> True, "null" -> None, "[1,2]" -> list.
    return yaml.safe_load(text) if text.strip() else ""


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.path=value`` strings to a raw recipe dict (before validation)."""
    for item in overrides:
        if "=" not in item:
            raise RecipeError(f"--set {item!r}: expected key.path=value, e.g. --set distill.temperature=6")
        key, value = item.split("=", 1)
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise RecipeError(f"--set {key}: {part!r} is a value, not a section")
            node = child
        node[parts[-1]] = _parse_scalar(value)
    return data


def recipe_from_dict(data: Any, source: str = "recipe") -> Recipe:
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: a recipe is a YAML mapping of sections, got {type(data).__name__}")
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as err:
        raise RecipeError(format_errors(source, err)) from None
    check_space(recipe, source)
    check_enqueue(recipe, source)
    return recipe


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Load, override and validate a recipe file."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{path}: no such recipe file; the shipped ones are in recipes/")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise RecipeError(f"{path}: not valid YAML: {err}") from None
    if isinstance(data, dict):
        data = apply_overrides(data, overrides or [])
    return recipe_from_dict(data, str(path))


def public_dict(recipe: Recipe) -> dict[str, Any]:
    return recipe.public_dict()


def public_yaml(recipe: Recipe) -> str:
    """The resolved recipe as written to results/: no password."""
    return yaml.safe_dump(recipe.public_dict(), sort_keys=False)
