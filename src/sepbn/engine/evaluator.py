"""Evaluation: predictions in original image pixels, NME / FR / AUC, reports.

Batches follow the collate contract of :func:`sepbn.data.datasets.collate_landmarks`:
``"image"`` uint8 ``(N, 3, S, S)``, ``"matrix"`` ``(N, 2, 3)`` (original pixels ->
crop pixels), ``"norm"`` ``(N,)`` (the NME normalizer d in the original image) and
``"targets"[protocol]`` with ``"rows"``, ``"valid"`` and ``"orig_landmarks"``, and
optionally ``"source"`` (``N`` strings, the per-image CSV's ``source`` column).

Two kinds of model are handled. A model with a ``protocols`` attribute (a list of
protocol names, as :class:`sepbn.models.cross_protocol.CrossProtocolModel` has) is
a cross-protocol model, called as ``model(x, protocol_ids) -> {name: (n, L, 2)}``
with the id of the evaluated protocol in ``model.protocols``. Any other model is a
single-protocol model, ``model(x) -> (N, L, 2)``. Both predict coordinates divided
by the input size S.

Besides NME, failure rate and AUC, every evaluation reports the NME per head-pose bin of the
ground truth's yaw (:func:`sepbn.analysis.pose_bins.pose_bin_metrics`: frontal, moderate,
profile, and the count of faces whose yaw cannot be measured) and the attention health of
every SepBN layer on the evaluated faces (:mod:`sepbn.nn.attention_health`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from sepbn.analysis.pose_bins import POSE_BIN_EDGES, pose_bin_metrics
from sepbn.data.protocols import LandmarkProtocol, get_protocol
from sepbn.data.transforms import apply_affine, invert_affine
from sepbn.metrics.ced import plot_ced
from sepbn.metrics.nme import FAILURE_THRESHOLD, nme_per_image
from sepbn.metrics.report import LandmarkMetrics, write_per_image_csv, write_summary_json
from sepbn.models import CrossProtocolModel, is_cross_protocol, to_model_input
from sepbn.nn import best_of_domains, num_model_domains
from sepbn.nn.attention_health import AttentionHealth, AttentionRecorder


@dataclass
class Predictions:
    """Predicted and ground-truth landmarks of one protocol, in original image pixels.

    Attributes:
        protocol: The protocol evaluated.
        indices: ``(N,)`` int64 record index of each face (the sample's ``"index"``).
        landmarks: ``(N, L, 2)`` float64 predictions mapped back to the original image.
        gt: ``(N, L, 2)`` float64 ground truth in the original image.
        norm: ``(N,)`` float64 NME normalizer d of each face.
        valid: ``(N, L)`` bool, False at unannotated points.
        domains: ``(N,)`` int64 sub-domain label of each face, -1 when unknown.
        sources: ``N`` record sources from the batches' ``"source"``, or None when the
            batches carry none.
    """

    protocol: str
    indices: np.ndarray
    landmarks: np.ndarray
    gt: np.ndarray
    norm: np.ndarray
    valid: np.ndarray
    domains: np.ndarray
    sources: list[str] | None = None

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def nme(self) -> np.ndarray:
        """``(N,)`` per-image NME as fractions of d (Eq. 8)."""
        return nme_per_image(self.landmarks, self.gt, self.norm, self.valid)


@dataclass
class EvalResult:
    """Metrics and per-image errors of one evaluation.

    Attributes:
        protocol: The protocol evaluated.
        metrics: NME, failure rate and AUC over all images.
        predictions: The landmarks behind the numbers.
        nmes: ``(N,)`` per-image NME as fractions, in the order of ``predictions``.
        sources: ``N`` record sources (``"file:line"``), empty strings when unknown.
        best_domain: ``(N,)`` domain whose prediction was kept, for
            :func:`evaluate_best_of_domains` only (an oracle choice).
        pose: NME and face count per head-pose bin of the ground truth
            (``nme_pose_frontal``, ``count_pose_frontal``, ..., ``count_pose_unknown``; see
            :func:`sepbn.analysis.pose_bins.pose_bin_metrics`; an empty bin has no NME).
        attention_health: SepBN layer name -> its attention statistics on these faces;
            empty for a model without SepBN layers.
    """

    protocol: str
    metrics: LandmarkMetrics
    predictions: Predictions
    nmes: np.ndarray
    sources: list[str]
    best_domain: np.ndarray | None = None
    pose: dict[str, float] = field(default_factory=dict)
    attention_health: dict[str, AttentionHealth] = field(default_factory=dict)

    @property
    def indices(self) -> np.ndarray:
        """``(N,)`` record index of each image."""
        return self.predictions.indices

    def summary(self) -> dict[str, float]:
        """Every number in one flat dict (fractions of d), as ``eval/summary.json`` holds it:
        ``nme``, ``failure_rate``, ``auc``, ``num_images``, ``threshold``, the pose bins,
        and ``attn/<layer>/entropy``, ``/dependence``, ``/usage_<k>`` per SepBN layer."""
        out: dict[str, float] = {**self.metrics.to_dict(), **self.pose}
        for name, health in self.attention_health.items():
            out.update(health.as_row(f"attn/{name}"))
        return out

    def save(self, out_dir: str | Path, name: str, **extra: Any) -> dict[str, Path]:
        """Write ``<name>_per_image.csv``, ``<name>_summary.json`` and ``<name>_ced.png``.

        Args:
            out_dir: Output folder, created if missing.
            name: File name prefix, e.g. the model or run name.
            **extra: More JSON fields for the summary (e.g. ``skipped`` counts).

        Returns:
            ``{"per_image": ..., "summary": ..., "ced": ...}`` paths.
        """
        out = Path(out_dir)
        extra = {"name": name, "protocol": self.protocol, **extra}
        extra["pose_bins"] = {
            "yaw_from": "ground-truth landmarks, absolute, degrees",
            "edges": list(POSE_BIN_EDGES),
            **self.pose,
        }
        if self.attention_health:
            extra["attention_health"] = {
                name: {"entropy": h.entropy, "dependence": h.dependence, "usage": h.usage.tolist()}
                for name, h in self.attention_health.items()
            }
        if self.best_domain is not None:
            extra["best_of_domains"] = {
                "note": "oracle: each image keeps the domain with the lowest NME against "
                "the ground truth (paper Table II)",
                "domain_counts": np.bincount(self.best_domain).tolist(),
            }
        threshold = self.metrics.threshold
        return {
            "per_image": write_per_image_csv(
                out / f"{name}_per_image.csv", self.indices, self.nmes, self.sources
            ),
            "summary": write_summary_json(out / f"{name}_summary.json", self.metrics, **extra),
            "ced": plot_ced(
                {name: self.nmes},
                out / f"{name}_ced.png",
                threshold=threshold,
                title=f"CED on {self.protocol} (NME up to {100 * threshold:g}%)",
            ),
        }


class _ProtocolBranch(nn.Module):
    """A cross-protocol model seen as a single-protocol one: ``x -> (N, L, 2)``.

    Holding ``model`` as a submodule keeps its layers visible to ``modules()``, which
    the SepBN domain routing relies on.
    """

    def __init__(self, model: CrossProtocolModel, protocol: str) -> None:
        super().__init__()
        self.model = model
        self.protocol = protocol
        self.protocol_id = list(model.protocols).index(protocol)

    def forward(self, x: Tensor) -> Tensor:
        ids = torch.full((x.shape[0],), self.protocol_id, dtype=torch.long, device=x.device)
        return self.model(x, ids)[self.protocol]


def predict(
    model: nn.Module,
    loader: Iterable[Mapping[str, Any]],
    device: str | torch.device = "cpu",
    protocol: str | LandmarkProtocol | None = None,
    amp: bool = False,
    progress: bool = True,
) -> Predictions:
    """Run ``model`` over ``loader`` and map its predictions to original image pixels.

    Only the faces of ``protocol`` are run through the model; faces of other
    protocols in mixed batches are skipped.

    Args:
        model: A single- or cross-protocol model (see the module docstring); it is
            put in eval mode for the run and restored afterwards.
        loader: Batches in the collate format (usually a ``DataLoader``).
        device: Where the model runs; images go there as uint8 and become
            ``float / 255`` on the device.
        protocol: The protocol to evaluate; ``None`` takes the only one the
            batches contain.
        amp: Run under ``torch.autocast`` (bfloat16 on CPU, float16 on CUDA).
        progress: Show a tqdm bar over batches.

    Returns:
        The predictions of every face of ``protocol``, in loader order.
    """
    return _run(model, loader, device, protocol, amp, progress, num_domains=None)[0]


def evaluate(
    model: nn.Module,
    loader: Iterable[Mapping[str, Any]],
    protocol: str | LandmarkProtocol | None = None,
    device: str | torch.device = "cpu",
    amp: bool = False,
    threshold: float = FAILURE_THRESHOLD,
    records: Sequence[Any] | None = None,
    progress: bool = True,
) -> EvalResult:
    """Predict, then compute NME (Eq. 8), failure rate and AUC at ``threshold``.

    Args:
        model: A single- or cross-protocol model.
        loader: Batches in the collate format.
        protocol: The protocol to evaluate; ``None`` takes the only one present.
        device: Where the model runs.
        amp: Run under ``torch.autocast``.
        threshold: Failure / AUC threshold as a fraction of d.
        records: The dataset's records, for the ``source`` of each image in the
            per-image CSV; default: the batches' ``"source"``, else
            ``loader.dataset.records`` when it exists.
        progress: Show a tqdm bar over batches.

    Returns:
        The metrics and the per-image errors.
    """
    with AttentionRecorder(model) as recorder:
        preds, _ = _run(model, loader, device, protocol, amp, progress, num_domains=None)
    return _result(preds, loader, threshold, records, None, recorder.health())


def evaluate_best_of_domains(
    model: nn.Module,
    loader: Iterable[Mapping[str, Any]],
    protocol: str | LandmarkProtocol | None,
    num_domains: int,
    device: str | torch.device = "cpu",
    amp: bool = False,
    threshold: float = FAILURE_THRESHOLD,
    records: Sequence[Any] | None = None,
    progress: bool = True,
) -> EvalResult:
    """Brute-force SepBN evaluation of paper Table II: the best of K domains per image.

    A model with :class:`sepbn.nn.DomainBatchNorm2d` layers needs the domain of each
    image, which is unknown at test time. As in the paper (Sec. III-A, "all the test
    images are processed three times and the best regression result is kept"),
    every batch is run once per domain and each image keeps the prediction with the
    lowest NME **against its ground truth**. This is an oracle: it uses the labels
    to choose, so the number is an optimistic bound, comparable only to Table II and
    not to single-pass results.

    The per-batch choice is :func:`sepbn.nn.best_of_domains`.

    Args:
        model: A model containing ``DomainBatchNorm2d`` layers.
        loader: Batches in the collate format.
        protocol: The protocol to evaluate; ``None`` takes the only one present.
        num_domains: K, the number of BN branches (3 in the paper).
        device: Where the model runs.
        amp: Run under ``torch.autocast``.
        threshold: Failure / AUC threshold as a fraction of d.
        records: The dataset's records, for the per-image CSV.
        progress: Show a tqdm bar over batches.

    Returns:
        The metrics of the kept predictions, with ``best_domain`` filled in.
    """
    if not isinstance(num_domains, int) or num_domains < 1:
        raise ValueError(f"num_domains must be a positive integer, got {num_domains!r}")
    with AttentionRecorder(model) as recorder:
        preds, best = _run(model, loader, device, protocol, amp, progress, num_domains)
    return _result(preds, loader, threshold, records, best, recorder.health())


def evaluate_model(
    model: nn.Module,
    loader: Iterable[Mapping[str, Any]],
    protocol: str | LandmarkProtocol | None = None,
    **kwargs: Any,
) -> EvalResult:
    """The evaluation that fits ``model``: :func:`evaluate_best_of_domains` (paper Table II)
    for a model with brute-force SepBN layers, :func:`evaluate` for any other.

    Args:
        model: A single- or cross-protocol model.
        loader: Batches in the collate format.
        protocol: The protocol to evaluate; ``None`` takes the only one present.
        **kwargs: ``device``, ``amp``, ``threshold``, ``records``, ``progress`` as for
            :func:`evaluate`.
    """
    num_domains = num_model_domains(model)
    if num_domains:
        return evaluate_best_of_domains(model, loader, protocol, num_domains, **kwargs)
    return evaluate(model, loader, protocol, **kwargs)


def _protocol_name(protocol: str | LandmarkProtocol | None) -> str | None:
    return protocol.name if isinstance(protocol, LandmarkProtocol) else protocol


def _single_input(model: nn.Module, protocol: str) -> nn.Module:
    """``model`` as ``x -> (N, L, 2)`` for ``protocol``."""
    if not is_cross_protocol(model):
        return model
    if protocol not in model.protocols:
        raise ValueError(f"model has no branch for protocol {protocol!r}; it has {model.protocols}")
    return _ProtocolBranch(model, protocol)


def _run(
    model: nn.Module,
    loader: Iterable[Mapping[str, Any]],
    device: str | torch.device,
    protocol: str | LandmarkProtocol | None,
    amp: bool,
    progress: bool,
    num_domains: int | None,
) -> tuple[Predictions, np.ndarray | None]:
    """The batch loop shared by :func:`predict` and the two evaluations."""
    device = torch.device(device)
    name = _protocol_name(protocol)
    # bfloat16 is the autocast type CPUs support; float16 elsewhere.
    amp_dtype = torch.bfloat16 if device.type == "cpu" else torch.float16
    keys = ("indices", "landmarks", "gt", "norm", "valid", "domains", "best")
    parts: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    sources: list[str] | None = []
    forward: nn.Module | None = None
    seen: set[str] = set()
    was_training = model.training
    model.eval()
    try:
        bar = tqdm(loader, desc=f"eval {name or ''}".strip(), unit="batch", disable=not progress)
        for batch in bar:
            seen.update(batch["targets"])
            if name is None:
                if len(seen) > 1:
                    raise ValueError(
                        f"batches hold several protocols {sorted(seen)}; pass protocol=..."
                    )
                name = next(iter(seen))
            if name not in batch["targets"]:
                continue
            if forward is None:
                forward = _single_input(model, name)
            target = _Target.from_batch(batch, name)
            x = to_model_input(target.images, device)
            autocast = (
                torch.autocast(device.type, dtype=amp_dtype) if amp else contextlib.nullcontext()
            )
            with torch.inference_mode(), autocast:
                landmarks, best = _predict_batch(forward, x, target, num_domains)
            parts["landmarks"].append(landmarks)
            for key in ("indices", "gt", "norm", "valid", "domains"):
                parts[key].append(getattr(target, key))
            if best is not None:
                parts["best"].append(best)
            if sources is not None and "source" in batch:
                sources += [batch["source"][r] for r in target.rows]
            else:
                sources = None  # a batch without sources: none are known
    finally:
        model.train(was_training)
    if name is None or not parts["indices"]:
        raise ValueError(f"no face of protocol {name!r} in the loader; found {sorted(seen)}")
    cat = {k: np.concatenate(v) for k, v in parts.items() if v}
    preds = Predictions(
        protocol=name,
        indices=cat["indices"],
        landmarks=cat["landmarks"],
        gt=cat["gt"],
        norm=cat["norm"],
        valid=cat["valid"],
        domains=cat["domains"],
        sources=sources,
    )
    return preds, cat.get("best")


@dataclass
class _Target:
    """The rows of one protocol in a collated batch, as numpy (except the images)."""

    protocol: str
    images: Tensor  # (n, 3, S, S) uint8
    matrix: np.ndarray  # (n, 2, 3)
    gt: np.ndarray  # (n, L, 2)
    valid: np.ndarray  # (n, L)
    norm: np.ndarray  # (n,)
    indices: np.ndarray  # (n,)
    domains: np.ndarray  # (n,)
    rows: list[int]  # batch positions

    @classmethod
    def from_batch(cls, batch: Mapping[str, Any], protocol: str) -> _Target:
        t = batch["targets"][protocol]
        rows = torch.as_tensor(t["rows"], dtype=torch.long)
        images = batch["image"].index_select(0, rows)
        if images.dtype != torch.uint8:
            raise TypeError(f"batch images must be uint8 (N, 3, S, S), got {images.dtype}")
        r = rows.numpy()
        return cls(
            protocol=protocol,
            images=images,
            matrix=_numpy(batch["matrix"]).astype(np.float64)[r],
            gt=_numpy(t["orig_landmarks"]).astype(np.float64),
            valid=_numpy(t["valid"]).astype(bool),
            norm=_numpy(batch["norm"]).astype(np.float64)[r],
            indices=_numpy(batch["index"]).astype(np.int64)[r],
            domains=_numpy(batch["domain"]).astype(np.int64)[r],
            rows=r.tolist(),
        )

    def to_original(self, out: Tensor, size: int) -> np.ndarray:
        """Model output (coordinates / S) -> original image pixels, float64."""
        if tuple(out.shape) != self.gt.shape:
            raise ValueError(
                f"model output {tuple(out.shape)} does not match the {self.protocol!r} "
                f"targets {self.gt.shape}; does the model predict this protocol?"
            )
        crop = _numpy(out.float()).astype(np.float64) * size  # crop pixels
        return apply_affine(invert_affine(self.matrix), crop)


def _predict_batch(
    forward: nn.Module,
    x: Tensor,
    target: _Target,
    num_domains: int | None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Predictions in original pixels; with ``num_domains``, the best of K and its domain."""
    size = x.shape[-1]
    if num_domains is None:
        return target.to_original(forward(x), size), None

    def error_fn(out: Tensor) -> Tensor:
        # The oracle of Table II: the error is measured against the ground truth.
        nme = nme_per_image(target.to_original(out, size), target.gt, target.norm, target.valid)
        return torch.as_tensor(nme, device=out.device)

    out, best = best_of_domains(forward, x, num_domains, error_fn)
    return target.to_original(out, size), _numpy(best).astype(np.int64)


def _numpy(value: Any) -> np.ndarray:
    if isinstance(value, Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _result(
    preds: Predictions,
    loader: Iterable[Mapping[str, Any]],
    threshold: float,
    records: Sequence[Any] | None,
    best_domain: np.ndarray | None,
    health: dict[str, AttentionHealth],
) -> EvalResult:
    nmes = preds.nme()
    if records is None and preds.sources is None:
        records = getattr(getattr(loader, "dataset", None), "records", None)
    if records is not None:
        sources = [records[i].source for i in preds.indices]
    else:
        sources = preds.sources if preds.sources is not None else [""] * len(preds)
    return EvalResult(
        protocol=preds.protocol,
        metrics=LandmarkMetrics.from_errors(nmes, threshold),
        predictions=preds,
        nmes=nmes,
        sources=sources,
        best_domain=best_domain,
        # The face's pose is the ground truth's, not the prediction's.
        pose=pose_bin_metrics(nmes, preds.gt, get_protocol(preds.protocol), preds.valid),
        attention_health=health,
    )
