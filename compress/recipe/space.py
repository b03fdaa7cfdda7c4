"""The search-space grammar of ``search.space``: a fixed value, a range ``{low, high[, step, log]}``, a list of
choices, or branches (a sub-space per choice); reading it, checking it against the recipe, and setting a
candidate's values."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, ValidationError, model_validator

from compress.errors import RecipeError
from compress.recipe.sections import Section, format_errors


class Range(Section):
    """A range in search.space, {low, high[, step, log]}; integer fields get integers."""

    low: float = Field(description="Lower bound.")
    high: float = Field(description="Upper bound, above low.")
    step: float | None = Field(None, gt=0, description="Grid step; null: continuous.")
    log: bool = Field(False, description="Sample on a log scale (low > 0, no step).")

    @model_validator(mode="after")
    def _ordered(self):
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and (self.low <= 0 or self.step is not None):
            raise ValueError("log ranges need low > 0 and no step")
        return self


NOT_SEARCHABLE = ("name", "output_dir", "search", "slo", "data", "teacher", "target", "latency", "export", "cost",
                  "capacity")


BRANCH_SEP = "/"  # a parameter of a branch is named "<choice>/<key.path>" in the study


def with_values(recipe: Section, values: dict[str, Any]) -> Section:
    """A copy of ``recipe`` with ``key.path -> value`` set and no search space (one concrete candidate).
    Keys may carry a branch prefix (``cnn/prune.ratio``), as trial parameters of a branch do."""
    data = recipe.to_dict()
    data["search"]["space"] = {}
    for key, value in values.items():
        node = data
        *parents, leaf = key.rsplit(BRANCH_SEP, 1)[-1].split(".")
        for part in parents:
            node = node.setdefault(part, {}) if isinstance(node, dict) and part not in node else node[part]
        node[leaf] = value
    return type(recipe).model_validate(data)


def space_leaf(recipe: Section, key: str) -> Any:
    """The recipe's current value at ``key``; raises KeyError when the path does not name a field. Inside a
    free-form mapping (``student.kwargs.<name>``) any name is allowed and an unset one is None."""
    node: Any = recipe
    for part in key.split("."):
        if isinstance(node, dict):
            node = node.get(part)
            continue
        if not isinstance(node, BaseModel) or part not in type(node).model_fields:
            raise KeyError(part)
        node = getattr(node, part)
    if isinstance(node, BaseModel):
        raise KeyError(key)
    return node


def range_is_int(spec: "Range", current: Any) -> bool:
    """Whether a range searches whole numbers: the field holds an int, or (unset field, e.g. a kwarg or
    student.width left to the family's default) low, high and step are all whole numbers."""
    if current is None:
        return all(float(v).is_integer() for v in (spec.low, spec.high, spec.step or 1))
    return isinstance(current, int) and not isinstance(current, bool)


class Branches(dict):
    """A categorical parameter whose every choice brings its own sub-space: ``{choice: {key: spec}}``."""


def space_spec(spec: Any) -> Range | Branches | list[Any] | Any:
    """A space entry as a Range (mapping with low/high), Branches (mapping of choices to sub-spaces), a list
    of choices, or a fixed value."""
    if isinstance(spec, dict):
        if spec and all(isinstance(v, dict) for v in spec.values()) and not {"low", "high"} & set(spec):
            return Branches(spec)
        return Range.model_validate(spec)
    return spec


def space_choices(recipe: Section, key: str) -> list[Any]:
    """Every value ``key`` may take in a search of ``recipe`` (at the top of the space or in any branch);
    its current value when it is not searched."""
    found: list[Any] = []

    def visit(space: dict) -> None:
        for k, raw in space.items():
            spec = space_spec(raw)
            if k == key:
                found.extend(spec if isinstance(spec, (list, Branches)) else [spec])
            if isinstance(spec, Branches):
                for sub in spec.values():
                    visit(sub)

    visit(recipe.search.space)
    return found or [space_leaf(recipe, key)]


def check_space(recipe: Section, source: str, space: dict | None = None, prefix: str = "search.space") -> None:
    top = space is None
    space = recipe.search.space if top else space
    for key, raw in space.items():
        where = f"{prefix}.{key}"
        try:
            spec = space_spec(raw)
        except ValidationError as err:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'range'}: {e['msg']}" for e in err.errors())
            raise RecipeError(f"{source}: invalid recipe\n  {where} = {raw!r}: {problems}; a range is "
                              "{low: A, high: B[, step: S, log: true]}") from None
        try:
            current = space_leaf(recipe, key)
        except KeyError:
            raise RecipeError(f"{source}: invalid recipe\n  {where}: {key!r} is not a recipe field; searchable "
                              "fields are those of student, distill, prune and quantize, e.g. student.width") from None
        if key.split(".")[0] in NOT_SEARCHABLE:
            raise RecipeError(f"{source}: invalid recipe\n  {where}: the {key.split('.')[0]} section is not "
                              "searchable; search student, distill, prune or quantize fields")
        if isinstance(spec, Range):
            if current is None:
                current = int(spec.low) if range_is_int(spec, None) else float(spec.low)
            if isinstance(current, bool) or not isinstance(current, (int, float)):
                raise RecipeError(f"{source}: invalid recipe\n  {where} = {spec.model_dump()}: a range needs a "
                                  f"numeric field, and {key} is {current!r}; give a list of choices instead")
            candidates = [spec.low, spec.high]
            if isinstance(current, int):
                candidates = [int(spec.low), int(spec.high)]
                if spec.low != int(spec.low) or spec.high != int(spec.high):
                    raise RecipeError(f"{source}: invalid recipe\n  {where}: {key} is an integer; use whole "
                                      f"numbers for low and high (got {spec.low}, {spec.high})")
        elif isinstance(spec, Branches):
            if not top:
                raise RecipeError(f"{source}: invalid recipe\n  {where}: branches cannot be nested; give the "
                                  "sub-space's parameters as ranges, lists or fixed values")
            for choice, sub in spec.items():
                clash = sorted(set(sub) & set(space))
                if clash:
                    raise RecipeError(f"{source}: invalid recipe\n  {where}.{choice}: {clash[0]} is also searched at "
                                      "the top of search.space; give it in one place")
                check_space(recipe, source, sub, f"{where}.{choice}")
            candidates = list(spec)
        elif isinstance(spec, list):
            if not spec:
                raise RecipeError(f"{source}: invalid recipe\n  {where} = []: give at least one choice")
            candidates = spec
        else:
            candidates = [spec]
        for value in candidates:
            try:
                with_values(recipe, {key: value})
            except ValidationError as err:
                msg = format_errors(source, err).replace(f"  {key} =", f"  {where}: {key} =")
                raise RecipeError(msg) from None


