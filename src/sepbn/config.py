"""Typed experiment configuration: dataclasses with the paper's defaults, YAML loading, overrides.

One :class:`ExperimentConfig` describes a whole run, CNT stage 1 and stage 2 included. The
defaults are the paper's (Sec. V-A): SGD with momentum 0.9 and weight decay 5e-4, batch 8,
L1 loss, warm-up + cosine from 1e-3 to 5e-6 with 120 warm-up epochs, 500 epochs, τ annealed
linearly from 30 to 1 over the first 30 epochs, SepBN with K = 3 sets, G = 2 groups, T = 3.

YAML files map one to one onto the dataclasses::

    base: ../base/wflw.yaml        # optional: inherit another file (path relative to this one)
    name: wflw_sepbn
    model: {arch: vanilla_cnn, norm: sepbn}
    optim: {lr: 1.0e-3, epochs: 500}
    data:
      train: [{kind: wflw, path: $SEPBN_DATA/WFLW, split: train}]
      val: {kind: wflw, path: $SEPBN_DATA/WFLW, split: test}
    finetune: {targets: [wflw]}    # CNT stage 2; omit for a single-stage run

``base`` may also be a list of files, merged in order. Mappings are merged key by key (deep
merge); lists and scalars replace the inherited value. Every problem (an unknown key, a value of
the wrong type or out of range, a field that does not apply to the chosen norm layer or
architecture) raises a :class:`ConfigError` naming the file and line, the key path and the valid
choices, so a typo fails before any data is read. Every field can be
overridden from the command line with ``--set section.field=value``; the value is parsed with
``yaml.safe_load`` (so ``--set optim.lr=0.01``, ``--set data.val=null`` and
``--set model.sepbn_blocks=[1,2]`` work; list items are addressed by index,
``--set data.train.0.path=/data/wflw``) and checked against the field's annotation.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import os
import types
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from sepbn.data.formats import READERS
from sepbn.data.protocols import LandmarkProtocol
from sepbn.data.transforms import DEFAULT_BOX_SCALE, AugmentConfig
from sepbn.errors import ConfigError

__all__ = [
    "ARCH_FIELDS",
    "NORM_FIELDS",
    "Arch",
    "ConfigError",
    "DataConfig",
    "DatasetConfig",
    "ExperimentConfig",
    "FinetuneConfig",
    "ModelConfig",
    "Norm",
    "OptimConfig",
    "SepbnPosition",
    "TemperatureConfig",
    "TrainConfig",
    "apply_overrides",
    "config_from_dict",
    "deep_merge",
    "load_config",
    "save_config",
    "to_dict",
    "upgrade_legacy_config",
]


def _positive(section: str, name: str, value: float, *, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        key = f"{section}.{name}"
        raise ConfigError(f"{key} must be {bound}, got {value!r}", key=key)


@dataclass
class DatasetConfig:
    """One source of annotated faces.

    Attributes:
        kind: A format reader key of :func:`sepbn.data.formats.read_records` (``"wflw"``,
            ``"300w"``, ``"cofw"``, ``"aflw"``, ...) or ``"synthetic"`` for generated faces.
        path: The annotation file or dataset folder (unused by ``"synthetic"``), relative to
            the working directory; ``~`` and ``$VARS`` are expanded (``$SEPBN_DATA/WFLW``).
        split: Reader-specific split name (``"train"``, ``"test"``, ``"common"``, ...).
        protocol: Landmark protocol key; ``None`` keeps the protocol the reader reports.
            For ``"synthetic"`` it is the protocol to generate (default ``"300w"``).
        options: Extra keyword arguments for the reader. ``"synthetic"`` reads
            ``num_faces`` (default 64), ``start_index`` (0) and ``seed`` (the run seed).
        on_error: ``"raise"`` stops at the first bad record; ``"skip"`` drops it and reports.
        name: Display name in logs and in ``run_dir/eval``; default ``kind`` or ``kind_split``.
    """

    kind: str
    path: str | None = None
    split: str | None = None
    protocol: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    on_error: Literal["raise", "skip"] = "raise"
    name: str | None = None

    def __post_init__(self) -> None:
        if self.kind != "synthetic" and self.kind not in READERS:
            kinds = [*READERS, "synthetic"]
            raise ConfigError(
                f"unknown dataset kind {self.kind!r}{_did_you_mean(self.kind, kinds)}; "
                f"valid: {', '.join(repr(k) for k in kinds)}",
                key="kind",
            )

    @property
    def display_name(self) -> str:
        """``name``, or ``kind`` / ``kind_split`` when no name is given."""
        if self.name:
            return self.name
        return f"{self.kind}_{self.split}" if self.split else self.kind


@dataclass
class DataConfig:
    """Training, validation and test data.

    Attributes:
        train: The training sets. With several protocols, CNT stage 1 trains one branch per
            protocol and samples faces in proportion to the dataset sizes (paper Sec. IV).
        val: The set used for the best checkpoint (validation NME), or ``None``.
        test: Sets evaluated at the end of the run into ``run_dir/eval``.
        augment: Training augmentation ranges (paper Sec. V-A defaults), or ``None`` for none;
            see :class:`sepbn.data.transforms.AugmentConfig`. Never applied to val/test.
        box_scale: Crop side as a multiple of the squared face box.
        num_workers: DataLoader worker processes per training process.
        cache_dir: Folder for decoded-crop caches; ``None`` decodes images on the fly.
    """

    train: list[DatasetConfig] = field(default_factory=list)
    val: DatasetConfig | None = None
    test: list[DatasetConfig] = field(default_factory=list)
    augment: AugmentConfig | None = field(default_factory=AugmentConfig)
    box_scale: float = DEFAULT_BOX_SCALE
    num_workers: int = 4
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        _positive("data", "num_workers", self.num_workers, allow_zero=True)
        _positive("data", "box_scale", self.box_scale)


#: The architectures of :data:`sepbn.models.factory.BUILDERS`.
Arch = Literal["vanilla_cnn", "resnext50", "mobilenet_v2"]
#: The norm layers of :data:`sepbn.models.factory.NORM_LAYERS`.
Norm = Literal["bn", "sepbn", "simple_sepbn", "domain_bn"]
#: The bottleneck norms of ResNeXt-50 / MobileNetV2 that can use ``norm`` (Table X).
SepbnPosition = Literal["bn1", "bn2", "bn3"]

#: The :class:`ModelConfig` fields each norm layer takes as constructor arguments
#: (:meth:`ModelConfig.norm_layer_kwargs`). Under any other norm they keep their defaults.
NORM_FIELDS: dict[str, tuple[str, ...]] = {
    "bn": (),
    "sepbn": ("num_sets", "num_groups", "pool_size", "aggregation"),  # K, G, T (Eqs. 5-7)
    "simple_sepbn": ("num_sets",),  # K (Eqs. 3-4)
    "domain_bn": ("num_domains",),  # K pose domains (Fig. 2, Table II)
}
#: The :class:`ModelConfig` fields only some architectures use. The placement fields
#: (``sepbn_blocks``, ``sepbn_positions``) are also unused by norm ``"bn"``.
ARCH_FIELDS: dict[str, tuple[str, ...]] = {
    "vanilla_cnn": ("sepbn_blocks",),
    "resnext50": ("sepbn_positions", "pretrained"),
    "mobilenet_v2": ("sepbn_positions", "pretrained"),
}
# Why a norm or arch ignores the fields it does not list: the reason in the error.
_NORM_WHY = {
    "bn": "plain BatchNorm2d has no sets, groups, attention or domains",
    "sepbn": "its K sets are num_sets; it has no pose domains",
    "simple_sepbn": "one squeeze-and-excitation weight vector per face: it takes num_sets only, "
    "no channel groups, no pooled attention",
    "domain_bn": "one whole BN branch per pose domain, no attention: its K is num_domains",
}
_ARCH_WHY = {
    "vanilla_cnn": "its norm blocks are chosen by sepbn_blocks; it has no ImageNet weights",
    "resnext50": "its bottleneck norms are chosen by sepbn_positions",
    "mobilenet_v2": "its block norms are chosen by sepbn_positions",
}
_PLACEMENT_WHY = "it picks the layers that use the norm, and with 'bn' every layer is plain BN"
# Constructor arguments that norm_kwargs must not hold, and why.
_NOT_NORM_KWARGS = {
    "num_features": "the channel count comes from the network",
    "temperature": "τ follows the temperature section (Eq. 5)",
}


def _yaml_value(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True).removesuffix("\n...\n").strip()


def _unused_model_fields(values: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(field, reason)`` for each :class:`ModelConfig` field set away from its default that the
    chosen norm or arch does not use; ``values`` maps field names to values (missing = default).
    """
    norm, arch = values.get("norm", "sepbn"), values.get("arch", "vanilla_cnn")
    norm_fields = {f for fields in NORM_FIELDS.values() for f in fields}
    arch_fields = {f for fields in ARCH_FIELDS.values() for f in fields}
    out = []
    for f in dataclasses.fields(ModelConfig):
        value = values.get(f.name, f.default)
        if value == f.default or (f.name == "pretrained" and value is False):
            continue
        if f.name in norm_fields and f.name not in NORM_FIELDS.get(norm, (f.name,)):
            out.append((f.name, f"does not apply to norm {norm!r} ({_NORM_WHY[norm]})"))
        elif f.name in arch_fields and f.name not in ARCH_FIELDS.get(arch, (f.name,)):
            out.append((f.name, f"does not apply to arch {arch!r} ({_ARCH_WHY[arch]})"))
        elif f.name in ("sepbn_blocks", "sepbn_positions") and norm == "bn":
            out.append((f.name, f"does not apply to norm 'bn' ({_PLACEMENT_WHY})"))
    return out


