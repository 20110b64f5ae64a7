"""Landmark datasets, the multi-protocol concatenation and its collate function.

A sample is a dict (the batch contract shared with the engine):

    image           uint8 ``(3, S, S)`` RGB crop.
    landmarks       float32 ``(L, 2)`` crop pixels, after augmentation, semantic order.
    valid           bool ``(L,)``.
    matrix          float64 ``(2, 3)`` ORIGINAL image pixels -> crop pixels.
    orig_landmarks  float64 ``(L, 2)`` ground truth in the original image.
    norm            float64 scalar, the NME normalizer d of Eq. 8 in the original image.
    protocol_id     int64 scalar.
    index           int64 scalar, position in the dataset indexed (for a
                    MultiProtocolDataset, in the concatenation).
    domain          int64 scalar pose domain (see :mod:`sepbn.data.domains`), -1 unknown.
    protocol        str, the protocol name (lets ``collate_landmarks`` key the targets).
    source          str, the record's source (``"file:line"``; its image path when the
                    record names none), so per-image results can be traced to files.

For a horizontally flipped sample, ``valid`` and ``orig_landmarks`` are permuted with the
protocol's ``flip_perm`` like ``landmarks``, so that for every sample
``apply_affine(invert_affine(matrix), landmarks) == orig_landmarks``: mapping crop
predictions back with the inverse matrix lands on the matching ground-truth rows. Without
augmentation (evaluation) nothing is permuted.
"""

from __future__ import annotations

import bisect
import logging
import warnings
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from sepbn.data.cache import FaceCache
from sepbn.data.domains import UNKNOWN_DOMAIN, mirror_domain, pose_domain
from sepbn.data.errors import DatasetError, OnError, SkipReport
from sepbn.data.image_io import load_image
from sepbn.data.protocols import LandmarkProtocol, get_protocol
from sepbn.data.records import FaceRecord
from sepbn.data.transforms import FaceCropTransform, compose_affine, is_mirrored, required_margin
from sepbn.data.validation import check_records

logger = logging.getLogger(__name__)

Sample = dict[str, Any]


