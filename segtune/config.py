"""Typed run configuration: load YAML, apply ``--set`` overrides, validate everything up front.

A config has fixed sections (``data``, ``model``, ``loss``, ``optimizer``, ``scheduler``,
``augment``, ``train``). The component sections name a registered component and carry its
options next to the name; the options are checked against the component's own signature
(see :mod:`segtune.registry`), so a misspelt option or an option the component lacks is an
error, never silently dropped. Defaults live in the fields below and in the builders'
signatures, nowhere else.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Mapping

import pydantic
import torch
import yaml
from pydantic import Field

from segtune.components.augment import AUGMENTATIONS
from segtune.data import SOURCES
from segtune.errors import ConfigError, DataError
from segtune.components.losses import LOSSES
from segtune.components.models import MODELS
from segtune.components.optim import OPTIMIZERS, SCHEDULERS
from segtune.registry import Registry, RegistryError

Fraction = Annotated[float, Field(gt=0.0, le=1.0)]


def _safe_name(value: str) -> str:
    # a run or study name becomes a folder name under the folder the user chose (runs/ by default):
    # no separators, no '..', nothing hidden
    if not re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]*", value):
        raise ValueError("must be a safe file name: letters, digits, '-', '_' and '.', not starting with '.' "
                         "(it names a folder under runs/ or --out)")
    return value


SafeName = Annotated[str, pydantic.AfterValidator(_safe_name)]  # the name of a run or a study


class _Strict(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", validate_assignment=True)


class Component(pydantic.BaseModel):
    """A section that names a registered component; other keys are that component's options.

    Fields declared on a subclass are options common to every component of the kind.
    """

    model_config = pydantic.ConfigDict(extra="allow")
    registry: ClassVar[Registry]
    key: ClassVar[str] = "name"

    @pydantic.model_validator(mode="after")
    def _check_options(self) -> "Component":
        name = getattr(self, self.key)
        try:
            options = self.registry.validate(name, dict(self.__pydantic_extra__ or {}))
        except RegistryError as err:
            raise ValueError(str(err)) from None
        self.__pydantic_extra__ = options
        return self

    @property
    def options(self) -> dict[str, Any]:
        """The component's own options, defaults filled in."""
        return dict(self.__pydantic_extra__ or {})


class DataConfig(Component):
    """Where the images come from (``source``) and how they are prepared for every source."""

    registry: ClassVar[Registry] = SOURCES
    key: ClassVar[str] = "source"
    source: str = "demo"
    train_fraction: Fraction = 1.0  # share of the training split used, drawn with the seed
    resize: tuple[Annotated[int, Field(ge=8)], Annotated[int, Field(ge=8)]] | None = None
    # zscore and minmax per image; zscore_dataset with the training split's mean and std per channel;
    # ct clips to the training foreground's 0.5 / 99.5 percentiles and z-scores with its mean and std;
    # histogram equalises each image's channels (its own empirical CDF)
    normalize: Literal["zscore", "zscore_dataset", "ct", "minmax", "histogram", "none"] = "zscore"
    color: Literal["grey", "rgb"] | None = None  # convert every image to 1 or 3 channels; None: as the source gives
    label_map: dict[Annotated[int, Field(ge=0)], Annotated[int, Field(ge=0)]] | None = None  # e.g. {3: 1, 4: 0}
    # Merge foreground classes covering less than this share of the training pixels into background.
    min_class_fraction: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    # Drop training images (slices) whose foreground covers less than this share (DeepNAT / QuickNAT).
    min_foreground_fraction: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    # fixed: validate on the source's val split; rest: on the training images train_fraction leaves
    # out (at train_fraction 1 nothing is left out, and the fixed val split is used)
    val_from: Literal["fixed", "rest"] = "fixed"
    # K-fold cross-validation by case: the train and val cases are dealt into `folds` folds (seeded
    # by the source's split_seed) and fold `fold` is the val split; the test split is held out of
    # every fold. None: the source's own split (`fold` then picks a fold of a splits_final.json).
    folds: Annotated[int, Field(ge=2, le=20)] | None = None
    fold: Annotated[int, Field(ge=0)] = 0
    # (rows, columns) of a pixel in mm, for the surface distances of sources without a spacing of
    # their own (image folders); None: 1 mm. NIfTI volumes take theirs from the headers.
    pixel_spacing: tuple[Annotated[float, Field(gt=0.0)], Annotated[float, Field(gt=0.0)]] | None = None

    @pydantic.model_validator(mode="after")
    def _fold_of_source(self) -> "DataConfig":
        # a source with folds files of its own (nifti, folder) picks its fold from data.fold when
        # segtune makes no folds; with data.folds its own split (fold 0) is the one re-dealt
        if "fold" in self.options:
            self.__pydantic_extra__["fold"] = self.fold if self.folds is None else 0
        if self.folds is not None and self.fold >= self.folds:
            raise ValueError(f"data.fold={self.fold}, but data.folds={self.folds} gives folds 0 to "
                             f"{self.folds - 1}; set data.fold to one of them")
        if self.resize is not None and self.options.get("spacing") is not None and self.source == "nifti":
            # training resizes the padded canvas of every case, predict one case: they would not match
            raise ValueError(f"data.resize={list(self.resize)} and data.spacing={self.options['spacing']} are both "
                             f"set: a resize after resampling changes the spacing again; set data.resize: null "
                             f"(train.patch_size crops large slices instead) or data.spacing: null")
        return self

    @property
    def split_seed(self) -> int:
        """The seed of the source's split, which also deals the cross-validation folds."""
        return int(self.options.get("split_seed", 0))


