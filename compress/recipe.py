"""The recipe schema: one typed, frozen config per section, validated on load.

A recipe is data: every knob lives here with its default and the reason beside it. Loading rejects an
unknown key, a wrong type or an out-of-range value with the key path, the bad value and what is allowed
(``RecipeError``, exit code 2), before anything is written.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_serializer, model_validator

from compress.errors import RecipeError


class _Section(BaseModel):
    # extra="forbid": a misspelt key is an error, never silently ignored.
    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())


SOURCES = ("fashion_mnist", "torchvision", "folder", "arrays", "import")


class DataConfig(_Section):
    # Where the data come from (one module each under compress/data/):
    #   fashion_mnist  the embedded default (Debian's dataset-fashion-mnist, read by torchvision)
    #   torchvision    a torchvision dataset by class name (name: MNIST, CIFAR10, ...) under root
    #   folder         an ImageFolder tree (root, split by seed), or separate train_dir/val_dir/test_dir trees
    #   arrays         a .npz file (path) with x_train, y_train, x_test, y_test[, x_val, y_val, labels]:
    #                  images N x H x W, N x H x W x C or N x C x H x W (uint8 or float), or vectors N x D
    #   import         factory: package.module:function (kwargs) returning (train, val or None, test)
    source: Literal["fashion_mnist", "torchvision", "folder", "arrays", "import"] = "fashion_mnist"
    root: str | None = None  # fashion_mnist: None is Debian's /usr/share/datasets/fashion-mnist, else .data/
    name: str | None = None  # torchvision: the dataset class, e.g. CIFAR10
    download: bool = False  # torchvision: may it download (needs network; this project's machines have none)
    path: str | None = None  # arrays: the .npz file
    train_dir: str | None = None  # folder: separate trees (val_dir optional; test_dir required with train_dir)
    val_dir: str | None = None
    test_dir: str | None = None
    test_fraction: float = Field(0.2, gt=0, lt=1)  # folder with one tree: the share held out as the test split
    factory: str | None = None  # import: package.module:function
    kwargs: dict[str, Any] = Field(default_factory=dict)  # import: passed to the factory
    # Images: the model's input size and channels; None keeps the data's own (the first image's, for folders).
    image_size: int | list[int] | None = None  # an int is square; [height, width]
    resize: int | None = Field(None, ge=1)  # resize the shorter side to this, then centre-crop to image_size
    channels: Literal[1, 3] | None = None  # 1 grayscale, 3 RGB
    # Normalisation: per channel (images) or per feature (vectors); None computes them on the training split
    # (Fashion-MNIST keeps its published 0.2860 / 0.3530).
    mean: list[float] | None = None
    std: list[float] | None = None
    labels: list[str] | None = None  # class names in label order; None: the data's own, else "0", "1", ...
    # Folder trees: stream images from disk through a DataLoader (workers) instead of holding them in memory.
    # None: stream when the tree's pixels at the model's size would take more than max_memory_mb.
    stream: bool | None = None
    max_memory_mb: int = Field(2048, ge=1)
    workers: int = Field(2, ge=0)  # DataLoader worker processes that read and prepare streamed images
    val_size: int = Field(5000, ge=1)  # carved from the training set when the data has no validation split
    val_fraction: float | None = Field(None, gt=0, lt=1)  # instead of val_size: a share of the training set
    split_seed: int = 0  # the train/validation split never changes with the run's seed
    # Tiny runs (tests, smoke checks) take the first N of each split; None uses the whole split.
    train_subset: int | None = Field(None, ge=1)
    val_subset: int | None = Field(None, ge=1)
    test_subset: int | None = Field(None, ge=1)
    eval_batch_size: int = Field(1000, ge=1)

    @model_validator(mode="after")
    def _source_fields(self):
        need = {"torchvision": ["name"], "arrays": ["path"], "import": ["factory"]}.get(self.source, [])
        if self.source == "folder" and not (self.root or self.train_dir):
            need = ["root"]
        missing = [k for k in need if getattr(self, k) is None]
        if missing:
            raise ValueError(f"source {self.source!r} needs data.{missing[0]}")
        if self.source == "folder" and self.train_dir and not self.test_dir:
            raise ValueError("source 'folder' with train_dir needs test_dir too (val_dir is optional)")
        if self.factory is not None and ":" not in self.factory:
            raise ValueError(f"factory {self.factory!r}: expected package.module:function")
        if (self.mean is None) != (self.std is None):
            raise ValueError("give both mean and std, or neither (then they come from the training split)")
        if self.std is not None and min(self.std) <= 0:
            raise ValueError("std values must be positive")
        return self


class TrainConfig(_Section):
    epochs: int = Field(10, ge=0)
    batch_size: int = Field(256, ge=1)
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    warmup_epochs: float = Field(0.5, ge=0)  # linear warm-up, then cosine to zero
    # Images only. true: random 2-pixel shifts and horizontal flips (worth ~1pp for the Fashion-MNIST
    # teacher); or a list of [shift, hflip] (no flips for digits or text). When on, distillation cannot reuse
    # cached teacher logits (each view needs its own), so students default to off.
    augment: bool | list[Literal["shift", "hflip"]] = False
    # bf16 autocast + channels_last: ~3x faster training on AVX-512 BF16 CPUs, same accuracy here; emulated,
    # and 7-8x slower than fp32, on CPUs without AVX-512 (an AVX2 EPYC). auto: bf16 where the training device
    # computes it natively, else fp32 (workers of one study on different machines may then differ: pin
    # true or false where that matters).
    bf16: bool | Literal["auto"] = False
    # Where training runs: auto is a CUDA GPU when this machine has one, else the CPU. Latency is always
    # measured on target.device, whatever trained the model.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # A warm restart: the first restart_epochs epochs are a schedule of their own (warm-up, cosine to zero),
    # then the remaining epochs another, the model and its momentum carried over. What a candidate promoted by
    # search.halving was trained with: its short schedule, then the rest, so promotion retrains nothing.
    restart_epochs: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _restart_inside(self):
        if self.restart_epochs is not None and self.restart_epochs >= self.epochs:
            raise ValueError(f"restart_epochs ({self.restart_epochs}) must be below epochs ({self.epochs})")
        return self

    @model_serializer(mode="wrap")
    def _omit_no_restart(self, handler):
        # Left out when unset, so recipes, fingerprints and cache keys made before it existed are unchanged.
        data = handler(self)
        if isinstance(data, dict) and data.get("restart_epochs", 0) is None:
            del data["restart_epochs"]
        return data

    @property
    def augmentations(self) -> tuple[str, ...]:
        if self.augment is True:
            return ("shift", "hflip")
        return tuple(self.augment or ())


class TeacherConfig(_Section):
    # A registered family (resnet_small, cnn, mlp), "tv:<torchvision arch>", or an import path
    # "package.module:factory" called with model_kwargs (and num_classes / in_channels / in_features when
    # it takes them). Not needed when the checkpoint carries its own architecture (TorchScript,
    # torch.export, a pickled module, ONNX, or one written by `compress teacher`).
    model: str = "resnet_small"
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    # Where the trained checkpoint lives. A file that exists is loaded (and checked against sha256 and the
    # teacher.json beside it); `compress teacher` writes it. Formats: a state_dict (plain, or under
    # "state_dict"/"model", with a "module."-style prefix stripped), TorchScript, torch.export (.pt2), a
    # pickled nn.Module (only with trust_pickle), or an ONNX file (.onnx: its logits come from ONNX Runtime).
    checkpoint: str = "teachers/fashion_mnist_resnet/model.pt"
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")  # pin an exact checkpoint
    # Unpickling a whole module runs code from the file: allowed only when the recipe says it trusts it.
    trust_pickle: bool = False
    train: TrainConfig = TrainConfig(epochs=15, lr=0.1, augment=True, bf16="auto")


class StudentConfig(_Section):
    # A registered family (cnn and resnet_small for images, mlp for vectors), "tv:<torchvision arch>", an
    # import path "package.module:factory", or "teacher": a copy of the teacher, weights included, shrunk by
    # prune.ratio before distillation (width, depth and kwargs then do not apply).
    model: str = "cnn"
    # Shorthands for the families that take them (cnn: channels of the first stage, doubled per stage, and
    # conv layers per stage; mlp: hidden units and hidden layers); None is the family's default.
    width: int | None = Field(None, ge=1, le=4096)
    depth: int | None = Field(None, ge=1, le=16)
    kwargs: dict[str, Any] = Field(default_factory=dict)  # any other constructor argument; searchable


class DistillConfig(_Section):
    # Hinton et al. 2015: loss = alpha * T^2 * KL(soft_teacher || soft_student) + (1 - alpha) * CE(labels).
    enabled: bool = True  # False trains the student on hard labels only (the no-distillation baseline)
    temperature: float = Field(4.0, gt=0, le=100)
    alpha: float = Field(0.9, ge=0, le=1)
    train: TrainConfig = TrainConfig(epochs=15, lr=0.05)


class PruneConfig(_Section):
    enabled: bool = False
    ratio: float = Field(0.3, ge=0, lt=1)  # fraction of channels removed in every prunable layer
    importance: Literal["l1", "l2", "random"] = "l2"  # Torch-Pruning group magnitude importance
    # Keep channel counts multiples of this (Torch-Pruning's round_to; kept counts round down). int8 kernels
    # work on blocks of channels: the teacher pruned by 0.7 to 19-28-57-76 channels ran at p50 0.19 ms,
    # rounded to 16-24-56-72 at 0.11 ms (int8, batch 1, one thread, this repo's reference machine).
    round_to: int | None = Field(None, ge=1)
    # Module names (as in model.named_modules()) left unpruned, e.g. a layer Torch-Pruning cannot handle.
    # The classifier (the layer producing the class scores) is always kept.
    ignore: list[str] = Field(default_factory=list)
    finetune: TrainConfig = TrainConfig(epochs=3, lr=0.01, warmup_epochs=0)


class QuantizeConfig(_Section):
    enabled: bool = False
    # QDQ is ONNX Runtime's recommended format; QOperator is sometimes faster on small CNNs, so it is offered.
    format: Literal["qdq", "qoperator"] = "qdq"
    per_channel: bool = True
    calibration: Literal["minmax", "entropy", "percentile"] = "minmax"
    calibration_size: int = Field(512, ge=1, le=55000)  # images from the training split
    # 7-bit weights. ONNX Runtime's u8 x s8 kernels without VNNI (plain AVX2) add pairs of products in 16
    # bits, which saturate: a ResNet-18's int8 copy agreed with it on 94% of images on such a CPU. None:
    # on when the measuring CPU has no VNNI, off when it has (where it would only cost accuracy).
    reduce_range: bool | None = None


class ExportConfig(_Section):
    opset: int = Field(17, ge=17, le=23)
    fp32_max_abs_diff: float = Field(1e-3, gt=0)  # parity gate: ONNX fp32 vs PyTorch logits
    int8_min_agreement: float = Field(0.99, gt=0, le=1)  # parity gate: int8 top-1 vs PyTorch top-1


class TargetConfig(_Section):
    device: Literal["cpu", "cuda"] = "cpu"
    batch_size: int = Field(1, ge=1, le=4096)
    threads: int = Field(1, ge=1, le=256)  # intra-op threads; inter-op is always 1 (sequential graph)


class LatencyConfig(_Section):
    warmup_runs: int = Field(50, ge=0)
    min_runs: int = Field(200, ge=1)
    max_runs: int = Field(5000, ge=1)
    max_seconds: float = Field(5.0, gt=0)  # per model; stops timing early once p50 is stable


class Range(_Section):
    """A searchable numeric range; integer fields get integers."""

    low: float
    high: float
    step: float | None = Field(None, gt=0)
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self):
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and (self.low <= 0 or self.step is not None):
            raise ValueError("log ranges need low > 0 and no step")
        return self


class HalvingConfig(_Section):
    """Cheap early, exact late (successive halving). Every candidate that trains first runs a short schedule:
    its first training schedule cut to ``short_fraction`` of its epochs (at least one; its own warm-up and
    cosine, so the short model is finished, not interrupted). Its validation accuracy then decides: when it
    ranks in the top 1/``reduction_factor`` of the short-schedule accuracies of comparable candidates (same
    family, MACs within 2x; Optuna's SuccessiveHalvingPruner decides, which promotes the first of a kind),
    training goes on from that model for the rest of the epochs (a warm restart, recorded in its recipe as
    ``restart_epochs``), so promotion costs no retraining. Otherwise the short model is finished as the
    short schedule's recipe says (its later schedules cut too) and is the trial's result: a real model,
    measured like any other, that may stand on the front with the epochs it had recorded in its recipe.

    ``front``: a rung winner is not promoted either when it cannot reach the Pareto front: a finished trial
    at least as fast (its trial-time p95 against this candidate's, timed before training by
    ``search.skip_slow``) is already at least as accurate as this short schedule's accuracy plus the most any
    candidate of its family has gained from the rest of its full schedule. Until one of the family has
    finished a full schedule there is no gain to go by, and ranks alone decide.

    ``bootstrap``: the first ``bootstrap`` short schedules of a tier are not promoted (Optuna's bootstrap_count):
    a candidate then goes on for beating comparable ones, not for being the first of its kind. The candidates of
    ``search.enqueue`` go on whatever their rank: whoever named them wants their full schedule."""

    enabled: bool = False
    short_fraction: float = Field(0.25, gt=0, lt=1)
    reduction_factor: int = Field(3, ge=2)
    front: bool = True
    bootstrap: int = Field(0, ge=0)


class SearchConfig(_Section):
    n_trials: int = Field(20, ge=1)  # completed + pruned trials the study aims for (resumes count)
    timeout_s: float | None = Field(None, gt=0)  # stop starting new trials after this long
    # The whole run's budget, from `compress search` to its report: no trial starts (and no short schedule is
    # promoted) that is predicted to end after the time the rest of the run needs (compress.deadline).
    wall_time_s: float | None = Field(None, gt=0)
    sampler: Literal["tpe", "nsga2"] = "tpe"
    startup_trials: int = Field(6, ge=0)  # TPE: random trials before the model-based ones
    pruner: Literal["median", "hyperband", "none"] = "median"
    # Search-time training uses the first fraction of the training split; every candidate is still
    # evaluated on the full validation and test splits.
    train_fraction: float = Field(1.0, gt=0, le=1)
    # Any Optuna storage URL; None: sqlite:///results/<name>/study.db. journal:PATH is Optuna's journal file
    # (several processes on one machine); postgresql+psycopg2://user@host/db for many machines (password from
    # PGPASSWORD or ~/.pgpass; one given in the URL is masked in every output).
    storage: str | None = None
    # Optuna artifact store for the trials' models: a folder every worker reaches (None: results/<name>/artifacts),
    # s3://bucket or gs://bucket.
    artifacts: str | None = None
    keep_dominated_models: bool = False  # dominated trials' ONNX files are deleted to save disk
    # Latency first: each candidate is timed untrained (built, pruned, exported, quantized) before training.
    # One whose p95 misses slo.p95_ms beyond its 95% confidence interval is recorded with that latency as
    # infeasible and not trained (seconds, not minutes). false: train it anyway (the slow end of the front).
    # A candidate with no training (the teacher as it is, at most quantized) is finished either way.
    skip_slow: bool = True
    halving: HalvingConfig = HalvingConfig()
    baselines: bool = True  # teacher int8, teacher pruned 50% + fine-tune, student without KD
    baseline_prune_ratio: float = Field(0.5, gt=0, lt=1)
    baseline_finetune: TrainConfig = TrainConfig(epochs=2, lr=0.01, warmup_epochs=0, bf16="auto")
    # The models trained after the search (the chosen candidate's full schedule, the baselines) train this many
    # at a time, each in a process of its own with the cores shared out: two 1-thread trainings made 1.25-1.6x
    # the steps of one 2-thread training on 2 cores (results/train_threads.json). None: 2 when training runs
    # on a CPU with at least 2 threads, else 1 (one after another, in this process).
    finish_processes: int | None = Field(None, ge=1)
    # Worker processes `compress search` runs on this machine, all on the one study, the cores shared out among
    # them (training threads = cores / workers). More workers on other machines join with their own command.
    workers: int = Field(1, ge=1)
    # key.path -> fixed value, {low, high[, step, log]} or [choices]; e.g. student.width: {low: 8, high: 48, step: 8}
    # or branches, a sub-space per choice: student.model: {teacher: {prune.ratio: ...}, cnn: {student.width: ...}}
    space: dict[str, Any] = Field(default_factory=dict)
    # Candidates tried first, before the covering grid (Optuna's enqueue_trial): each a mapping of the study's
    # parameter names (a branch's as <choice>/<key.path>) to values, the rest sampled; e.g.
    # [{student.model: cnn, cnn/student.width: 8, cnn/student.depth: 2}] for one you know is worth a trial.
    enqueue: list[dict[str, Any]] = Field(default_factory=list)


class BatchRequirement(_Section):
    """Score ``records`` within ``hours``: implies a throughput of records / (hours * 3600) samples/s."""

    records: int = Field(ge=1)
    hours: float = Field(gt=0)
    # Cores the job may use; a candidate that would need more is infeasible. None: any number (it just costs).
    max_cores: int | None = Field(None, ge=1)

    @property
    def required_sps(self) -> float:
        return self.records / (self.hours * 3600.0)


class ServiceLevel(_Section):
    """The requirement, online (p95 per request) and/or batch (records by a deadline)."""

    p95_ms: float | None = Field(None, gt=0)  # online: per-request p95 at target.batch_size and target.threads
    concurrency: int = Field(1, ge=1)  # online: requests in flight at once at peak; one replica each
    requests_per_s: float | None = Field(None, gt=0)  # online: peak load, for the capacity plan
    batch: BatchRequirement | None = None
    # Largest allowed validation-accuracy drop from the teacher, in percentage points.
    max_accuracy_drop_pp: float | None = Field(None, ge=0)


class CostConfig(_Section):
    # Prices for the plan; defaults are typical on-demand cloud list prices, replace them with yours.
    cpu_core_hour: float = Field(0.048, ge=0)  # per vCPU-hour
    gpu_hour: float = Field(2.50, ge=0)  # per GPU-hour
    currency: str = "USD"


class CapacityConfig(_Section):
    enabled: bool = True
    batch_sizes: list[int] = Field(default_factory=lambda: [1, 8, 32, 128], min_length=1)
    threads: list[int] | None = None  # None: 1, 2, 4, ... (powers of two) and all the cores
    # Online replicas are sized to run at most this busy: queueing keeps p95 near the measured one only
    # well below saturation.
    target_utilization: float = Field(0.7, gt=0, le=1)
    max_seconds: float = Field(1.0, gt=0)  # per model and setting


class Recipe(_Section):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")  # also the results/<name>/ folder
    seed: int = 0
    output_dir: str = "results"
    data: DataConfig = DataConfig()
    teacher: TeacherConfig = TeacherConfig()
    student: StudentConfig = StudentConfig()
    distill: DistillConfig = DistillConfig()
    prune: PruneConfig = PruneConfig()
    quantize: QuantizeConfig = QuantizeConfig()
    export: ExportConfig = ExportConfig()
    target: TargetConfig = TargetConfig()
    latency: LatencyConfig = LatencyConfig()
    search: SearchConfig = SearchConfig()
    slo: ServiceLevel = ServiceLevel()
    cost: CostConfig = CostConfig()
    capacity: CapacityConfig = CapacityConfig()

    @property
    def out_path(self) -> Path:
        return Path(self.output_dir) / self.name

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def public_dict(self) -> dict[str, Any]:
        """``to_dict`` for outputs: the storage URL with any password masked."""
        from compress.storage import mask

        data = self.to_dict()
        data["search"]["storage"] = mask(data["search"]["storage"])
        return data

    def fingerprint(self, before_bf16_auto: bool = False) -> str:
        """``before_bf16_auto``: as the code before ``bf16: auto`` computed it (see as_before_bf16_auto)."""
        data = self.to_dict()
        return fingerprint_of(as_before_bf16_auto(data) if before_bf16_auto else data)


def fingerprint_of(data: Any, length: int = 12) -> str:
    """The sha256 of a JSON-able value (keys sorted), cut to ``length`` hex digits."""
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:length]


def as_before_bf16_auto(node: Any) -> Any:
    """A recipe dict with every ``bf16: auto`` read as true, as the shipped recipes and the defaults said
    before auto existed: what studies and caches made then were keyed by."""
    if isinstance(node, dict):
        return {k: True if k == "bf16" and v == "auto" else as_before_bf16_auto(v) for k, v in node.items()}
    if isinstance(node, list):
        return [as_before_bf16_auto(v) for v in node]
    return node


def _format_errors(source: str, err: ValidationError) -> str:
    lines = [f"{source}: invalid recipe"]
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            lines.append(f"  {path}: unknown key (value {e['input']!r}); check the spelling against recipes/*.yaml")
        elif e["type"] == "missing":
            lines.append(f"  {path}: required key is missing")
        else:
            lines.append(f"  {path} = {e['input']!r}: {e['msg']}")
    return "\n".join(lines)


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
        raise RecipeError(_format_errors(source, err)) from None
    _check_space(recipe, source)
    _check_enqueue(recipe, source)
    return recipe


NOT_SEARCHABLE = ("name", "output_dir", "search", "slo", "data", "teacher", "target", "latency", "export", "cost",
                  "capacity")


BRANCH_SEP = "/"  # a parameter of a branch is named "<choice>/<key.path>" in the study


def with_values(recipe: Recipe, values: dict[str, Any]) -> Recipe:
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
    return Recipe.model_validate(data)


def space_leaf(recipe: Recipe, key: str) -> Any:
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


def space_choices(recipe: Recipe, key: str) -> list[Any]:
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


def _check_space(recipe: Recipe, source: str, space: dict | None = None, prefix: str = "search.space") -> None:
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
                _check_space(recipe, source, sub, f"{where}.{choice}")
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
                msg = _format_errors(source, err).replace(f"  {key} =", f"  {where}: {key} =")
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


def _check_enqueue(recipe: Recipe, source: str) -> None:
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