@dataclass
class ModelConfig:
    """The network, passed to :func:`sepbn.models.build_model`.

    A field that the chosen ``norm`` or ``arch`` does not use must keep its default, so that no
    setting is ever ignored: which norm takes which field is :data:`NORM_FIELDS`, which arch
    takes which field :data:`ARCH_FIELDS`.

    ================  ==============================================================
    norm              fields (constructor arguments of the layer)
    ================  ==============================================================
    ``bn``            none
    ``sepbn``         ``num_sets``, ``num_groups``, ``pool_size``, ``aggregation``
    ``simple_sepbn``  ``num_sets``
    ``domain_bn``     ``num_domains``
    ================  ==============================================================

    ``sepbn_blocks`` is for ``vanilla_cnn``, ``sepbn_positions`` and ``pretrained`` for
    ``resnext50`` and ``mobilenet_v2``; neither placement field applies to norm ``bn``.
    ``branch_conv_kernel`` is for cross-protocol models (see :class:`ExperimentConfig`).

    Attributes:
        arch: ``"vanilla_cnn"``, ``"resnext50"`` or ``"mobilenet_v2"``
            (:func:`sepbn.models.build_model`).
        norm: ``"bn"`` (baseline), ``"sepbn"``, ``"simple_sepbn"`` or ``"domain_bn"`` (the
            brute-force SepBN of Sec. III-A).
        num_sets: K, the sets of mapping parameters of SepBN (Eq. 6) and simple SepBN (Eq. 4).
        num_groups: G, the channel groups with their own attention weights (Eq. 6); SepBN only.
        pool_size: T, the adaptive max-pool size of the attention branch; SepBN only.
        aggregation: ``"soft"`` (Eq. 6) or ``"hard"`` (arg max, Table III); SepBN only.
        num_domains: K of the brute-force SepBN: its BN branches, one per pose domain
            (frontal, left, right profile: Fig. 2, Table II); ``domain_bn`` only.
        sepbn_blocks: Vanilla CNN blocks (0-based, Table VI) that use ``norm``, the others
            plain BN; ``None`` = all six.
        sepbn_positions: ResNeXt-50 / MobileNetV2 bottleneck norms that use ``norm`` (Table X),
            a subset of ``bn1``, ``bn2``, ``bn3``; ``None`` = ``[bn3]``.
        width_mult: Channel width multiplier (every arch).
        input_size: S, the square input side in pixels (128 in the paper).
        pretrained: ImageNet weights for resnext50/mobilenet_v2: a state_dict path, ``true``
            for torchvision's cache, ``None`` for none (nothing is ever downloaded).
        branch_conv_kernel: Kernel of the extra convolution at the start of each CNT branch
            (Fig. 5), an odd number.
        norm_kwargs: Further constructor arguments of the norm layer (``eps``, ``momentum``,
            ``hidden_features``, ``reduction``, ...), checked against its signature. The fields
            of the table are set as fields, τ by the ``temperature`` section.
    """

    arch: Arch = "vanilla_cnn"
    norm: Norm = "sepbn"
    num_sets: int = 3  # K = 3
    num_groups: int = 2  # G = 2
    pool_size: int = 3  # T = 3
    aggregation: Literal["soft", "hard"] = "soft"
    num_domains: int = 3  # frontal, left and right profile (Table II)
    sepbn_blocks: list[int] | None = None
    sepbn_positions: list[SepbnPosition] | None = None
    width_mult: float = 1.0
    input_size: int = 128  # 128 x 128 face crops
    pretrained: str | bool | None = None
    branch_conv_kernel: int = 1
    norm_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("num_sets", "num_groups", "pool_size", "num_domains", "width_mult"):
            _positive("model", name, getattr(self, name))
        _positive("model", "input_size", self.input_size)
        _positive("model", "branch_conv_kernel", self.branch_conv_kernel)
        if self.branch_conv_kernel % 2 == 0:
            raise ConfigError(
                f"model.branch_conv_kernel must be odd (the branch keeps its feature size), "
                f"got {self.branch_conv_kernel}",
                key="model.branch_conv_kernel",
            )
        unused = _unused_model_fields(dataclasses.asdict(self))
        if unused:
            name, why = unused[0]
            default = _yaml_value(ModelConfig.__dataclass_fields__[name].default)
            raise ConfigError(
                f"model.{name}={getattr(self, name)!r} {why}; remove it (default: {default})",
                key=f"model.{name}",
            )
        if self.norm_kwargs:
            self._check_norm_kwargs()

    def _check_norm_kwargs(self) -> None:
        # Imported here: the models pull in torchvision, which a config without norm_kwargs
        # never needs.
        from sepbn.models.factory import NORM_LAYERS

        layer = NORM_LAYERS[self.norm]
        own = NORM_FIELDS[self.norm]
        params = inspect.signature(layer).parameters
        valid = [p for p in params if p not in own and p not in _NOT_NORM_KWARGS]
        for name in self.norm_kwargs:
            key = f"model.norm_kwargs.{name}"
            if name in own:
                raise ConfigError(f"{key}: set the field model.{name} instead", key=key)
            if name in _NOT_NORM_KWARGS:
                raise ConfigError(f"{key}: not settable, {_NOT_NORM_KWARGS[name]}", key=key)
            if name not in valid:
                raise ConfigError(
                    f"{key} is not an argument of {layer.__name__} (norm {self.norm!r})"
                    f"{_did_you_mean(name, valid)}; valid: {', '.join(valid)}",
                    key=key,
                )

    def norm_layer_kwargs(self) -> dict[str, Any]:
        """The constructor arguments of the ``norm`` layer: its :data:`NORM_FIELDS`, then
        ``norm_kwargs`` (for :func:`sepbn.models.build_model`)."""
        fields = {name: getattr(self, name) for name in NORM_FIELDS[self.norm]}
        return {**fields, **self.norm_kwargs}