class ModelConfig(Component):
    registry: ClassVar[Registry] = MODELS
    name: str = "monai_unet"
    # Transfer learning (with the model option encoder_weights): train only the decoder, and
    # optionally the whole network after unfreeze_encoder_after epochs (None = frozen to the end);
    # under train.steps after that many validations, as train.patience counts them.
    freeze_encoder: bool = False
    unfreeze_encoder_after: Annotated[int, Field(ge=1)] | None = None

    @pydantic.model_validator(mode="after")
    def _unfreeze_needs_freeze(self) -> "ModelConfig":
        if self.unfreeze_encoder_after is not None and not self.freeze_encoder:
            raise ValueError(f"model.unfreeze_encoder_after={self.unfreeze_encoder_after} needs "
                             f"model.freeze_encoder=true; set it, or remove unfreeze_encoder_after")
        return self


class LossConfig(Component):
    registry: ClassVar[Registry] = LOSSES
    name: str = "dice_ce"


class OptimizerConfig(Component):
    registry: ClassVar[Registry] = OPTIMIZERS
    name: str = "adam"

    @pydantic.model_validator(mode="after")
    def _builds(self) -> "OptimizerConfig":
        # Rules between options (nesterov needs momentum) and torch's own checks, before any data is
        # read: the optimizer is built once on a dummy weight.
        try:
            self.registry.build(self.name, self.options, [torch.nn.Parameter(torch.zeros(1))])
        except (ConfigError, ValueError) as err:
            raise ValueError(str(err)) from None
        return self


class SchedulerConfig(Component):
    registry: ClassVar[Registry] = SCHEDULERS
    name: str = "none"
    # Linear warm-up in front of any schedule: lr = base * (e + 1) / (warmup + 1) for e < warmup, on the
    # run's clock: warmup_epochs with train.epochs, warmup_steps with train.steps (the other stays 0).
    warmup_epochs: Annotated[int, Field(ge=0, description="epochs of linear warm-up; plateau counts validations "
                                                          "(= epochs when train.val_every is 1)")] = 0
    warmup_steps: Annotated[int, Field(ge=0, description="optimizer steps of linear warm-up, with train.steps; "
                                                         "plateau counts validations")] = 0


