"""From the ``data`` section of a config to datasets: read records, cache, crop, concatenate.

:func:`build_data` reads every dataset of the config once (format readers or synthetic
faces); :func:`make_train_set` and :func:`make_eval_set` turn those records into the
datasets the trainer and the evaluator iterate. Paths go through ``~`` and ``$VAR``
expansion, so a config may say ``path: $SEPBN_DATA/300W``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Sequence, Sized
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, Dataset

from sepbn.config import DatasetConfig, ExperimentConfig
from sepbn.data.cache import FaceCache, cache_crop_size, prepare_cache
from sepbn.data.datasets import LandmarkDataset, MultiProtocolDataset, worker_init_fn
from sepbn.data.errors import DatasetError, SkipReport, write_skip_csv
from sepbn.data.formats import read_records, reader_options
from sepbn.data.protocols import LandmarkProtocol, get_protocol, register_protocol
from sepbn.data.records import FaceRecord
from sepbn.data.synthetic import SyntheticFaceConfig, make_synthetic_records
from sepbn.data.transforms import FaceCropTransform
from sepbn.errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = [
    "ExperimentData",
    "LoadedSet",
    "build_data",
    "load_records",
    "make_eval_set",
    "make_loader",
    "make_train_set",
    "register_config_protocols",
    "write_skip_list",
]


@dataclass
class LoadedSet:
    """The records of one :class:`DatasetConfig`.

    Attributes:
        config: Where they came from.
        name: Display name (logs, ``run_dir/eval`` file names).
        protocol: Their landmark protocol.
        records: The faces.
        read_skipped: What the reader skipped (and noted) while reading them.
        cache_skipped: What preparing their face cache skipped (undecodable images, ...),
            or without a cache what the dataset's same checks skipped.
    """

    config: DatasetConfig
    name: str
    protocol: LandmarkProtocol
    records: list[FaceRecord]
    read_skipped: SkipReport = field(default_factory=SkipReport)
    cache_skipped: SkipReport = field(default_factory=SkipReport)

    @property
    def skipped(self) -> SkipReport:
        """Everything skipped: while reading, then while preparing the face cache."""
        return SkipReport(self.read_skipped.skipped + self.cache_skipped.skipped)


@dataclass
class ExperimentData:
    """Every dataset of a config, read once.

    Attributes:
        train: The training sets, in config order.
        val: The validation set, or ``None``.
        test: The test sets.
    """

    train: list[LoadedSet]
    val: LoadedSet | None
    test: list[LoadedSet]

    @property
    def protocols(self) -> list[str]:
        """Training protocols in order of first appearance (= the branch / protocol ids)."""
        names: list[str] = []
        for loaded in self.train:
            if loaded.protocol.name not in names:
                names.append(loaded.protocol.name)
        return names

    @property
    def heads(self) -> dict[str, int]:
        """Protocol name to L, for a cross-protocol model."""
        return {p: get_protocol(p).num_points for p in self.protocols}

    def skip_reports(self) -> dict[str, SkipReport]:
        """``"train/<name>"``, ``"val/<name>"``, ``"test/<name>"`` -> what each set skipped."""
        sets = [("train", s) for s in self.train] + [("test", s) for s in self.test]
        if self.val is not None:
            sets.insert(len(self.train), ("val", self.val))
        return {f"{role}/{s.name}": s.skipped for role, s in sets}


def write_skip_list(data: ExperimentData, folder: str | Path) -> dict[str, object]:
    """Write ``folder/skipped.csv``: every record each dataset of a run skipped.

    Call it once the datasets are built (caches prepared), so decoding failures are in it.

    Returns:
        ``{"total": n, "by_category": {...}, "file": "skipped.csv"}`` for a summary JSON.
    """
    reports = data.skip_reports()
    path = write_skip_csv(Path(folder) / "skipped.csv", reports)
    return {
        **SkipReport([e for r in reports.values() for e in r.skipped]).summary_counts(),
        "file": path.name,
    }


def register_config_protocols(config: ExperimentConfig) -> list[LandmarkProtocol]:
    """Register the user-defined protocols of ``config.protocols``."""
    out = []
    for i, spec in enumerate(config.protocols):
        try:
            out.append(register_protocol(LandmarkProtocol.from_dict(spec)))
        except (KeyError, ValueError, TypeError) as exc:
            raise ConfigError(f"protocols[{i}]: {exc}") from None
    return out


def _expand(path: str) -> Path:
    """``~`` and ``$VAR`` / ``${VAR}`` expanded; an unset variable is an error, not a path."""
    expanded = os.path.expandvars(os.path.expanduser(path))
    unset = re.findall(r"\$\{?(\w+)", expanded)
    if unset:
        raise ConfigError(
            f"path {path!r} uses the environment variable {unset[0]} which is not set; "
            f"export {unset[0]}=/folder/with/the/datasets (see docs/reproduce.md)"
        )
    return Path(expanded)


def load_records(ds: DatasetConfig, seed: int) -> LoadedSet:
    """Read one dataset of the config.

    Args:
        ds: The dataset entry.
        seed: The run seed (default seed of synthetic faces).

    Returns:
        Its records; ``ds.protocol``, when given, goes to readers that take a ``protocol``
        option (COCO, pts_folder) and relabels records of another protocol with the same
        number of points (e.g. COFW with its inter-pupil normalizer ``cofw_pupil``).

    Raises:
        ValueError: Unknown kind or option, no records, or a protocol that does not fit.
        DatasetError: Bad data under ``on_error="raise"``.
    """
    name = ds.display_name
    skipped = SkipReport()
    if ds.kind == "synthetic":
        # The options' names and types were checked when the DatasetConfig was built
        # (sepbn.config.dataset_options).
        options = dict(ds.options)
        if isinstance(options.get("config"), dict):
            fields: dict[str, Any] = {
                k: tuple(v) if isinstance(v, list) else v for k, v in options["config"].items()
            }
            options["config"] = SyntheticFaceConfig(**fields)
        # ``layout``: the built-in protocol the faces are drawn in, when ``protocol`` names
        # a user protocol of the same points (relabelled below), e.g. a second 68-point set
        # with a branch of its own.
        records = make_synthetic_records(
            int(options.pop("num_faces", 64)),
            protocol=options.pop("layout", None) or ds.protocol or "300w",
            seed=int(options.pop("seed", seed)),
            start_index=int(options.pop("start_index", 0)),
            **options,
        )
    else:
        if ds.path is None:
            raise ConfigError(f"dataset {name!r} (kind {ds.kind!r}) needs a path")
        options = dict(ds.options)
        valid_options = reader_options(ds.kind)
        if ds.protocol is not None and "protocol" in valid_options:
            # Readers that parse by protocol (COCO, pts_folder) need it, not just a relabel.
            options.setdefault("protocol", ds.protocol)
        if "report" in valid_options:
            options["report"] = skipped
        records = read_records(
            ds.kind, _expand(ds.path), split=ds.split, on_error=ds.on_error, **options
        )
    if not records:
        why = f"; {skipped.summary()}" if skipped.skipped else ""
        raise DatasetError(
            f"dataset {name!r}", f"no faces (kind {ds.kind!r}, path {ds.path!r}){why}"
        )
    if ds.subset is not None:
        if ds.subset > len(records):
            raise ConfigError(
                f"dataset {name!r}: subset={ds.subset} but it has only {len(records)} faces",
                key="subset",
            )
        rng = np.random.default_rng(ds.subset_seed)
        keep = np.sort(rng.choice(len(records), size=ds.subset, replace=False))
        records = [records[int(i)] for i in keep]
    protocol = get_protocol(ds.protocol or records[0].protocol)
    relabeled = []
    for rec in records:
        if rec.protocol != protocol.name:
            if rec.num_points != protocol.num_points:
                raise ConfigError(
                    f"dataset {name!r}: {rec.source or 'a record'} has {rec.num_points} points "
                    f"({rec.protocol!r}), protocol {protocol.name!r} needs {protocol.num_points}"
                )
            rec = replace(rec, protocol=protocol.name)
        relabeled.append(rec)
    return LoadedSet(ds, name, protocol, relabeled, skipped)


def build_data(config: ExperimentConfig) -> ExperimentData:
    """Read every dataset of ``config`` (user protocols are registered first).

    Raises:
        ValueError: No training set, or a dataset that cannot be read (see
            :func:`load_records`).
    """
    register_config_protocols(config)
    if not config.data.train:
        raise ConfigError("data.train is empty: give at least one training set")
    train = [load_records(ds, config.seed) for ds in config.data.train]
    val = load_records(config.data.val, config.seed) if config.data.val is not None else None
    test = [load_records(ds, config.seed) for ds in config.data.test]
    for loaded in train:
        logger.info(
            "train set %s: %d faces (%s)", loaded.name, len(loaded.records), loaded.protocol.name
        )
    return ExperimentData(train, val, test)


def _cache_source(
    loaded: LoadedSet, config: ExperimentConfig, is_main: bool
) -> list[FaceRecord] | FaceCache:
    """A prepared :class:`FaceCache` for ``loaded``, or its records without ``cache_dir``."""
    if config.data.cache_dir is None:
        return loaded.records
    ds = loaded.config
    parts: list[Any] = [ds.kind, ds.path, ds.split, ds.protocol, ds.options]
    if ds.subset is not None:  # older caches keep their keys
        parts += [ds.subset, ds.subset_seed]
    key = json.dumps(parts, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:10]
    root = _expand(config.data.cache_dir) / f"{loaded.name}-{digest}"
    crop_size = cache_crop_size(config.model.input_size)
    if is_main:
        cache = prepare_cache(
            loaded.records,
            root,
            loaded.protocol,
            crop_size=crop_size,
            on_error=ds.on_error,
            progress=config.train.progress,
            skipped=loaded.read_skipped,
        )
    else:
        cache = FaceCache.open(root, loaded.protocol)
    # The cache lists the reading skips (part of its fingerprint) first, then its own.
    loaded.cache_skipped = SkipReport(cache.skip_report().skipped[len(loaded.read_skipped) :])
    return cache


def _dataset(
    loaded: LoadedSet, config: ExperimentConfig, train: bool, protocol_id: int, is_main: bool
) -> LandmarkDataset:
    transform = FaceCropTransform(
        loaded.protocol,
        output_size=config.model.input_size,
        box_scale=config.data.box_scale,
        augment=config.data.augment if train else None,
    )
    source = _cache_source(loaded, config, is_main)
    if not isinstance(source, FaceCache):  # the dataset checks the records as prepare_cache does
        loaded.cache_skipped = SkipReport()
    return LandmarkDataset(
        source,
        loaded.protocol,
        transform,
        protocol_id,
        seed=config.seed,
        on_error=loaded.config.on_error,
        report=loaded.cache_skipped,
    )


def make_train_set(
    sets: Sequence[LoadedSet], config: ExperimentConfig, is_main: bool = True
) -> MultiProtocolDataset:
    """The augmented training set: a :class:`MultiProtocolDataset` over ``sets``.

    Protocol ids follow the order in which protocols first appear in ``sets``, which is the
    order of the cross-protocol model's branches.

    Args:
        sets: The training sets.
        config: The experiment config (input size, box scale, augmentation, seed, cache).
        is_main: Rank 0 prepares caches; other ranks only open them (call after a barrier).
    """
    if not sets:
        raise ValueError("no training set")
    return MultiProtocolDataset([_dataset(s, config, True, 0, is_main) for s in sets])


def make_eval_set(
    loaded: LoadedSet, config: ExperimentConfig, protocol_id: int = 0, is_main: bool = True
) -> LandmarkDataset:
    """The un-augmented evaluation crop of ``loaded``."""
    return _dataset(loaded, config, False, protocol_id, is_main)


def make_loader(
    dataset: Dataset[Any],
    batch_size: int,
    num_workers: int,
    collate_fn: Callable[[list[Any]], Any],
    *,
    sampler: Any = None,
    train: bool = False,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader in the order of ``sampler`` (or the dataset's order).

    Training loaders drop a last partial batch (a batch of one face breaks batch
    statistics) unless the epoch holds less than one batch. Workers run one torch thread
    each (:func:`sepbn.data.datasets.worker_init_fn`); set ``OMP_WAIT_POLICY=PASSIVE`` in
    the environment of the training process (the ``sepbn`` command and the Makefile do) so
    that idle OpenMP threads do not spin on the training cores.
    """
    sized = sampler if sampler is not None else dataset
    if not isinstance(sized, Sized):
        raise TypeError(
            f"make_loader needs a dataset or sampler with a length, got {type(sized).__name__}"
        )
    num = len(sized)
    worker_init = worker_init_fn if num_workers else None
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate_fn,
        pin_memory=pin_memory,
        drop_last=train and num >= batch_size,
        worker_init_fn=worker_init,
        # New workers each epoch pick up the dataset's set_epoch (augmentation draws).
        persistent_workers=False,
    )


# --------------------------------------------------------------------------- one stage