@dataclass
class OptimConfig:
    """Optimizer and learning-rate schedule (paper Sec. V-A).

    The schedule warms up linearly from ``warmup_start_lr`` to ``lr`` over ``warmup_epochs``,
    then follows a half cosine from ``lr`` down to ``min_lr`` at the end of ``epochs``; see
    :mod:`sepbn.engine.schedules`.

    Attributes:
        name: ``"sgd"``, ``"adam"`` or ``"adamw"``.
        lr: Peak learning rate (after warm-up).
        min_lr: Final learning rate of the cosine.
        warmup_start_lr: First learning rate of the warm-up; ``None`` = ``min_lr``.
        warmup_epochs: Warm-up length in epochs (clipped to ``epochs``, so a short smoke run
            with ``--set optim.epochs=2`` needs no other change).
        schedule: ``"cosine"`` (warm-up + cosine) or ``"constant"`` (``lr`` throughout).
        schedule_unit: ``"step"`` updates the rate every iteration, ``"epoch"`` once per epoch.
        momentum: SGD momentum.
        nesterov: SGD Nesterov momentum.
        weight_decay: L2 weight decay.
        batch_size: Faces per batch and per process.
        epochs: Training epochs.
        grad_clip: Maximum gradient norm, or ``None`` for no clipping.
    """

    name: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = 1e-3  # maximum learning rate
    min_lr: float = 5e-6  # minimum learning rate
    warmup_start_lr: float | None = None
    warmup_epochs: int = 120  # 120 warm-up epochs
    schedule: Literal["cosine", "constant"] = "cosine"
    schedule_unit: Literal["step", "epoch"] = "step"
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    batch_size: int = 8
    epochs: int = 500
    grad_clip: float | None = None

    def __post_init__(self) -> None:
        _positive("optim", "lr", self.lr)
        _positive("optim", "min_lr", self.min_lr, allow_zero=True)
        _positive("optim", "weight_decay", self.weight_decay, allow_zero=True)
        _positive("optim", "momentum", self.momentum, allow_zero=True)
        _positive("optim", "batch_size", self.batch_size)
        _positive("optim", "epochs", self.epochs)
        _positive("optim", "warmup_epochs", self.warmup_epochs, allow_zero=True)
        if self.warmup_start_lr is not None:
            _positive("optim", "warmup_start_lr", self.warmup_start_lr, allow_zero=True)
        if self.grad_clip is not None:
            _positive("optim", "grad_clip", self.grad_clip)
        if self.min_lr > self.lr:
            raise ConfigError(
                f"optim.min_lr={self.min_lr} exceeds optim.lr={self.lr}", key="optim.min_lr"
            )