class AugmentConfig(Component):
    registry: ClassVar[Registry] = AUGMENTATIONS
    name: str = "none"
    n_aug: Annotated[int, Field(ge=0, le=20)] = 0  # extra augmented copies of each image per epoch


DEFAULT_EPOCHS = 40  # the budget of a config that sets neither train.epochs nor train.steps


class TrainConfig(_Strict):
    # The budget, one of the two: epochs (passes over the training images, validated every
    # `val_every` epochs) or steps (optimizer steps, one per batch, validated every
    # `val_every_steps` steps; None = once per epoch's worth of batches). The schedule's counts,
    # the pruners' rungs and metrics.csv follow the budget's clock. Steps set: epochs is None.
    epochs: Annotated[int, Field(ge=1)] | None = DEFAULT_EPOCHS
    steps: Annotated[int, Field(ge=1)] | None = None
    val_every_steps: Annotated[int, Field(ge=1)] | None = None
    batch_size: Annotated[int, Field(ge=1)] = 16
    # Early stopping: stop after `patience` validations without an improvement larger than
    # `min_delta` of `monitor` (= epochs when train.val_every is 1); 0 turns it off. The best
    # weights are restored at the end.
    monitor: Literal["val.dice_mean", "val.loss"] = "val.dice_mean"
    patience: Annotated[int, Field(ge=0, description="validations without improvement before the run stops "
                                                     "(= epochs when train.val_every is 1); 0 = never")] = 10
    min_delta: Annotated[float, Field(ge=0.0)] = 0.0
    restore_best: bool = True
    # A run has diverged when a batch loss is NaN or inf, or exceeds this multiple of the first
    # batch's loss (exploding training, e.g. SGD at lr 10); None checks NaN/inf only.
    divergence_factor: Annotated[float, Field(gt=1.0)] | None = 10.0
    val_every: Annotated[int, Field(ge=1)] = 1  # validate every n epochs (and at the last)
    # Patch training: each training sample is a random crop of patch_size (H, W) of its image
    # (padded with 0, masks with background, where the image is smaller), and validation, test,
    # evaluate and predict run gaussian-weighted sliding windows of that size (overlap 0.5) over
    # whole images; None trains and predicts on whole images. See segtune/training/patches.py.
    patch_size: tuple[Annotated[int, Field(ge=8)], Annotated[int, Field(ge=8)]] | None = None
    # The share of each batch's crops (its last B - round(B * (1 - share)), as nnU-Net) centred on
    # a foreground pixel of a random class present in the image (nnU-Net's 0.33), so rare small
    # structures are seen; the rest are placed uniformly. Used only with patch_size.
    foreground_oversample: Annotated[float, Field(ge=0.0, le=1.0)] = 0.33
    # A wall-clock budget for the run's training, in minutes; None = no budget. It counts the
    # epochs' time (training and validation), which is what a user budgets, not the set-up
    # (data loading) or the final evaluation; a resumed run counts the epochs before the
    # resume too. Checked after each epoch's training pass: that epoch is validated and is
    # the last, so a run overruns by at most one epoch and ends as a finished one does.
    max_minutes: Annotated[float, Field(gt=0.0)] | None = None
    device: str = "auto"  # auto = CUDA when present, else CPU; or cpu, cuda, cuda:1, mps
    # bf16: autocast to bfloat16 (CPU and GPU); fp16: autocast + grad scaler (GPU only); auto: on a
    # CPU the faster of fp32 and bf16, with or without channels_last, timed once per machine and
    # model shape and cached (segtune.training.precision); on a GPU bf16 where supported, else fp16.
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    channels_last: bool = True  # faster convolutions on CPU (oneDNN) and on tensor cores; auto times both
    # torch.compile the training forward pass: faster steps after a one-off compile (tens of
    # seconds, cached on disk for later runs of the same model); needs a C++ compiler on CPU.
    compile: bool = False
    # CPU threads: a count; None = every CPU this process may use (affinity and quota) but one (for
    # the machine's other work), fixed for the run, so the same config and seed give the same numbers;
    # auto = the CPUs other processes leave free, read again after each epoch (faster on a shared
    # machine, but the numbers then depend on its load). OMP_NUM_THREADS fixes the count of both.
    num_threads: Annotated[int, Field(ge=1)] | Literal["auto"] | None = None

    @pydantic.model_validator(mode="before")
    @classmethod
    def _one_budget(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        epochs, steps = data.get("epochs"), data.get("steps")
        if epochs is not None and steps is not None:
            raise ValueError(f"train.epochs={epochs} and train.steps={steps} are both set; a run's budget is one of "
                             f"them: remove one (or set it to null, e.g. --set train.epochs=null)")
        if steps is None:
            if data.get("val_every_steps") is not None:
                raise ValueError(f"train.val_every_steps={data['val_every_steps']} needs train.steps; with "
                                 f"train.epochs validate every n epochs with train.val_every")
            return {**data, "epochs": DEFAULT_EPOCHS if epochs is None else epochs}
        if data.get("val_every", 1) != 1:
            raise ValueError(f"train.val_every={data['val_every']} counts epochs and train.steps={steps} is set; "
                             f"use train.val_every_steps")
        return {**data, "epochs": None}

    @property
    def length(self) -> int:
        """The budget on the run's clock: ``steps`` when set, else ``epochs``."""
        return self.steps if self.steps is not None else self.epochs

    @property
    def unit(self) -> Literal["epoch", "step"]:
        """The run's clock: ``"step"`` with ``train.steps``, else ``"epoch"``."""
        return "step" if self.steps is not None else "epoch"

    @pydantic.field_validator("num_threads", mode="before")
    @classmethod
    def _thread_count(cls, value: Any) -> Any:
        if value is None or value == "auto" or (type(value) is int and value >= 1):
            return value
        raise ValueError("num_threads must be a positive whole number of CPU threads, auto (follow the CPUs "
                         "other processes leave free) or null (every CPU this process may use but one, fixed)")

    @pydantic.field_validator("device")
    @classmethod
    def _device_name(cls, value: str) -> str:
        head, _, index = value.partition(":")
        if head not in {"auto", "cpu", "cuda", "mps"} or (index and not index.isdigit()):
            raise ValueError(f"device must be auto, cpu, cuda, cuda:N or mps, not {value!r}")
        return value


class PretrainConfig(_Strict):
    """Autoencoder pre-training of the encoder before the run (:mod:`segtune.training.pretrain`).

    A budget (``steps`` or ``epochs``) turns it on: the run's config, with these budget fields in
    its ``train`` section and ``model`` / ``data`` merged onto its own (e.g. a deeper autoencoder,
    ``model: {channels: [16, 32, 64, 128, 256, 512]}``, or ``data: {train_fraction: 1.0}``), is
    pre-trained once per distinct setting, cached, and the run starts from its encoder
    (``model.encoder_weights``). No budget: no pre-training.
    """

    steps: Annotated[int, Field(ge=1)] | None = None
    epochs: Annotated[int, Field(ge=1)] | None = None
    val_every_steps: Annotated[int, Field(ge=1)] | None = None
    # the pre-training's own seed, not the run's: the repeats of a setting (seeds 0, 1, ...) share one
    # pre-training; vary pretrain.seed to repeat the pre-training itself
    seed: int = 0
    model: dict[str, Any] = {}
    data: dict[str, Any] = {}

    @pydantic.model_validator(mode="after")
    def _one_budget(self) -> "PretrainConfig":
        if self.steps is not None and self.epochs is not None:
            raise ValueError(f"pretrain.epochs={self.epochs} and pretrain.steps={self.steps} are both set; the "
                             f"pre-training's budget is one of them: remove one")
        if self.val_every_steps is not None and self.steps is None:
            raise ValueError(f"pretrain.val_every_steps={self.val_every_steps} needs pretrain.steps")
        return self

    @property
    def active(self) -> bool:
        """Whether the run pre-trains its encoder first."""
        return self.steps is not None or self.epochs is not None


class MetricsConfig(_Strict):
    """The surface metrics of a run's final val and test evaluations, per case and class, in mm
    (segtune.training.distances: HD95, normalised surface Dice, ASD, volume difference)."""

    surface: bool = True  # off: Dice and IoU only (the distance transforms cost time on large volumes)
    tolerance_mm: Annotated[float, Field(ge=0.0)] = 1.0  # of the normalised surface Dice
    percentile: Annotated[float, Field(gt=0.0, le=100.0)] = 95.0  # of the Hausdorff distance


class Config(_Strict):
    """A full run: what to train, on what, and how."""

    name: SafeName = "run"
    seed: int = 0
    # auto: the settings this config does not set are planned from the data's file headers
    # (segtune.data.plan; sources that read files only); off: every unset setting keeps its default.
    plan: Literal["auto", "off"] = "auto"
    # built when a config is, not at import: a default optimizer is checked by building it, and torch's
    # first optimizer imports torch._dynamo (about 2 s of every command's start)
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)

    @pydantic.field_validator("plan", mode="before")
    @classmethod
    def _plan_off_in_yaml(cls, value: Any) -> Any:
        # YAML reads an unquoted `plan: off` as false (and `on` as true)
        return {False: "off", True: "auto"}.get(value, value) if isinstance(value, bool) else value

    @pydantic.model_validator(mode="after")
    def _warmup_fits(self) -> "Config":
        unit, other = ("steps", "epochs") if self.train.steps is not None else ("epochs", "steps")
        warmup, length = getattr(self.scheduler, f"warmup_{unit}"), self.train.length
        if getattr(self.scheduler, f"warmup_{other}"):
            raise ValueError(f"scheduler.warmup_{other} counts {other} and the budget is train.{unit}; "
                             f"use scheduler.warmup_{unit}")
        if warmup >= length:
            raise ValueError(f"scheduler.warmup_{unit}={warmup} must be less than train.{unit}={length}; "
                             f"use fewer warm-up {unit} or more {unit}")
        return self

    @pydantic.model_validator(mode="after")
    def _pretraining_valid(self) -> "Config":
        if self.pretrain.active and self.model.options.get("encoder_weights"):
            raise ValueError(f"pretrain.{'steps' if self.pretrain.steps else 'epochs'} pre-trains the encoder and "
                             f"model.encoder_weights={self.model.options['encoder_weights']!r} gives one; remove one")
        if self.pretrain.active:
            try:
                self.pretraining()
            except ConfigError as err:  # its lines name the sections: say that they are the pre-training's
                problems = "; ".join(f"pretrain.{line.strip()}" for line in str(err).splitlines()[1:])
                raise ValueError(f"the pre-training config (the run's, with pretrain.*) is invalid: {problems}") from None
        return self

    def pretraining(self) -> "Config | None":
        """The config of the autoencoder pre-training ``pretrain`` asks for; None without a budget."""
        pre = self.pretrain
        if not pre.active:
            return None
        # only what pre-training uses, so that runs differing in the rest (the loss, freezing) share one
        run = self.to_dict()
        model = {k: v for k, v in run["model"].items() if k not in ("freeze_encoder", "unfreeze_encoder_after")}
        train = {k: run["train"][k] for k in ("batch_size", "device", "precision", "channels_last", "num_threads")}
        tree = {"name": self.name, "seed": pre.seed, "plan": "off", "data": run["data"], "model": model,
                "optimizer": run["optimizer"], "train": {**train, "epochs": pre.epochs, "steps": pre.steps,
                                                         "val_every_steps": pre.val_every_steps}}
        changes = {f"model.{k}": v for k, v in pre.model.items()} | {f"data.{k}": v for k, v in pre.data.items()}
        return build_config(apply_changes(tree, changes), origin="pretrain")

    def to_dict(self) -> dict[str, Any]:
        """The resolved config, every default filled in, as plain YAML-able values."""
        return self.model_dump(mode="json")