class LandmarkDataset(Dataset):
    """Faces of one protocol, from records (decoding photos) or from a prepared cache.

    Augmentation randomness is a pure function of ``(seed, protocol_id, epoch, index)``:
    every epoch differs, any sample can be reproduced (resume, DDP ranks, DataLoader
    workers) and no two samples share a random stream.

    Args:
        source: Face records, or a :class:`~sepbn.data.cache.FaceCache`. From a cache the
            sample's matrix is the augmentation matrix composed with the cache matrix,
            so it still maps ORIGINAL image pixels to the crop. Records are checked as
            :func:`~sepbn.data.cache.prepare_cache` checks them
            (:func:`~sepbn.data.validation.check_records`: every image is decoded once, the
            record checked against it), so a run without a cache keeps the same faces.
        protocol: The records' protocol (object or key).
        transform: Crop/augmentation; its protocol must be ``protocol``.
        protocol_id: Id of this protocol in a multi-protocol model (set again by
            :class:`MultiProtocolDataset`).
        seed: Base seed of the augmentation.
        mirror_domains: Swap pose domains 1 and 2 of flipped samples (a mirrored left
            profile is a right profile). Turn off for domain labels of another kind.
        on_error: For records: ``"raise"`` at the first that fails the checks, or ``"skip"``
            it (collected in ``report`` and logged).
        report: Collects the records skipped by the checks.

    Attributes:
        record_index: ``(N,)`` int64 position of each face in the records it came from
            (the records given, or those the cache was prepared from); differs from the
            face's index where records were skipped.

    Raises:
        DatasetError: A record of another protocol or with the wrong number of points, a
            record that fails the checks under ``on_error="raise"``, or no face left.
        ValueError: Mismatched transform protocol, or a cache window smaller than the
            transform's evaluation crop.
    """

    # One row per face, set by _init_from_cache or _init_from_records.
    orig_landmarks: np.ndarray  # (N, L, 2)
    valid: np.ndarray  # (N, L)
    boxes: np.ndarray  # (N, 4)
    domains: np.ndarray  # (N,)
    sources: list[str]
    record_index: np.ndarray  # (N,)

    def __init__(
        self,
        source: Sequence[FaceRecord] | FaceCache,
        protocol: LandmarkProtocol | str,
        transform: FaceCropTransform,
        protocol_id: int = 0,
        seed: int = 0,
        mirror_domains: bool = True,
        on_error: OnError = "raise",
        report: SkipReport | None = None,
    ) -> None:
        self.protocol = get_protocol(protocol) if isinstance(protocol, str) else protocol
        if transform.protocol != self.protocol:
            raise ValueError(
                f"transform is for protocol {transform.protocol.name!r}, "
                f"dataset for {self.protocol.name!r}"
            )
        self.source = source
        self.transform = transform
        self.protocol_id = int(protocol_id)
        self.seed = int(seed)
        self.epoch = 0
        self.mirror_domains = mirror_domains
        if isinstance(source, FaceCache):
            self._init_from_cache(source)
        else:
            self._init_from_records(source, on_error, report)
        self.norm = self.protocol.normalizer(self.orig_landmarks, self.boxes)  # (N,) Eq. 8 d
        estimated = pose_domain(self.orig_landmarks, self.protocol, self.valid)
        self.domains = np.where(self.domains >= 0, self.domains, estimated)

    def _init_from_cache(self, cache: FaceCache) -> None:
        if cache.protocol != self.protocol:
            raise DatasetError(
                str(cache.root),
                f"cache holds protocol {cache.protocol.name!r}, dataset is {self.protocol.name!r}",
            )
        t = self.transform
        if cache.margin < t.box_scale:
            raise ValueError(
                f"cache window ({cache.margin} box sides) is smaller than the transform's "
                f"crop (box_scale={t.box_scale}); prepare the cache with margin >= {t.box_scale}"
            )
        needed = required_margin(t.augment, t.box_scale)
        if cache.margin < needed - 1e-6:
            warnings.warn(
                f"cache {cache.root} holds {cache.margin} box sides but this augmentation can "
                f"reach {needed:.3f}; the most extreme crops get black borders",
                stacklevel=3,
            )
        if len(cache) == 0 and cache.skipped:
            source, reason = cache.skipped[0][:2]
            raise DatasetError(
                source,
                f"{reason}; no faces left: all {len(cache.skipped)} record(s) were skipped "
                f"(listed in {cache.root / 'skipped.csv'})",
                "no faces left",
            )
        self.orig_landmarks = cache.orig_landmarks
        self.valid = cache.valid
        self.boxes = cache.boxes
        self.domains = cache.domain.astype(np.int64)
        self.sources = [s or p for s, p in zip(cache.sources, cache.image_paths)]
        self.record_index = cache.record_index
        self._cache_boxes = cache.crop_boxes()

    def _init_from_records(
        self, records: Sequence[FaceRecord], on_error: OnError, report: SkipReport | None
    ) -> None:
        num_points = self.protocol.num_points
        for i, r in enumerate(records):
            where = r.source or f"record {i}"
            if r.protocol != self.protocol.name:
                raise DatasetError(
                    where, f"protocol {r.protocol!r}, dataset is {self.protocol.name!r}"
                )
            if r.landmarks.shape != (num_points, 2):
                raise DatasetError(
                    where, f"landmarks {r.landmarks.shape}, protocol needs ({num_points}, 2)"
                )
            if r.image is None and r.image_path is None:
                raise DatasetError(where, "no image_path and no image")
        report = SkipReport() if report is None else report
        start = len(report)
        kept = check_records(records, on_error, report)
        if len(report) > start:
            logger.warning("%s", SkipReport(report.skipped[start:]).summary())
            if not kept:
                first = report.skipped[start]
                raise DatasetError(
                    first.source,
                    f"{first.reason}; no faces left: all {len(records)} {self.protocol.name} "
                    "record(s) failed the checks (listed above)",
                    "no faces left",
                )
            records = [records[i] for i in kept]
            self.source = records
        self.record_index = np.asarray(kept, dtype=np.int64)
        n = len(records)
        self.orig_landmarks = (
            np.stack([r.landmarks for r in records]) if n else np.zeros((0, num_points, 2))
        )
        self.valid = np.stack([r.valid for r in records]) if n else np.zeros((0, num_points), bool)
        self.boxes = np.stack([r.box for r in records]) if n else np.zeros((0, 4))
        self.domains = np.array(
            [UNKNOWN_DOMAIN if r.domain is None else r.domain for r in records], dtype=np.int64
        )
        self.sources = [r.source or str(r.image_path or "") for r in records]

    def __len__(self) -> int:
        return len(self.orig_landmarks)

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draws of ``epoch`` (call before each epoch)."""
        self.epoch = int(epoch)

    def rng(self, index: int) -> np.random.Generator:
        """The random generator of sample ``index`` in the current epoch."""
        return np.random.default_rng((self.seed, self.protocol_id, self.epoch, index))

    def __getitem__(self, index: int) -> Sample:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for a dataset of {n} faces")
        index = int(index) % n
        rng = self.rng(index) if self.transform.augment is not None else None
        valid = self.valid[index]
        if isinstance(self.source, FaceCache):
            cache = self.source
            crop, pts, matrix = self.transform(
                cache.images[index], cache.landmarks[index], self._cache_boxes[index], valid, rng
            )
            matrix = compose_affine(matrix, cache.matrix[index])  # original -> cache -> crop
        else:
            rec = self.source[index]
            if rec.image is not None:
                image = rec.image
            else:
                assert rec.image_path is not None  # _init_from_records checked one is set
                # _init_from_records decoded every image strictly (corrupt JPEGs refused);
                # the per-item decode skips the stderr capture that check costs (~25%).
                image = load_image(rec.image_path, rec.source, strict=False)
            crop, pts, matrix = self.transform(image, rec.landmarks, rec.box, valid, rng)
        order = self.transform.point_order(matrix)
        domain = int(self.domains[index])
        if self.mirror_domains and is_mirrored(matrix):
            domain = int(mirror_domain(domain))
        return {
            "image": torch.from_numpy(crop).permute(2, 0, 1).contiguous(),  # (3, S, S)
            "landmarks": torch.from_numpy(pts.astype(np.float32)),
            "valid": torch.from_numpy(valid[order].copy()),
            "matrix": torch.from_numpy(matrix),
            "orig_landmarks": torch.from_numpy(self.orig_landmarks[index][order]),
            "norm": torch.tensor(self.norm[index], dtype=torch.float64),
            "protocol_id": torch.tensor(self.protocol_id, dtype=torch.int64),
            "index": torch.tensor(index, dtype=torch.int64),
            "domain": torch.tensor(domain, dtype=torch.int64),
            "protocol": self.protocol.name,
            "source": self.sources[index],
        }

    def __repr__(self) -> str:
        kind = "cache" if isinstance(self.source, FaceCache) else "records"
        return (
            f"LandmarkDataset(protocol={self.protocol.name!r}, faces={len(self)}, from={kind}, "
            f"protocol_id={self.protocol_id}, seed={self.seed}, epoch={self.epoch})"
        )


class MultiProtocolDataset(Dataset):
    """Several landmark datasets, possibly of different protocols, as one (paper Sec. IV).

    Datasets sharing a protocol share its id; ids are assigned by the order in which the
    protocols first appear, and written back into each dataset's ``protocol_id``.
    Shuffling uniformly over the concatenation samples each dataset with probability
    proportional to its size, as CNT does; :meth:`sampling_weights` gives alternatives for
    a ``WeightedRandomSampler``. A sample's ``index`` is its position in the
    concatenation (see :meth:`locate`).

    Args:
        datasets: The datasets, at least one.

    Raises:
        ValueError: No datasets, or two different protocols with the same name.
    """

    def __init__(self, datasets: Sequence[LandmarkDataset]) -> None:
        if not datasets:
            raise ValueError("MultiProtocolDataset needs at least one dataset")
        self.datasets = list(datasets)
        self.protocols: list[LandmarkProtocol] = []
        ids: dict[str, int] = {}
        for ds in self.datasets:
            name = ds.protocol.name
            if name not in ids:
                ids[name] = len(self.protocols)
                self.protocols.append(ds.protocol)
            elif self.protocols[ids[name]] != ds.protocol:
                raise ValueError(f"two different protocols are both named {name!r}")
            ds.protocol_id = ids[name]
        self.sizes = [len(ds) for ds in self.datasets]
        self._starts = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)

    def __len__(self) -> int:
        return int(self._starts[-1])

    def locate(self, index: int) -> tuple[int, int]:
        """``(dataset position, index within that dataset)`` of a concatenated index."""
        n = len(self)
        if not 0 <= index < n:
            raise IndexError(f"index {index} out of range for a dataset of {n} faces")
        d = bisect.bisect_right(self._starts, index) - 1
        return d, int(index - self._starts[d])

    def __getitem__(self, index: int) -> Sample:
        index = int(index) + len(self) if index < 0 else int(index)
        d, local = self.locate(index)
        sample = self.datasets[d][local]
        sample["index"] = torch.tensor(index, dtype=torch.int64)
        return sample

    def set_epoch(self, epoch: int) -> None:
        """Forward the epoch to every dataset (augmentation draws)."""
        for ds in self.datasets:
            ds.set_epoch(epoch)

    def sampling_weights(self, mode: Literal["size", "balanced"] = "size") -> torch.Tensor:
        """Per-sample probabilities for ``torch.utils.data.WeightedRandomSampler``.

        Args:
            mode: ``"size"``: each dataset is drawn with probability proportional to its
                size (the CNT default, same as uniform shuffling); ``"balanced"``: every
                dataset equally often.

        Returns:
            ``(N,)`` float64 summing to 1.
        """
        sizes = np.asarray(self.sizes, dtype=np.float64)
        if mode == "size":
            per_dataset = sizes / sizes.sum()
        elif mode == "balanced":
            per_dataset = (sizes > 0) / max(int((sizes > 0).sum()), 1)
        else:
            raise ValueError(f"mode must be 'size' or 'balanced', got {mode!r}")
        with np.errstate(invalid="ignore", divide="ignore"):
            per_sample = np.where(sizes > 0, per_dataset / sizes, 0.0)
        return torch.from_numpy(np.repeat(per_sample, self.sizes))

    def __repr__(self) -> str:
        parts = ", ".join(f"{ds.protocol.name}:{len(ds)}" for ds in self.datasets)
        return f"MultiProtocolDataset([{parts}])"


def collate_landmarks(samples: Sequence[Sample]) -> dict[str, Any]:
    """Batch samples of one or several protocols.

    Returns:
        ``image`` ``(N, 3, S, S)`` uint8, ``protocol_id`` / ``index`` / ``domain``
        ``(N,)`` int64, ``matrix`` ``(N, 2, 3)`` and ``norm`` ``(N,)`` float64, ``source``
        (``N`` strings, empty for samples without one), and
        ``targets``: protocol name -> ``rows`` ``(n_p,)`` int64 ascending batch
        positions, ``landmarks`` ``(n_p, L_p, 2)`` float32, ``valid`` ``(n_p, L_p)``
        bool, ``orig_landmarks`` ``(n_p, L_p, 2)`` float64; keys in protocol-id order.

    Raises:
        ValueError: An empty batch, or one protocol id used with two names.
    """
    if not samples:
        raise ValueError("cannot collate an empty batch")
    protocol_id = torch.stack([s["protocol_id"] for s in samples])
    batch: dict[str, Any] = {
        "image": torch.stack([s["image"] for s in samples]),
        "protocol_id": protocol_id,
        "index": torch.stack([s["index"] for s in samples]),
        "domain": torch.stack([s["domain"] for s in samples]),
        "matrix": torch.stack([s["matrix"] for s in samples]),
        "norm": torch.stack([s["norm"] for s in samples]),
        "source": [s.get("source", "") for s in samples],
    }
    targets: dict[str, dict[str, torch.Tensor]] = {}
    for pid in torch.unique(protocol_id).tolist():  # sorted ascending
        rows = torch.nonzero(protocol_id == pid).flatten()
        group = [samples[r] for r in rows.tolist()]
        names = {s["protocol"] for s in group}
        if len(names) != 1:
            raise ValueError(f"protocol id {pid} is used by several protocols: {sorted(names)}")
        targets[names.pop()] = {
            "rows": rows,
            "landmarks": torch.stack([s["landmarks"] for s in group]),
            "valid": torch.stack([s["valid"] for s in group]),
            "orig_landmarks": torch.stack([s["orig_landmarks"] for s in group]),
        }
    batch["targets"] = targets
    return batch


def worker_init_fn(worker_id: int) -> None:
    """DataLoader worker setup: one torch thread each.

    Without it every worker spins as many threads as there are cores, which slows the
    data pipeline and the training process alike. Passive OpenMP waiting has to be in the
    environment before the process starts (``OMP_WAIT_POLICY=PASSIVE``, which the ``sepbn``
    command and the Makefile set); setting it here would be too late for the workers'
    OpenMP runtime. OpenCV's thread count is left alone:
    reconfiguring its pthreads pool in a forked worker can deadlock (OpenCV 5.0), and
    the 128-px warps here barely use it.
    """
    del worker_id  # the augmentation seed comes from the sample index, not the worker
    torch.set_num_threads(1)