@dataclass
class TemperatureConfig:
    """The SepBN softmax temperature τ (Eq. 5): linear from ``start`` to ``end`` over ``epochs``.

    ``start == end`` (or ``epochs == 0``) fixes τ, as in the fixed-τ rows of Table IV.

    Attributes:
        start: τ at the first epoch.
        end: τ from epoch ``epochs`` on.
        epochs: Length of the linear anneal.
        per_step: Update τ every iteration (smooth anneal) instead of at each epoch start.
    """

    start: float = 30.0  # "initial τ ... set to 30"
    end: float = 1.0  # "and reduced to 1"
    epochs: int = 30  # "in the first 30 epochs"
    per_step: bool = False

    def __post_init__(self) -> None:
        _positive("temperature", "start", self.start)
        _positive("temperature", "end", self.end)
        _positive("temperature", "epochs", self.epochs, allow_zero=True)


@dataclass
class FinetuneConfig:
    """CNT stage 2 (paper Sec. IV): fine-tune each target branch on its own data.

    For every target protocol the stage-1 network keeps only that branch, and is fine-tuned on
    the stage-1 training sets of that protocol with two parameter groups: the backbone at the
    constant ``backbone_lr`` and the branch with the stage-1 warm-up + cosine schedule.

    Attributes:
        targets: Protocols to fine-tune; empty = every protocol of the training sets.
        epochs: Fine-tuning epochs; ``None`` = ``optim.epochs``.
        warmup_epochs: Warm-up of the branch schedule; ``None`` = ``optim.warmup_epochs``
            (shortened to fit when ``epochs`` is smaller).
        backbone_lr: Constant learning rate of the shared backbone.
        head_lr: Peak learning rate of the branch; ``None`` = ``optim.lr`` ("as in stage 1").
        init: Stage-1 weights to start from: ``"last"`` or ``"best"`` (validation NME).
    """

    targets: list[str] = field(default_factory=list)
    epochs: int | None = None
    warmup_epochs: int | None = None
    backbone_lr: float = 1e-7  # "learning rate of the shared backbone is set to 1e-7"
    head_lr: float | None = None
    init: Literal["last", "best"] = "last"

    def __post_init__(self) -> None:
        if self.epochs is not None:
            _positive("finetune", "epochs", self.epochs)
        if self.warmup_epochs is not None:
            _positive("finetune", "warmup_epochs", self.warmup_epochs, allow_zero=True)
        _positive("finetune", "backbone_lr", self.backbone_lr, allow_zero=True)
        if self.head_lr is not None:
            _positive("finetune", "head_lr", self.head_lr)