def parse_override(item: str) -> tuple[list[str], Any]:
    """Split ``a.b=value`` into its path and its YAML-parsed value.

    Raises:
        ConfigError: no ``=``, an empty path, or a value that is not valid YAML.
    """
    path, sep, raw = item.partition("=")
    if not sep or not path.strip():
        raise ConfigError(f"--set {item!r}: expected KEY.PATH=VALUE, e.g. optimizer.lr=1e-3")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or "not valid YAML"
        raise ConfigError(f"--set {item!r}: the value {raw!r} is not valid YAML ({problem}); write a list as "
                          f"[1, 2], a mapping as {{a: 1}}, or quote a string: {path.strip()}='{raw}'") from None
    return path.strip().split("."), value


def set_path(tree: dict[str, Any], path: list[str], value: Any) -> None:
    """Set ``tree[path[0]][path[1]]... = value``, creating sections as needed.

    Raises:
        ConfigError: an empty part of the path, or a part that holds a value, not a section.
    """
    dotted = ".".join(path)
    if not path or not all(path):
        raise ConfigError(f"{dotted!r}: a config path needs a name between every two dots, e.g. optimizer.lr")
    node = tree
    for i, key in enumerate(path[:-1]):
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            where = ".".join(path[: i + 1])
            raise ConfigError(f"{dotted}: {where} is a value, not a section ({where}={child!r}); "
                              f"set {where} itself, or check the path's spelling")
        node = child
    node[path[-1]] = value


