"""The config dataclasses, one per section of a config file, with the paper's defaults.

The defaults are the paper's (Sec. V-A): SGD with momentum 0.9 and weight decay 5e-4, batch 8,
L1 loss, warm-up + cosine from 1e-3 to 5e-6 with 120 warm-up epochs, 500 epochs, τ annealed
linearly from 30 to 1 over the first 30 epochs, SepBN with K = 3 sets, G = 2 groups, T = 3.
Each dataclass checks its own values in ``__post_init__`` and raises a :class:`ConfigError`
naming the key; how a YAML file becomes these objects is :mod:`sepbn.config.conversion`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from sepbn.config.dataset_options import check_dataset_options
from sepbn.config.fields import (
    NORM_FIELDS,
    Arch,
    Norm,
    SepbnPosition,
    branch_kernel_unused,
    check_norm_kwargs,
    unused_model_fields,
)
from sepbn.config.messages import did_you_mean, yaml_value
from sepbn.data.formats import READERS
from sepbn.data.protocols import LandmarkProtocol
from sepbn.data.transforms import DEFAULT_BOX_SCALE, AugmentConfig
from sepbn.errors import ConfigError

__all__ = [
    "MAX_SEED",
    "DataConfig",
    "DatasetConfig",
    "ExperimentConfig",
    "FinetuneConfig",
    "ModelConfig",
    "OptimConfig",
    "TemperatureConfig",
    "TrainConfig",
]


#: The largest seed: seeds are 64-bit integers (``torch.manual_seed``), and a run adds the
#: epoch and the stage to its seed.
MAX_SEED = 2**63 - 1


def _positive(section: str, name: str, value: float, *, allow_zero: bool = False) -> None:
    # Written so that NaN fails too (every comparison with NaN is false).
    if not (math.isfinite(value) and (value > 0 or (allow_zero and value == 0))):
        bound = ">= 0" if allow_zero else "> 0"
        key = f"{section}.{name}"
        finite = "" if math.isfinite(value) else "a finite number "
        raise ConfigError(f"{key} must be {finite}{bound}, got {value!r}", key=key)


def _seed(key: str, value: int) -> None:
    if not 0 <= value <= MAX_SEED:
        raise ConfigError(
            f"{key} must be an integer in [0, 2**63 - 1] (a 64-bit seed), got {value}", key=key
        )


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
            ``num_faces`` (default 64), ``start_index`` (0), ``seed`` (the run seed) and
            ``layout`` (the built-in protocol to draw, when ``protocol`` is a user protocol
            with the same points).
        on_error: ``"raise"`` stops at the first bad record; ``"skip"`` drops it and reports.
        name: Display name in logs and in ``run_dir/eval``; default ``kind`` or ``kind_split``.
        subset: Keep only this many faces, drawn at random without replacement (for small
            training sets, e.g. CNT's small-target regime); ``None`` keeps all.
        subset_seed: Seed of that draw, fixed apart from the run seed so that runs of every
            seed train on the same faces.
    """

    kind: str
    path: str | None = None
    split: str | None = None
    protocol: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    on_error: Literal["raise", "skip"] = "raise"
    name: str | None = None
    subset: int | None = None
    subset_seed: int = 0

    def __post_init__(self) -> None:
        if self.subset is not None:
            _positive("data", "subset", self.subset)
        _seed("subset_seed", self.subset_seed)
        if self.kind != "synthetic" and self.kind not in READERS:
            kinds = [*READERS, "synthetic"]
            raise ConfigError(
                f"unknown dataset kind {self.kind!r}{did_you_mean(self.kind, kinds)}; "
                f"valid: {', '.join(repr(k) for k in kinds)}",
                key="kind",
            )
        check_dataset_options(self.kind, self.options)

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
        sampling: How a CNT batch picks its faces' datasets: ``"size"`` (paper Sec. IV, "the
            probability of sampling faces from each dataset is proportional to the size of the
            dataset") or ``"balanced"`` (every training set equally often, faces drawn with
            replacement).
    """

    train: list[DatasetConfig] = field(default_factory=list)
    val: DatasetConfig | None = None
    test: list[DatasetConfig] = field(default_factory=list)
    augment: AugmentConfig | None = field(default_factory=AugmentConfig)
    box_scale: float = DEFAULT_BOX_SCALE
    num_workers: int = 4
    cache_dir: str | None = None
    sampling: Literal["size", "balanced"] = "size"

    def __post_init__(self) -> None:
        _positive("data", "num_workers", self.num_workers, allow_zero=True)
        _positive("data", "box_scale", self.box_scale)


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
        branch_norm: Put ``norm`` after that convolution, as sepbn did before 0.2. Off by
            default: such a norm sees only its protocol's rows of the batch and made a
            one-branch CNT model 3 NME points worse than the plain model
            (:class:`sepbn.models.cross_protocol.ProtocolBranch`, docs/analysis.md). Old
            checkpoints, whose configs lack the field, are read with ``true``.
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
    branch_norm: bool = False  # Fig. 5: "an additional convolution layer", no norm
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
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        unused = unused_model_fields(dataclasses.asdict(self), defaults)
        if unused:
            name, why = unused[0]
            raise ConfigError(
                f"model.{name}={getattr(self, name)!r} {why}; "
                f"remove it (default: {yaml_value(defaults[name])})",
                key=f"model.{name}",
            )
        if self.norm_kwargs:
            check_norm_kwargs(self.norm, self.norm_kwargs)

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
        attention_weight_decay: Weight decay of the SepBN attention blocks (the 1x1
            reduction and the MLP of Eq. 5); ``None`` = ``weight_decay``.
        protocol_weighting: How CNT's per-branch L1 losses are averaged: ``"faces"``
            (weights n_p / N, every face counts the same) or ``"protocols"`` (the mean over
            the protocols present in the batch, every protocol counts the same).
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
    attention_weight_decay: float | None = None
    protocol_weighting: Literal["faces", "protocols"] = "faces"

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
        if self.attention_weight_decay is not None:
            _positive(
                "optim", "attention_weight_decay", self.attention_weight_decay, allow_zero=True
            )
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
        head_lr: Peak learning rate of the branch; ``None`` = ``optim.lr * head_lr_scale``,
            not below ``optim.min_lr``.
        head_lr_scale: The branch's peak rate as a fraction of stage 1's when ``head_lr`` is
            ``None``; 1.0 is the paper's "adjusted normally". With the backbone's statistics
            frozen, a tenth suits a branch that stage 1 trained well (one-branch CNT: -0.24
            against -0.15 NME points) and hurts one it trained little (a small target set:
            +0.35), so the default stays 1.0 (3 seeds each, docs/analysis.md).
        init: Stage-1 weights to start from: ``"last"`` or ``"best"`` (validation NME) of
            this run's stage 1, or the path of a stage-1 checkpoint of the same model (from
            another run; ``${VAR}`` expanded), in which case stage 1 is not trained and only
            the fine-tuning runs: several stage-2 settings can then share one stage 1.
        freeze_backbone_stats: Keep the backbone's normalization layers in eval mode (their
            running statistics fixed, their outputs those of inference). The paper fixes the
            backbone by its 1e-7 learning rate "to avoid destroying the comprehensive feature
            extraction capability"; with the statistics still updating, the target's batches
            alone would move them (docs/analysis.md, "Why stage 2 hurt").
    """

    targets: list[str] = field(default_factory=list)
    epochs: int | None = None
    warmup_epochs: int | None = None
    backbone_lr: float = 1e-7  # "learning rate of the shared backbone is set to 1e-7"
    head_lr: float | None = None
    head_lr_scale: float = 1.0
    init: str = "last"
    freeze_backbone_stats: bool = True

    def __post_init__(self) -> None:
        if self.epochs is not None:
            _positive("finetune", "epochs", self.epochs)
        if self.warmup_epochs is not None:
            _positive("finetune", "warmup_epochs", self.warmup_epochs, allow_zero=True)
        _positive("finetune", "backbone_lr", self.backbone_lr, allow_zero=True)
        if self.head_lr is not None:
            _positive("finetune", "head_lr", self.head_lr)
        _positive("finetune", "head_lr_scale", self.head_lr_scale)


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
        steps_per_epoch: A fixed number of optimizer steps per epoch, whatever the size of
            the training sets (the sampler draws ``steps_per_epoch * batch_size`` faces per
            process and epoch, reshuffling the concatenation as often as needed). Runs of one
            budget then take the same number of steps whether they train on one set or on
            several (CNT). ``None``: an epoch is one pass over the concatenated sets.
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
    steps_per_epoch: int | None = None
    deterministic: bool = False
    eval_weights: Literal["last", "best"] = "last"

    def __post_init__(self) -> None:
        _positive("train", "checkpoint_every", self.checkpoint_every)
        _positive("train", "val_every", self.val_every)
        _positive("train", "log_every", self.log_every)
        if self.max_steps_per_epoch is not None:
            _positive("train", "max_steps_per_epoch", self.max_steps_per_epoch)
        if self.steps_per_epoch is not None:
            _positive("train", "steps_per_epoch", self.steps_per_epoch)


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
        _seed("seed", self.seed)
        # Check user protocols when the file is read, not when the data is.
        for i, spec in enumerate(self.protocols):
            try:
                LandmarkProtocol.from_dict(spec)
            except (KeyError, TypeError, ValueError) as exc:
                raise ConfigError(f"protocols[{i}]: {exc}", key=f"protocols[{i}]") from None
        kernel = self.model.branch_conv_kernel
        if branch_kernel_unused(kernel, self.finetune, self.data.train):
            raise ConfigError(
                f"model.branch_conv_kernel={kernel} does not apply to a single-protocol model "
                "(it is the kernel of each CNT branch; this config trains one dataset and has "
                "no finetune section); remove it (default: 1)",
                key="model.branch_conv_kernel",
            )