@dataclass
class TrainConfig:
    """Devices, precision, checkpoints and logging.

    Attributes:
        device: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``.
        amp: Mixed precision: ``"auto"`` (bf16 on CUDA when supported, else fp16 with a
            gradient scaler; off on CPU), ``"off"``, ``"bf16"`` or ``"fp16"``.
        channels_last: NHWC memory format; ``None`` = on for CUDA, off on CPU.
        compile: Wrap the model with ``torch.compile``.
        checkpoint_every: Write ``last.pt`` every this many epochs (and after the last one).
        val_every: Validate every this many epochs (and after the last one).
        log_every: Update the progress bar and TensorBoard every this many steps.
        progress: Show tqdm progress bars (only on a terminal).
        tensorboard: Write TensorBoard scalars when ``tensorboard`` is installed.
        sync_bn: In multi-process runs, convert BN (SepBN's inner BN included) to SyncBatchNorm.
        find_unused_parameters: DDP option; ``None`` = on for cross-protocol models, the
            brute-force SepBN and hard aggregation, where some parameters get no gradient in
            some steps.
        max_steps_per_epoch: Cap on iterations per epoch, for smoke runs; ``None`` = no cap.
        deterministic: Ask PyTorch for deterministic kernels (slower on CUDA).
        eval_weights: Weights evaluated on the test sets: ``"last"`` or ``"best"``.
    """

    device: str = "auto"
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"
    channels_last: bool | None = None
    compile: bool = False
    checkpoint_every: int = 10
    val_every: int = 5
    log_every: int = 20
    progress: bool = True
    tensorboard: bool = True
    sync_bn: bool = False
    find_unused_parameters: bool | None = None
    max_steps_per_epoch: int | None = None
    deterministic: bool = False
    eval_weights: Literal["last", "best"] = "last"

    def __post_init__(self) -> None:
        _positive("train", "checkpoint_every", self.checkpoint_every)
        _positive("train", "val_every", self.val_every)
        _positive("train", "log_every", self.log_every)
        if self.max_steps_per_epoch is not None:
            _positive("train", "max_steps_per_epoch", self.max_steps_per_epoch)


@dataclass
class ExperimentConfig:
    """A whole experiment.

    Attributes:
        name: Experiment name (logs, TensorBoard).
        seed: Seeds weights, data order and augmentation; a run is reproducible from it.
        model: The network.
        data: Training, validation and test sets.
        optim: Optimizer and learning-rate schedule.
        temperature: SepBN τ schedule.
        finetune: CNT stage 2, or ``None`` for a single-stage run.
        train: Devices, precision, checkpoints, logging.
        protocols: User-defined landmark protocols, as for
            :meth:`sepbn.data.protocols.LandmarkProtocol.from_dict`, registered before the
            data is read.

    A cross-protocol (CNT) model is trained when the training sets hold several protocols or
    ``finetune`` is given; ``model.branch_conv_kernel`` is an error for a config that trains
    one dataset without ``finetune`` (with several datasets of one protocol it is checked when
    the model is built).
    """

    name: str = "experiment"
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    temperature: TemperatureConfig = field(default_factory=TemperatureConfig)
    finetune: FinetuneConfig | None = None
    train: TrainConfig = field(default_factory=TrainConfig)
    protocols: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        # Check user protocols when the file is read, not when the data is.
        for i, spec in enumerate(self.protocols):
            try:
                LandmarkProtocol.from_dict(spec)
            except (KeyError, TypeError, ValueError) as exc:
                raise ConfigError(f"protocols[{i}]: {exc}", key=f"protocols[{i}]") from None
        kernel = self.model.branch_conv_kernel
        if _branch_kernel_unused(kernel, self.finetune, self.data.train):
            raise ConfigError(
                f"model.branch_conv_kernel={kernel} does not apply to a single-protocol model "
                "(it is the kernel of each CNT branch; this config trains one dataset and has "
                "no finetune section); remove it (default: 1)",
                key="model.branch_conv_kernel",
            )


def _branch_kernel_unused(kernel: object, finetune: object, train: object) -> bool:
    """A non-default ``branch_conv_kernel`` in a run that surely trains a single-protocol model:
    one training set and no fine-tuning (several sets may still share one protocol)."""
    return kernel != 1 and finetune is None and isinstance(train, list) and len(train) == 1


# --------------------------------------------------------------------------- conversion


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if tp is type(None):
        return "null"
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin is not None:
        args = ", ".join(_type_name(a) for a in get_args(tp))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    if dataclasses.is_dataclass(tp):
        return f"mapping ({tp.__name__})"
    return getattr(tp, "__name__", str(tp))


def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def _did_you_mean(value: object, valid: Iterable[object]) -> str:
    """`` (did you mean 'x'?)`` for the closest string in ``valid``, or ``""``."""
    if not isinstance(value, str):
        return ""
    near = difflib.get_close_matches(value, [v for v in valid if isinstance(v, str)], n=1)
    return f" (did you mean {near[0]!r}?)" if near else ""


def _unknown_key_error(key: str, section: str, valid: Iterable[str]) -> ConfigError:
    valid = sorted(valid)
    where = f"in {section}" if section else "at the top level"
    return ConfigError(
        f"unknown key {_join(section, key)!r}{_did_you_mean(key, valid)}; "
        f"valid keys {where}: {', '.join(valid)}",
        key=_join(section, key),
    )


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]" if path else f"[{key}]"
    return f"{path}.{key}" if path else key