def format_errors(err: pydantic.ValidationError, origin: str) -> str:
    """One line per problem of ``err``, each naming its field path, the rule and the value given.

    Args:
        err: pydantic's error for a config (or a study file).
        origin: what was validated (a file name), the first line's subject.
    """
    lines = [f"{origin}: invalid config"]
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key; remove it or check its spelling"
        value = e.get("input")
        shown = "" if isinstance(value, dict) or e["type"] == "missing" else f" (got {value!r})"
        lines.append(f"  {where}: {msg}{shown}")
    return "\n".join(lines)


def leave_old_component_options(tree: dict[str, Any], path: list[str], value: Any) -> None:
    """When ``path`` switches a section to another component (``scheduler.name=cosine``), leave out
    the options of that section in ``tree`` that the new component does not take: they were the
    old one's (demo.yaml's ``step_size`` of ``step``). The section's common fields stay, and options
    set together with the switch are checked as usual."""
    if len(path) != 2:
        return
    section, key = path
    field = Config.model_fields.get(section)
    cls = field.annotation if field is not None else None
    node = tree.get(section)
    if not (isinstance(cls, type) and issubclass(cls, Component) and key == cls.key and isinstance(node, dict)):
        return
    if node.get(key) == value or not isinstance(value, str) or value not in cls.registry.names():
        return  # the same component, or an unknown name that validation reports
    keep = set(cls.registry.entry(value).options.model_fields) | set(cls.model_fields)
    for option in [k for k in node if k not in keep]:
        del node[option]