def space_parameters(space: dict) -> dict[str, Any]:
    """The study's parameter names (a branch's own as ``<choice>/<key.path>``) and their specs."""
    names: dict[str, Any] = {}
    for key, raw in space.items():
        spec = space_spec(raw)
        names[key] = spec
        if isinstance(spec, Branches):
            for choice, sub in spec.items():
                names.update({f"{choice}{BRANCH_SEP}{k}": v for k, v in space_parameters(sub).items()})
    return names


def check_enqueue(recipe: Section, source: str) -> None:
    """Every enqueued candidate names parameters of the space, with values the space allows."""
    params = space_parameters(recipe.search.space)
    for i, point in enumerate(recipe.search.enqueue):
        where = f"{source}: invalid recipe\n  search.enqueue[{i}]"
        for name, value in point.items():
            if name not in params:
                raise RecipeError(f"{where}: {name!r} is not a parameter of search.space; its parameters: "
                                  f"{', '.join(params) or 'none (search.space is empty)'}")
            spec = params[name]
            if isinstance(spec, Range):
                ok = isinstance(value, (int, float)) and not isinstance(value, bool) and spec.low <= value <= spec.high \
                    and not (spec.step and abs((value - spec.low) / spec.step - round((value - spec.low) / spec.step)) > 1e-9)
                shown = f"{spec.low:g} to {spec.high:g}" + (f" in steps of {spec.step:g}" if spec.step else "")
            else:
                choices = list(spec) if isinstance(spec, (Branches, list)) else [spec]
                ok, shown = value in choices, ", ".join(map(repr, choices))
            if not ok:
                raise RecipeError(f"{where}: {name} = {value!r} is not in search.space ({shown})")
            if BRANCH_SEP in name:
                choice = name.split(BRANCH_SEP, 1)[0]
                switch = next(k for k, v in params.items() if isinstance(v, Branches) and choice in v)
                if point.get(switch) != choice:
                    raise RecipeError(f"{where}: {name} is a parameter of the {choice!r} branch; add "
                                      f"{switch}: {choice} to the same candidate")