def _convert(value: Any, tp: Any, path: str) -> Any:
    """Check ``value`` against annotation ``tp`` and build dataclasses; ``path`` names it."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{path}: expected {_type_name(tp)}, got null", key=path)
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, path)
            except ConfigError as exc:
                errors.append(exc)
        if len(errors) == 1:
            raise errors[0]
        raise ConfigError(f"{path}: expected {_type_name(tp)}, got {value!r}", key=path)
    if origin is Literal:
        if value not in get_args(tp):
            choices = ", ".join(repr(a) for a in get_args(tp))
            raise ConfigError(
                f"{path}: {value!r} is not a valid choice{_did_you_mean(value, get_args(tp))}; "
                f"valid: {choices}",
                key=path,
            )
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}", key=path)
        (item,) = get_args(tp) or (Any,)
        return [_convert(v, item, _join(path, i)) for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}", key=path)
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            args = (args[0],) * len(value)
        if len(value) != len(args):
            raise ConfigError(f"{path}: expected {len(args)} items, got {value!r}", key=path)
        return tuple(_convert(v, a, _join(path, i)) for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}", key=path)
        _, item = get_args(tp) or (str, Any)
        return {str(k): _convert(v, item, _join(path, str(k))) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return _build_dataclass(tp, value, path)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}", key=path)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}", key=path)
        return value
    if tp is float:
        # YAML 1.1 reads "1e-3" (no dot) as a string; accept it as the number it means.
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:  # not a number: reported below
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}", key=path)
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}", key=path)
        return value
    raise TypeError(f"{path}: unsupported annotation {tp!r}")


def _build_dataclass(cls: type, value: Any, path: str) -> Any:
    if isinstance(value, cls):
        return value
    where = path or "the top level"
    if not isinstance(value, Mapping):
        raise ConfigError(
            f"{where}: expected a mapping of {cls.__name__} fields, got {value!r}", key=path
        )
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in value:
        if key not in fields:
            raise _unknown_key_error(str(key), path, fields)
    kwargs = {}
    for name, f in fields.items():
        if name in value:
            kwargs[name] = _convert(value[name], hints[name], _join(path, name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            key = _join(path, name)
            raise ConfigError(f"{where}: missing required key {key!r}", key=key)
    try:
        return cls(**kwargs)
    except ValueError as exc:
        # Checks of __post_init__: make sure the message and the key say where the value is.
        # A section's own checks name their keys in full ("model.num_groups"); a dataclass that
        # may sit anywhere (DatasetConfig) names them relative to itself ("kind").
        reason = exc.reason if isinstance(exc, ConfigError) else str(exc)
        key = exc.key if isinstance(exc, ConfigError) else ""
        if path and not key.startswith(path):
            key = _join(path, key) if key else path
        if path and not reason.startswith(path):
            reason = f"{path}: {reason}"
        raise ConfigError(reason, key=key) from None


def to_dict(config: Any) -> Any:
    """A plain, YAML-safe ``dict`` (lists, not tuples) of a config dataclass."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return {f.name: to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, Mapping):
        return {str(k): to_dict(v) for k, v in config.items()}
    if isinstance(config, (list, tuple)):
        return [to_dict(v) for v in config]
    if isinstance(config, Path):
        return str(config)
    return config


def config_from_dict(data: Mapping[str, Any], source: str = "") -> ExperimentConfig:
    """Build and validate an :class:`ExperimentConfig` from a plain mapping.

    Args:
        data: The mapping (``base`` keys must already be resolved).
        source: Where it came from, prefixed to error messages.

    Raises:
        ConfigError: On an unknown key, a missing required key, a value of the wrong type or out
            of range, or a field that does not apply; the message names the key path.
    """
    try:
        return _build_dataclass(ExperimentConfig, data, "")
    except ConfigError as exc:
        if not source:
            raise
        raise ConfigError(exc.reason, key=exc.key, source=source) from None


