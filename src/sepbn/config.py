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
merge); lists and scalars replace the inherited value. Unknown keys raise a ``ValueError`` that
names the key path and the valid keys, so a typo fails before a run starts. Every field can be
overridden from the command line with ``--set section.field=value``; the value is parsed with
``yaml.safe_load`` (so ``--set optim.lr=0.01``, ``--set data.val=null`` and
``--set model.sepbn_blocks=[1,2]`` work; list items are addressed by index,
``--set data.train.0.path=/data/wflw``) and checked against the field's annotation.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from sepbn.data.protocols import LandmarkProtocol
from sepbn.data.transforms import DEFAULT_BOX_SCALE, AugmentConfig

__all__ = [
    "DataConfig",
    "DatasetConfig",
    "ExperimentConfig",
    "FinetuneConfig",
    "ModelConfig",
    "OptimConfig",
    "TemperatureConfig",
    "TrainConfig",
    "apply_overrides",
    "config_from_dict",
    "deep_merge",
    "load_config",
    "save_config",
    "to_dict",
]


def _positive(section: str, name: str, value: float, *, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{section}.{name} must be {bound}, got {value!r}")


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


@dataclass
class ModelConfig:
    """The network, passed to :func:`sepbn.models.build_model`.

    Attributes:
        arch: ``"vanilla_cnn"``, ``"resnext50"`` or ``"mobilenet_v2"``
            (:func:`sepbn.models.build_model`).
        norm: ``"bn"`` (baseline), ``"sepbn"``, ``"simple_sepbn"`` or ``"domain_bn"``.
        num_sets: K, the sets of mapping parameters of SepBN (Eq. 6).
        num_groups: G, the channel groups with their own attention weights (Eq. 6).
        pool_size: T, the adaptive max-pool size of the attention branch.
        aggregation: ``"soft"`` (Eq. 6) or ``"hard"`` (arg max, Table III).
        sepbn_blocks: Blocks whose BN layers become SepBN; ``None`` = the factory's default.
        sepbn_positions: Positions inside a block that become SepBN; ``None`` = default.
        width_mult: Channel width multiplier.
        input_size: S, the square input side in pixels (128 in the paper).
        pretrained: ImageNet weights for resnext50/mobilenet_v2: a state_dict path, ``true``
            for torchvision's cache, ``None`` for none (nothing is ever downloaded).
        branch_conv_kernel: Kernel of the extra convolution at the start of each CNT branch
            (Fig. 5).
        norm_kwargs: Further constructor arguments of the norm layer; ``num_sets``,
            ``num_groups``, ``pool_size`` and ``aggregation`` are passed to the layers that
            take them.
    """

    arch: str = "vanilla_cnn"
    norm: str = "sepbn"
    num_sets: int = 3  # K = 3
    num_groups: int = 2  # G = 2
    pool_size: int = 3  # T = 3
    aggregation: Literal["soft", "hard"] = "soft"
    sepbn_blocks: list[int] | None = None
    sepbn_positions: list[str] | None = None
    width_mult: float = 1.0
    input_size: int = 128  # 128 x 128 face crops
    pretrained: str | bool | None = None
    branch_conv_kernel: int = 1
    norm_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        names = ("num_sets", "num_groups", "pool_size", "width_mult", "input_size")
        for name in (*names, "branch_conv_kernel"):
            _positive("model", name, getattr(self, name))


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
            raise ValueError(f"optim.min_lr={self.min_lr} exceeds optim.lr={self.lr}")


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
                raise ValueError(f"protocols[{i}]: {exc}") from None


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


def _unknown_key_error(key: str, section: str, valid: Iterable[str]) -> ValueError:
    valid = sorted(valid)
    near = difflib.get_close_matches(key, valid, n=1)
    hint = f" (did you mean {near[0]!r}?)" if near else ""
    where = f"in {section}" if section else "at the top level"
    return ValueError(
        f"unknown key {_join(section, key)!r}{hint}; valid keys {where}: {', '.join(valid)}"
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
            raise ValueError(f"{path}: expected {_type_name(tp)}, got null")
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, path)
            except ValueError as exc:
                errors.append(str(exc))
        if len(errors) == 1:
            raise ValueError(errors[0])
        raise ValueError(f"{path}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in get_args(tp):
            choices = ", ".join(repr(a) for a in get_args(tp))
            raise ValueError(f"{path}: {value!r} is not a valid choice; valid: {choices}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{path}: expected a list, got {value!r}")
        (item,) = get_args(tp) or (Any,)
        return [_convert(v, item, _join(path, i)) for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{path}: expected a list, got {value!r}")
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            args = (args[0],) * len(value)
        if len(value) != len(args):
            raise ValueError(f"{path}: expected {len(args)} items, got {value!r}")
        return tuple(_convert(v, a, _join(path, i)) for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ValueError(f"{path}: expected a mapping, got {value!r}")
        _, item = get_args(tp) or (str, Any)
        return {str(k): _convert(v, item, _join(path, str(k))) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return _build_dataclass(tp, value, path)
    if tp is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{path}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is float:
        # YAML 1.1 reads "1e-3" (no dot) as a string; accept it as the number it means.
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ValueError(f"{path}: expected a string, got {value!r}")
        return value
    raise TypeError(f"{path}: unsupported annotation {tp!r}")


def _build_dataclass(cls: type, value: Any, path: str) -> Any:
    if isinstance(value, cls):
        return value
    where = path or "the top level"
    if not isinstance(value, Mapping):
        raise ValueError(f"{where}: expected a mapping of {cls.__name__} fields, got {value!r}")
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
            raise ValueError(f"{where}: missing required key {_join(path, name)!r}")
    try:
        return cls(**kwargs)
    except ValueError as exc:
        # Range checks of __post_init__; make sure the message says where the value is.
        if path and not str(exc).startswith(path):
            raise ValueError(f"{path}: {exc}") from None
        raise


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
        ValueError: On an unknown key, a missing required key, a value of the wrong type or out
            of range; the message names the key path.
    """
    try:
        return _build_dataclass(ExperimentConfig, data, "")
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}" if source else str(exc)) from None


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


def _read_yaml(path: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read ``path`` and resolve its ``base`` files (relative to ``path``)."""
    path = path.resolve()
    if path in chain:
        cycle = " -> ".join(str(p) for p in (*chain, path))
        raise ValueError(f"config files inherit from each other in a cycle: {cycle}")
    if not path.is_file():
        inherited = f" (the base of {chain[-1]})" if chain else ""
        raise FileNotFoundError(f"config file not found: {path}{inherited}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ValueError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    bases = data.pop("base", None)
    if bases is None:
        return dict(data)
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ValueError(f"{path}: 'base' must be a file name or a list of them, got {bases!r}")
    merged: dict[str, Any] = {}
    for base in bases:
        merged = deep_merge(merged, _read_yaml(path.parent / base, (*chain, path)))
    return deep_merge(merged, data)


def _parse_override(override: str) -> tuple[list[str], Any]:
    key, sep, raw = override.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ValueError(f"override {override!r} must look like section.field=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ValueError(f"override {override!r}: value is not valid YAML: {exc}") from None
    return key.split("."), value


def _set_path(data: dict[str, Any], keys: list[str], value: Any, override: str) -> None:
    """Set ``keys`` in ``data`` after checking the path and type against the dataclasses."""
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
                raise ValueError(f"--set {override}: " + str(_unknown_key_error(key, path, hints)))
            child_tp = hints[key]
            slot: Any = key
        elif get_origin(tp) is list:
            if not key.lstrip("-").isdigit():
                raise ValueError(f"--set {override}: {path!r} is a list; index it by number")
            slot = int(key)
            if not -len(node) <= slot < len(node):
                raise ValueError(
                    f"--set {override}: index {slot} out of range for {path!r} "
                    f"({len(node)} item(s))"
                )
            (child_tp,) = get_args(tp)
        elif get_origin(tp) is dict:
            child_tp = get_args(tp)[1] if get_args(tp) else Any
            slot = key
        else:
            raise ValueError(f"--set {override}: {path!r} is a {_type_name(tp)}, not a section")
        path = _join(path, slot)
        if last:
            converted = _convert(value, child_tp, path)
            node[slot] = to_dict(converted)
            return
        child = node[slot] if isinstance(node, list) else node.get(slot)
        if child is None:
            inner = [a for a in get_args(child_tp) if a is not type(None)] or [child_tp]
            if dataclasses.is_dataclass(inner[0]):
                try:
                    child = to_dict(inner[0]())
                except TypeError:
                    raise ValueError(
                        f"--set {override}: {path!r} is null; set it as a whole first"
                    ) from None
            elif get_origin(inner[0]) is dict:
                child = {}
            else:
                raise ValueError(f"--set {override}: {path!r} is null")
            node[slot] = child
        node, tp = child, child_tp


def apply_overrides(config: ExperimentConfig, overrides: Sequence[str]) -> ExperimentConfig:
    """Return a new config with ``--set key.path=value`` overrides applied in order.

    Raises:
        ValueError: Naming the override, on an unknown key or a value of the wrong type.
    """
    data = to_dict(config)
    for override in overrides:
        keys, value = _parse_override(override)
        try:
            _set_path(data, keys, value, override)
        except ValueError as exc:
            msg = str(exc)
            raise ValueError(
                msg if msg.startswith("--set") else f"--set {override}: {msg}"
            ) from None
        # Validate after each one so that a range error names the override that caused it.
        config = config_from_dict(data, source=f"--set {override}")
    return config


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Load a YAML config, resolve its ``base`` chain, apply ``--set`` overrides, validate.

    Args:
        path: The YAML file.
        overrides: ``"section.field=value"`` strings, applied in order.

    Raises:
        FileNotFoundError: The file or one of its bases is missing.
        ValueError: Bad YAML, an unknown key (with the valid keys) or a bad value.
    """
    path = Path(path)
    config = config_from_dict(_read_yaml(path), source=str(path))
    return apply_overrides(config, overrides) if overrides else config


def save_config(config: ExperimentConfig, path: str | Path) -> Path:
    """Write the resolved config as YAML (loadable by :func:`load_config`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(to_dict(config), sort_keys=False, default_flow_style=False)
    path.write_text(text)
    return path
