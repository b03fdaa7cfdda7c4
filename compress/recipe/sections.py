"""The recipe's sections: one typed, frozen config each, every field with its default and description
(docs/recipe.md is made from them)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_serializer,
    model_validator,
)


class Section(BaseModel):
    # extra="forbid": a misspelt key is an error, never silently ignored.
    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())


SOURCES = ("fashion_mnist", "torchvision", "folder", "arrays", "import")


class DataConfig(Section):
    """One module per source under compress/data/. Class count, names and input shape come from the data and are
    checked against the teacher; the test split only ever gives the reported test accuracy."""

    source: Literal["fashion_mnist", "torchvision", "folder", "arrays", "import"] = Field(
        "fashion_mnist", description="fashion_mnist: the embedded default (Debian's dataset-fashion-mnist); "
        "torchvision: a dataset class (`name`); folder: ImageFolder trees; arrays: a .npz file (`path`); "
        "import: a factory function (`factory`).")
    root: str | None = Field(None, description="The data's folder: fashion_mnist's IDX files (null: Debian's "
                             "/usr/share/datasets/fashion-mnist, else .data/), torchvision's root, or folder's one "
                             "tree, from which the test split is held out by seed.")
    name: str | None = Field(None, description="torchvision: the dataset class, e.g. MNIST or CIFAR10.")
    download: bool = Field(False, description="torchvision: whether it may download the dataset (needs network).")
    path: str | None = Field(None, description="arrays: the .npz file with x_train, y_train, x_test, y_test "
                             "[, x_val, y_val, labels]; images N x H x W [x C] or N x C x H x W, or vectors N x D.")
    train_dir: str | None = Field(None, description="folder: the training tree, when the splits are separate "
                                  "trees (test_dir is then required, val_dir optional).")
    val_dir: str | None = Field(None, description="folder: the validation tree; else carved from training.")
    test_dir: str | None = Field(None, description="folder: the test tree (required with train_dir).")
    test_fraction: float = Field(0.2, gt=0, lt=1, description="folder, one tree: the share held out for test.")
    factory: str | None = Field(None, description="import: package.module:function returning (train, val or None, "
                                "test) or a dict.")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="import: keyword arguments of the factory.")
    image_size: int | list[int] | None = Field(None, description="Images: the model's input size, an int (square) "
                                               "or [height, width]; null keeps the data's own (a folder's first "
                                               "image's).")
    resize: int | None = Field(None, ge=1, description="Images: shorter side to this, then centre-crop.")
    channels: Literal[1, 3] | None = Field(None, description="Images: 1 (grayscale) or 3 (RGB); null: the data's.")
    mean: list[float] | None = Field(None, description="Normalisation mean per channel (images) or per feature "
                                     "(vectors); null computes it on the training split (Fashion-MNIST keeps its "
                                     "published 0.2860).")
    std: list[float] | None = Field(None, description="Normalisation std, with mean (Fashion-MNIST: 0.3530).")
    labels: list[str] | None = Field(None, description="Class names in label order; null: the data's, or 0, 1, ...")
    stream: bool | None = Field(None, description="Folder trees: read images from disk batch by batch (DataLoader "
                                "workers) instead of holding them in memory; null streams when the pixels at the "
                                "model's size would take more than max_memory_mb.")
    max_memory_mb: int = Field(2048, ge=1, description="Folder trees: the size above which `stream: null` streams.")
    workers: int = Field(2, ge=0, description="DataLoader worker processes that read and prepare streamed images.")
    val_size: int = Field(5000, ge=1, description="Validation samples carved from the training set (by "
                          "split_seed) when the data has no validation split.")
    val_fraction: float | None = Field(None, gt=0, lt=1, description="Instead of val_size: the share of the "
                                       "training set carved out for validation.")
    split_seed: int = Field(0, description="Seed of the train/validation split, apart from the run's seed so "
                            "the split never changes with it.")
    train_subset: int | None = Field(None, ge=1, description="Only the first N training samples (tests, smoke "
                                     "checks); null uses the whole split.")
    val_subset: int | None = Field(None, ge=1, description="Only the first N validation samples.")
    test_subset: int | None = Field(None, ge=1, description="Only the first N test samples.")
    eval_batch_size: int = Field(1000, ge=1, description="Evaluation batch size; not read by the current code.")

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


class TrainConfig(Section):
    """A training schedule: SGD with momentum, linear warm-up, then cosine decay to zero. Used by teacher.train,
    distill.train, prune.finetune and search.baseline_finetune, each with its own defaults."""

    epochs: int = Field(10, ge=0, description="Epochs to train.")
    batch_size: int = Field(256, ge=1, description="Training batch size.")
    lr: float = Field(0.05, gt=0, description="Peak learning rate, reached at the end of the warm-up.")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum.")
    weight_decay: float = Field(5e-4, ge=0, description="SGD weight decay.")
    warmup_epochs: float = Field(0.5, ge=0, description="Linear warm-up, in epochs (fractions allowed), before the "
                                 "cosine decay.")
    augment: bool | list[Literal["shift", "hflip"]] = Field(False, description=(
        "Images only: true is random 2-pixel shifts and horizontal flips (about 1 pp for the Fashion-MNIST teacher), "
        "or a list of them (no flips for digits or text). Off by default: with it, distillation cannot reuse "
        "cached teacher logits."))
    bf16: bool | Literal["auto"] = Field(False, description=(
        "bf16 autocast: about 3x faster training on CPUs with AVX-512 BF16, but emulated and 7-8x slower than fp32 "
        "without it. auto uses it where the training device computes it natively (workers on different machines "
        "may then differ: pin true or false where that matters)."))
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where training runs: auto is a CUDA GPU "
                                                   "when there is one, else the CPU. Latency is always measured on "
                                                   "target.device.")
    restart_epochs: int | None = Field(None, ge=1, description=(
        "A warm restart: the first restart_epochs are a schedule of their own (warm-up, cosine), the rest another, "
        "model and momentum carried over. Set by search.halving on a promoted candidate, so promotion retrains "
        "nothing."))

    @model_validator(mode="after")
    def _restart_inside(self):
        if self.restart_epochs is not None and self.restart_epochs >= self.epochs:
            raise ValueError(f"restart_epochs ({self.restart_epochs}) must be below epochs ({self.epochs})")
        return self

    @model_serializer(mode="wrap")
    def _omit_no_restart(self, handler):
        # Left out when unset: a written recipe (the bundle's manifest too) names a restart only where there is one.
        data = handler(self)
        if isinstance(data, dict) and data.get("restart_epochs", 0) is None:
            del data["restart_epochs"]
        return data

    @property
    def augmentations(self) -> tuple[str, ...]:
        if self.augment is True:
            return ("shift", "hflip")
        return tuple(self.augment or ())


class TeacherConfig(Section):
    """The big, accurate model to compress. `compress teacher` trains it and writes its checkpoint."""

    model: str | None = Field(None, description=(
        "A registered family (resnet_small, cnn, mlp), tv:<torchvision arch>, or package.module:factory called "
        "with model_kwargs (and num_classes, in_channels, in_features where it takes them). Leave it out when the "
        "checkpoint carries its architecture (TorchScript, torch.export, a pickled module, ONNX, one `compress "
        "teacher` wrote); one that contradicts the checkpoint is an error."))
    model_kwargs: dict[str, Any] = Field(default_factory=dict, description="The architecture's constructor arguments.")
    checkpoint: str = Field("teachers/fashion_mnist_resnet/model.pt", description=(
        "The trained checkpoint, checked against sha256 and the teacher.json beside it: a state_dict (plain or "
        "under state_dict/model, a module. prefix stripped), TorchScript, torch.export (.pt2), a pickled nn.Module "
        "(only with trust_pickle) or ONNX (its logits from ONNX Runtime)."))
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$", description="Pin an exact checkpoint.")
    trust_pickle: bool = Field(False, description="Allow a pickled module: unpickling runs the file's code.")
    train: TrainConfig = Field(TrainConfig(epochs=15, lr=0.1, augment=True, bf16="auto"),
                               description="The teacher's schedule (`compress teacher`).")


class StudentConfig(Section):
    """The small model trained to imitate the teacher."""

    model: str = Field("cnn", description=(
        "A registered family (cnn and resnet_small for images, mlp for vectors or flattened images), tv:<arch>, an "
        "import path, or teacher: a copy of the teacher, weights included, shrunk by prune.ratio before "
        "distillation (width, depth and kwargs then do not apply)."))
    width: int | None = Field(None, ge=1, le=4096, description="cnn: channels of the first stage, doubled per "
                              "stage; mlp: hidden units. null is the family's default.")
    depth: int | None = Field(None, ge=1, le=16, description="cnn: conv layers per stage; mlp: hidden layers. "
                              "null is the family's default.")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Any other constructor argument; each is "
                                   "searchable as student.kwargs.<name>.")


class DistillConfig(Section):
    """Knowledge distillation (Hinton et al. 2015): loss = alpha * T^2 * KL(soft teacher, soft student)
    + (1 - alpha) * CE(labels)."""

    enabled: bool = Field(True, description="false trains on hard labels only (the no-distillation baseline).")
    temperature: float = Field(4.0, gt=0, le=100, description="T: softens both distributions, so the soft targets "
                               "carry how the teacher ranks the wrong classes.")
    alpha: float = Field(0.9, ge=0, le=1, description="Weight of the soft targets; 1 - alpha of the hard labels.")
    train: TrainConfig = Field(TrainConfig(epochs=15, lr=0.05), description="The schedule of a student trained "
                               "from scratch (a student made from the teacher trains prune.finetune's).")


class PruneConfig(Section):
    """Structured pruning with Torch-Pruning: channels are physically removed, BatchNorm statistics are
    re-estimated on training images, then the model is fine-tuned with distillation."""

    enabled: bool = Field(False, description="Remove channels: after distillation for a scratch student, before "
                          "training for one made from the teacher.")
    ratio: float = Field(0.3, ge=0, lt=1, description="Fraction of channels removed in every prunable layer.")
    importance: Literal["l1", "l2", "random"] = Field("l2", description="Torch-Pruning's group importance: L1 or "
                                                      "L2 magnitude, or random.")
    round_to: int | None = Field(None, ge=1, description="Keep channel counts multiples of this (rounding down): "
                                 "int8 kernels work on blocks of channels, so rounded counts run faster.")
    ignore: list[str] = Field(default_factory=list, description="Module names (as in named_modules()) left "
                              "unpruned, e.g. a layer Torch-Pruning cannot handle; the classifier is always kept.")
    finetune: TrainConfig = Field(TrainConfig(epochs=3, lr=0.01, warmup_epochs=0), description="The schedule after "
                                  "pruning; for a student made from the teacher, its whole training.")


class QuantizeConfig(Section):
    """Static int8 quantization with ONNX Runtime, calibrated on training images; the int8 copy must pass
    export.int8_min_agreement."""

    enabled: bool = Field(False, description="Quantize the exported model to int8; false keeps fp32.")
    format: Literal["qdq", "qoperator"] = Field("qdq", description="QDQ is ONNX Runtime's recommended format; "
                                                "QOperator is sometimes faster on small CNNs, so it is offered.")
    per_channel: bool = Field(True, description="One weight scale per output channel, else one per tensor.")
    calibration: Literal["minmax", "entropy", "percentile"] = Field("minmax", description="How activation "
                                                                    "ranges are calibrated.")
    calibration_size: int = Field(512, ge=1, le=55000, description="Calibration images, from the training split.")
    reduce_range: bool | None = Field(None, description=(
        "7-bit weights: without VNNI (plain AVX2) ONNX Runtime's u8 x s8 kernels add pairs of products in 16 bits, "
        "which saturate. null: on when the measuring CPU has no VNNI, off when it has (it would only cost accuracy)."))


class ExportConfig(Section):
    """ONNX export with a dynamic batch, and the parity gates every exported model passes."""

    opset: int = Field(17, ge=17, le=23, description="ONNX opset.")
    fp32_max_abs_diff: float = Field(1e-3, gt=0, description="Parity gate: largest difference between ONNX fp32 "
                                     "and PyTorch logits, per unit of the largest logit magnitude (at least 1).")
    int8_min_agreement: float = Field(0.99, gt=0, le=1, description="Parity gate: least share of validation "
                                      "samples on which int8 top-1 agrees with PyTorch's.")


class TargetConfig(Section):
    """How the model will serve; every latency is measured this way."""

    device: Literal["cpu", "cuda"] = Field("cpu", description="cpu (ONNX Runtime's CPU provider) or cuda.")
    batch_size: int = Field(1, ge=1, le=4096, description="Samples per request.")
    threads: int = Field(1, ge=1, le=256, description="Intra-op threads of a replica; inter-op is always 1.")


class LatencyConfig(Section):
    """Bounds of the latency protocol (docs/latency.md)."""

    warmup_runs: int = Field(50, ge=0, description="Untimed runs first.")
    min_runs: int = Field(200, ge=1, description="Timed runs, at least.")
    max_runs: int = Field(5000, ge=1, description="Timed runs, at most.")
    max_seconds: float = Field(5.0, gt=0, description="Time cap per model; timing stops earlier once p50 and p95 "
                               "are stable.")


class HalvingConfig(Section):
    """Successive halving, cheap early and exact late: every candidate that trains first runs a short schedule,
    and only a rung winner goes on from that model to its full schedule (docs/search.md)."""

    enabled: bool = Field(False, description="Short schedule first, full schedule only for rung winners; off, "
                          "every candidate trains its full schedule.")
    short_fraction: float = Field(0.25, gt=0, lt=1, description="The short schedule's share of the first "
                                  "schedule's epochs (at least one), with its own warm-up and cosine.")
    reduction_factor: int = Field(3, ge=2, description="Promote the top 1/reduction_factor of the tier's "
                                  "short-schedule accuracies (Optuna's SuccessiveHalvingPruner).")
    front: bool = Field(True, description="Keep a rung winner short when a finished trial as fast is already as "
                        "accurate as it could become, less one standard error.")
    bootstrap: int = Field(0, ge=0, description="The tier's first N short schedules are not promoted, so a "
                           "candidate goes on for beating a comparable one; search.enqueue's go on anyway.")


class SearchConfig(Section):
    """The Optuna study: maximise validation accuracy, minimise p95 latency, with the service level as
    constraints (docs/search.md)."""

    n_trials: int = Field(20, ge=1, description="Complete + pruned trials the study aims for, all workers together.")
    timeout_s: float | None = Field(None, gt=0, description="No trial starts, or is promoted, that would end after "
                                    "the study's trials have run this long.")
    wall_time_s: float | None = Field(None, gt=0, description=(
        "The whole run's budget, from `compress search` to its report: no trial starts, and none is promoted, "
        "that is predicted to end after the time the rest of the run needs."))
    sampler: Literal["tpe", "nsga2"] = Field("tpe", description="TPE (multivariate, grouped, constant liar) or "
                                             "NSGA-II, seeded.")
    startup_trials: int = Field(6, ge=0, description="Trials before TPE's model-based ones: the covering grid, "
                                "which tries every categorical choice.")
    train_fraction: float = Field(1.0, gt=0, le=1, description=(
        "Search-time training uses this first fraction of the training split; every candidate is still evaluated "
        "on the full validation and test splits, and the chosen one retrained on the whole split."))
    storage: str | None = Field(None, description=(
        "Any Optuna storage URL; null is sqlite:///results/<name>/study.db. journal:PATH for several processes on one "
        "machine, postgresql+psycopg2://user@host/db for many (password from PGPASSWORD or ~/.pgpass)."))
    artifacts: str | None = Field(None, description="Optuna artifact store for the trials' models: a folder every "
                                  "worker reaches (null: results/<name>/artifacts), s3://bucket or gs://bucket.")
    keep_dominated_models: bool = Field(False, description="Keep dominated trials' ONNX files (else deleted).")
    skip_slow: bool = Field(True, description=(
        "Latency first: a candidate timed untrained whose p95 misses slo.p95_ms beyond its 95% confidence interval "
        "is recorded as infeasible and not trained. false trains it anyway (the slow end of the front)."))
    halving: HalvingConfig = Field(HalvingConfig(), description="Successive halving: a short schedule first, the full "
                                   "one only for the best of a tier.")
    baselines: bool = Field(True, description="Build the baselines: the teacher in int8, the teacher pruned and "
                            "fine-tuned on hard labels, the chosen student without KD.")
    baseline_prune_ratio: float = Field(0.5, gt=0, lt=1, description="Channels the pruned-teacher baseline removes.")
    baseline_finetune: TrainConfig = Field(TrainConfig(epochs=2, lr=0.01, warmup_epochs=0, bf16="auto"),
                                           description="The pruned-teacher baseline's fine-tuning on hard labels.")
    finish_processes: int | None = Field(None, ge=1, description=(
        "Models trained after the search train this many at a time, each in its own process with the cores shared "
        "out: two 1-thread trainings beat one 2-thread one. null: 2 on a CPU with at least 2 threads, else 1."))
    workers: int = Field(1, ge=1, description="Worker processes `compress search` runs on this machine, on one "
                         "study, the cores shared out; workers elsewhere join with their own command.")
    space: dict[str, Any] = Field(default_factory=dict, description=(
        "key.path: a fixed value, {low, high[, step, log]} or [choices] of a student, distill, prune or quantize "
        "field; or branches, a sub-space per choice: student.model: {teacher: {...}, cnn: {...}}."))
    enqueue: list[dict[str, Any]] = Field(default_factory=list, description=(
        "Candidates tried first, before the covering grid: each maps parameter names (a branch's as "
        "<choice>/<key.path>) to values, the rest sampled."))


class BatchRequirement(Section):
    """Score ``records`` within ``hours``: implies a throughput of records / (hours * 3600) samples/s."""

    records: int = Field(ge=1, description="Records to score.")
    hours: float = Field(gt=0, description="The deadline, in hours.")
    max_cores: int | None = Field(None, ge=1, description="Cores the job may use; a candidate that would need more "
                                  "is infeasible. null: any number (it just costs).")

    @property
    def required_sps(self) -> float:
        return self.records / (self.hours * 3600.0)


class ServiceLevel(Section):
    """The requirement, online (p95 per request) and/or batch (records by a deadline); both become Optuna
    constraints, so a trial that misses it is kept and shown, never chosen."""

    p95_ms: float | None = Field(None, gt=0, description="Online: per-request p95 bound, in the target setting.")
    concurrency: int = Field(1, ge=1, description="Online: requests in flight at once at peak, one replica each.")
    requests_per_s: float | None = Field(None, gt=0, description="Online: peak load, for the capacity plan.")
    batch: BatchRequirement | None = Field(None, description="Batch: records to score by a deadline.")
    max_accuracy_drop_pp: float | None = Field(None, ge=0, description="Largest allowed validation-accuracy drop "
                                               "from the teacher, in percentage points.")


class CostConfig(Section):
    """Prices for the capacity plan: typical on-demand cloud list prices; replace them with yours."""

    cpu_core_hour: float = Field(0.048, ge=0, description="Price per vCPU-hour.")
    gpu_hour: float = Field(2.50, ge=0, description="Price per GPU-hour.")
    currency: str = Field("USD", description="Currency of the prices.")


class CapacityConfig(Section):
    """After the search the teacher and the front are swept over batch sizes and threads: how many cores meet the
    load and the batch deadline, and what that costs (capacity.md)."""

    enabled: bool = Field(True, description="Run the sweep and write the plan.")
    batch_sizes: list[int] = Field(default_factory=lambda: [1, 8, 32, 128], min_length=1,
                                   description="Batch sizes swept.")
    threads: list[int] | None = Field(None, description="Thread counts swept; null: 1, 2, 4, ... and all the cores.")
    target_utilization: float = Field(0.7, gt=0, le=1, description="Online replicas are sized to run at most this "
                                      "busy: queueing keeps p95 near the measured one only well below saturation.")
    max_seconds: float = Field(1.0, gt=0, description="Time bound per model and setting.")


def format_errors(source: str, err: ValidationError) -> str:
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