def upgrade_legacy_config(data: Mapping[str, Any], source: str = "") -> dict[str, Any]:
    """A config written before :class:`ModelConfig` checked its fields, as it was meant.

    Checkpoints embed the config that made them (:mod:`sepbn.engine.checkpoint`). Before
    ``model.num_domains`` existed the brute-force SepBN took its K from ``num_sets``, fields
    that the norm or arch does not use were silently ignored, and ``norm_kwargs`` could repeat
    a field (and won). Such a config is rewritten to build the same network: ``num_sets``
    becomes ``num_domains`` for ``norm: domain_bn``, ``norm_kwargs`` entries that are fields
    move to the fields, and the ignored fields go back to their defaults; each change is
    reported in a warning that starts with ``source``. A current config comes back unchanged.

    Args:
        data: A mapping for :func:`config_from_dict`.
        source: Where it came from, for the warning.

    Returns:
        A new mapping; ``data`` is not modified.
    """
    out = dict(data)
    model = out.get("model")
    if not isinstance(model, Mapping):
        return out
    model = dict(model)
    notes = []
    norm = model.get("norm", "sepbn")
    if norm == "domain_bn" and "num_domains" not in model and "num_sets" in model:
        model["num_domains"] = model.pop("num_sets")
        notes.append(f"model.num_sets={model['num_domains']!r} read as model.num_domains")
    kwargs = model.get("norm_kwargs")
    if isinstance(kwargs, Mapping) and norm in NORM_FIELDS:
        kwargs = dict(kwargs)
        for name in [k for k in kwargs if k in NORM_FIELDS[norm]]:
            model[name] = kwargs.pop(name)
            notes.append(f"model.norm_kwargs.{name} moved to model.{name}")
        model["norm_kwargs"] = kwargs
    unused = [name for name, _ in _unused_model_fields(model)]
    data_section = out.get("data")
    train = data_section.get("train") if isinstance(data_section, Mapping) else None
    if _branch_kernel_unused(model.get("branch_conv_kernel", 1), out.get("finetune"), train):
        unused.append("branch_conv_kernel")
    for name in unused:
        notes.append(f"model.{name}={model.pop(name)!r} reset to its default (it had no effect)")
    if notes:
        where = f"{source}: " if source else ""
        warnings.warn(
            f"{where}config from an older sepbn: {'; '.join(notes)}", UserWarning, stacklevel=2
        )
    out["model"] = model
    return out