def apply_changes(tree: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of the config ``tree`` with dotted ``changes`` (``{"optimizer.lr": 1e-3}``) set.

    Sections on a path are created as needed. A change that switches a section to another
    component (``scheduler.name: cosine``) leaves out the section's options that the new component
    does not take (see :func:`leave_old_component_options`); a change of a whole section
    (``optimizer: {name: sgd}``) replaces it, options and all. Changes are applied in order;
    ``tree`` and the values of ``changes`` are not modified.

    Raises:
        ConfigError: a path with an empty part, or through a value that is not a section; the
            message names the path.

    Example:
        >>> apply_changes({"optimizer": {"name": "adam", "lr": 0.1}}, {"optimizer.lr": 0.01, "train.epochs": 3})
        {'optimizer': {'name': 'adam', 'lr': 0.01}, 'train': {'epochs': 3}}
    """
    result = copy.deepcopy(dict(tree or {}))
    parsed = [(str(key).split("."), copy.deepcopy(value)) for key, value in changes.items()]
    for path, value in parsed:
        leave_old_component_options(result, path, value)
    for path, value in parsed:
        set_path(result, path, value)
    return result


def component_takes(section: str, option: str, tree: Mapping[str, Any]) -> str | None:
    """Why ``section.option`` is not a setting of the config ``tree``, or None where it is: always
    one for a section that names no component and for the section's own fields; else when the
    section's component (named in ``tree``, or the section's default) has that option."""
    field_ = Config.model_fields.get(section)
    cls = field_.annotation if field_ is not None else None
    if not (isinstance(cls, type) and issubclass(cls, Component)) or option in (cls.key, *cls.model_fields):
        return None
    named = tree.get(section, {}) if isinstance(tree.get(section), Mapping) else {}
    name = named.get(cls.key, cls.model_fields[cls.key].default)
    if name in cls.registry.names() and option in cls.registry.entry(name).options.model_fields:
        return None
    return f"{section} {name} has no option {option}"


def with_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """A copy of ``raw`` with ``--set`` items applied (see :func:`apply_changes`)."""
    changes = {}
    for item in overrides:
        path, value = parse_override(item)
        changes[".".join(path)] = value
    return apply_changes(raw, changes)


def validate_tree(tree: dict[str, Any], origin: str) -> Config:
    """``Config`` of ``tree``; a ConfigError names every problem (see :func:`format_errors`)."""
    try:
        return Config.model_validate(tree)
    except pydantic.ValidationError as err:
        raise ConfigError(format_errors(err, origin)) from None


def build_config(raw: dict[str, Any], overrides: list[str] = (), origin: str = "config") -> Config:
    """Validate a config tree with ``--set`` style overrides applied (no plan: see
    :func:`segtune.planning.plan_config`).

    An override that switches a component (``optimizer.name=sgd``) leaves out the tree's options
    of the old one that the new one does not take (see :func:`apply_changes`).

    Raises:
        ConfigError: with every problem, each naming its field path, value and rule.
    """
    return validate_tree(with_overrides(raw, overrides), origin)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with file-naming errors."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        tree = yaml.safe_load(path.read_bytes().decode("utf-8")) or {}
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the file ({err.strerror}); check its permissions") from None
    except UnicodeDecodeError as err:
        line = path.read_bytes()[:err.start].count(b"\n") + 1
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.object[err.start]:#04x} on line {line}); save the file "
                          f"as UTF-8, e.g. `iconv -f latin1 -t utf-8 {path.name} > fixed.yaml`") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(tree).__name__}")
    return tree


def load_config(path: str | Path, overrides: list[str] = ()) -> Config:
    """Load a YAML config, apply ``--set`` overrides (``["optimizer.lr=1e-3", ...]``) and fill in
    the plan's value of every key neither sets (:func:`segtune.planning.plan_config`).

    Example:
        >>> cfg = load_config("configs/demo.yaml", ["optimizer.name=sgd"])  # doctest: +SKIP
    """
    from segtune.planning import plan_config  # the planning layer builds on this module

    return plan_config(with_overrides(read_yaml(path), overrides), origin=str(path)).config


def data_config(spec: str | None, overrides: list[str] = ()) -> Config:
    """The planned config whose ``data`` section says what to read (``segtune train --data DIR``,
    ``segtune inspect --data SPEC``); see :func:`segtune.planning.data_plan`."""
    from segtune.planning import data_plan

    return data_plan(spec, overrides).config


__all__ = ["AugmentConfig", "Component", "Config", "component_takes", "DataConfig", "Fraction", "LossConfig", "ModelConfig",
           "OptimizerConfig", "PretrainConfig", "SafeName", "SchedulerConfig", "TrainConfig", "apply_changes", "build_config", "data_config",
           "format_errors", "leave_old_component_options", "load_config", "parse_override", "read_yaml", "set_path",
           "validate_tree", "with_overrides"]