# --------------------------------------------------------------------------- YAML files


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` merged into ``base`` key by key; lists and scalars replace (the ``base:`` rule)."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


#: Key path (``"data.train[0].kind"``) -> the file and line (1-based) that set it.
Locations = dict[str, tuple[Path, int]]


def _node_locations(node: yaml.Node, path: str, file: Path, out: Locations) -> None:
    if isinstance(node, yaml.MappingNode):
        items: Iterable[tuple[str | int, yaml.Node, yaml.Node]] = (
            (k.value, k, v) for k, v in node.value
        )
    elif isinstance(node, yaml.SequenceNode):
        items = ((i, v, v) for i, v in enumerate(node.value))
    else:
        return
    for key, mark_node, value_node in items:
        child = _join(path, key)
        out[child] = (file, mark_node.start_mark.line + 1)
        _node_locations(value_node, child, file, out)


def _merge_locations(base: Locations, over: Locations, over_data: Mapping[str, Any]) -> None:
    """``base`` updated as :func:`deep_merge` updates the data: a value that is not a mapping
    replaces everything under its key."""

    def replaced(data: Any, path: str) -> Iterable[str]:
        for key, value in data.items():
            child = _join(path, str(key))
            if isinstance(value, Mapping):
                yield from replaced(value, child)
            else:
                yield child

    for path in replaced(over_data, ""):
        for stale in [k for k in base if k.startswith((f"{path}.", f"{path}["))]:
            del base[stale]
    base.update(over)


def _read_yaml(
    path: Path, chain: tuple[Path, ...] = (), locations: Locations | None = None
) -> dict[str, Any]:
    """Read ``path`` and resolve its ``base`` files (relative to ``path``).

    ``locations``, when given, receives the file and line of every key of the result.
    """
    path = path.resolve()
    if path in chain:
        cycle = " -> ".join(str(p) for p in (*chain, path))
        raise ConfigError(f"config files inherit from each other in a cycle: {cycle}")
    if not path.is_file():
        inherited = f" (the base of {chain[-1]})" if chain else ""
        raise ConfigError(f"config file not found: {path}{inherited}")
    text = path.read_text()
    try:
        data = yaml.safe_load(text)
        node = yaml.compose(text, Loader=yaml.SafeLoader) if locations is not None else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {exc}", source=str(path)) from None
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"the top level must be a mapping, got {type(data).__name__}", source=str(path)
        )
    own: Locations = {}
    if node is not None:
        _node_locations(node, "", path, own)
    bases = data.pop("base", None)
    if bases is None:
        if locations is not None:
            locations.update(own)
        return dict(data)
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(
            f"'base' must be a file name or a list of them, got {bases!r}", source=str(path)
        )
    merged: dict[str, Any] = {}
    for base in bases:
        base_locations: Locations = {}
        more = _read_yaml(path.parent / base, (*chain, path), base_locations)
        merged = deep_merge(merged, more)
        if locations is not None:
            _merge_locations(locations, base_locations, more)
    if locations is not None:
        own = {k: v for k, v in own.items() if k != "base" and not k.startswith("base[")}
        _merge_locations(locations, own, data)
    return deep_merge(merged, data)


def _located(key: str, locations: Locations, top: Path) -> str:
    """``top:line`` (or ``top (set in base.yaml:line)``) of ``key`` or its nearest parent."""
    while key:
        if key in locations:
            file, line = locations[key]
            if file == top.resolve():
                return f"{top}:{line}"
            return f"{top} (set in {os.path.relpath(file, top.resolve().parent)}:{line})"
        cut = max(key.rfind("."), key.rfind("["))
        key = key[: max(cut, 0)]
    return str(top)


def _parse_override(override: str) -> tuple[list[str], Any]:
    key, sep, raw = override.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {override!r} must look like section.field=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {override!r}: value is not valid YAML: {exc}") from None
    return key.split("."), value


def _set_path(data: dict[str, Any], keys: list[str], value: Any) -> str:
    """Set ``keys`` in ``data`` after checking the path and type against the dataclasses.

    Returns:
        The key path that was set (``"data.train[0].path"``).
    """
    tp: Any = ExperimentConfig
    node: Any = data
    path = ""
    for depth, key in enumerate(keys):
        last = depth == len(keys) - 1
        if get_origin(tp) in (Union, types.UnionType):
            # Descend into the non-null member of an Optional[...] annotation.
            (tp,) = [a for a in get_args(tp) if a is not type(None)]
        if dataclasses.is_dataclass(tp):
            hints = _hints(tp)
            if key not in hints:
                raise _unknown_key_error(key, path, hints)
            child_tp = hints[key]
            slot: Any = key
        elif get_origin(tp) is list:
            if not key.lstrip("-").isdigit():
                raise ConfigError(f"{path!r} is a list; index it by number", key=path)
            slot = int(key)
            if not -len(node) <= slot < len(node):
                raise ConfigError(
                    f"index {slot} out of range for {path!r} ({len(node)} item(s))", key=path
                )
            (child_tp,) = get_args(tp)
        elif get_origin(tp) is dict:
            child_tp = get_args(tp)[1] if get_args(tp) else Any
            slot = key
        else:
            raise ConfigError(f"{path!r} is a {_type_name(tp)}, not a section", key=path)
        path = _join(path, slot)
        if last:
            converted = _convert(value, child_tp, path)
            node[slot] = to_dict(converted)
            return path
        child = node[slot] if isinstance(node, list) else node.get(slot)
        if child is None:
            inner = [a for a in get_args(child_tp) if a is not type(None)] or [child_tp]
            if dataclasses.is_dataclass(inner[0]):
                try:
                    child = to_dict(inner[0]())
                except TypeError:
                    raise ConfigError(
                        f"{path!r} is null; set it as a whole first", key=path
                    ) from None
            elif get_origin(inner[0]) is dict:
                child = {}
            else:
                raise ConfigError(f"{path!r} is null", key=path)
            node[slot] = child
        node, tp = child, child_tp
    raise AssertionError("_parse_override never gives an empty key list")


def apply_overrides(config: ExperimentConfig, overrides: Sequence[str]) -> ExperimentConfig:
    """Return a new config with ``--set key.path=value`` overrides applied in order.

    Each override's key and type are checked as it is applied; the result is validated once,
    so that overrides which only fit together (``model.norm=bn`` with ``model.num_groups=2``)
    may come in any order.

    Raises:
        ConfigError: Naming the override, on an unknown key, a value of the wrong type or out of
            range, or a field that does not apply.
    """
    return _apply_overrides(config, overrides)


def _apply_overrides(
    config: ExperimentConfig,
    overrides: Sequence[str],
    origin: Callable[[str], str] | None = None,
) -> ExperimentConfig:
    """:func:`apply_overrides`; ``origin(key)`` names where a key not set by an override came
    from (``"exp.yaml:3"``), for an error about it."""
    data = to_dict(config)
    paths = []
    for override in overrides:
        keys, value = _parse_override(override)
        try:
            paths.append(_set_path(data, keys, value))
        except ConfigError as exc:
            raise ConfigError(exc.reason, key=exc.key, source=f"--set {override}") from None
    try:
        return _build_dataclass(ExperimentConfig, data, "")
    except ConfigError as exc:
        # The last override at, above or below the offending key caused the error; else the
        # overrides together with the key's own origin did.
        related = [
            o
            for o, p in zip(overrides, paths, strict=True)
            if _within(exc.key, p) or _within(p, exc.key)
        ]
        if related:
            source = f"--set {related[-1]}"
        else:
            sets = ", ".join(f"--set {o}" for o in overrides)
            source = f"{origin(exc.key)} (with {sets})" if origin else sets
        raise ConfigError(exc.reason, key=exc.key, source=source) from None


def _within(key: str, path: str) -> bool:
    """``key`` is ``path`` or lies under it."""
    return key == path or key.startswith((f"{path}.", f"{path}["))


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Load a YAML config, resolve its ``base`` chain, apply ``--set`` overrides, validate.

    Nothing but the YAML files is read: an unknown arch or norm, a typo or a field that does
    not apply fails here, before any dataset is opened.

    Args:
        path: The YAML file.
        overrides: ``"section.field=value"`` strings, applied in order.

    Raises:
        ConfigError: A missing file or base, bad YAML, an unknown key (with the valid keys), a
            bad value, or a field that does not apply to the chosen norm or arch. The message
            starts with the file and the line of the key (``exp.yaml:4: ...``, or
            ``exp.yaml (set in base.yaml:4): ...`` for an inherited key).
    """
    path = Path(path)
    locations: Locations = {}
    data = _read_yaml(path, locations=locations)
    try:
        config = _build_dataclass(ExperimentConfig, data, "")
    except ConfigError as exc:
        source = _located(exc.key, locations, path)
        raise ConfigError(exc.reason, key=exc.key, source=source) from None
    if not overrides:
        return config
    return _apply_overrides(config, overrides, lambda key: _located(key, locations, path))


def save_config(config: ExperimentConfig, path: str | Path) -> Path:
    """Write the resolved config as YAML (loadable by :func:`load_config`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(to_dict(config), sort_keys=False, default_flow_style=False)
    path.write_text(text)
    return path
