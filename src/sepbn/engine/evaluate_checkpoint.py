"""A trained checkpoint on a dataset in its official format: what ``sepbn eval`` runs.

:func:`evaluate_checkpoint` rebuilds the network from the checkpoint (no config file needed),
reads the dataset, crops it as in training, evaluates it with
:func:`sepbn.engine.evaluator.evaluate_model` (best of K domains for a brute-force SepBN model,
paper Table II) and writes the per-image CSV, the summary JSON (with the NME per head-pose bin
and the SepBN attention health on these faces), the CED plot and, for a set with WFLW's
attribute flags, the Table IX subsets.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from sepbn.config import DatasetConfig
from sepbn.data.datasets import collate_landmarks
from sepbn.data.errors import SkipReport
from sepbn.engine.checkpoint import CheckpointError
from sepbn.engine.data_builder import LoadedSet, load_records, make_eval_set
from sepbn.engine.evaluator import EvalResult, evaluate_model
from sepbn.engine.model_builder import load_model_from_checkpoint
from sepbn.metrics import LandmarkMetrics, attribute_table
from sepbn.models import is_cross_protocol
from sepbn.nn import num_model_domains

__all__ = ["CheckpointEvaluation", "evaluate_checkpoint"]

logger = logging.getLogger(__name__)


@dataclass
class CheckpointEvaluation:
    """What :func:`evaluate_checkpoint` measured and wrote.

    Attributes:
        dataset: The records evaluated (name, protocol, records).
        result: Metrics (``result.pose``: NME per head-pose bin), per-image errors, and the
            SepBN attention health on these faces.
        paths: ``{"per_image", "summary", "ced", "skipped", ["attributes"]}`` files; the
            skip list names every record left out while reading or cropping.
        attributes: WFLW's Table IX subsets (``"test"``, ``"pose"``, ...), empty when the
            records carry no attribute flags.
        num_domains: K of a brute-force SepBN model (best of K per face), else 0.
        skipped: The records left out, with file, line and reason.
    """

    dataset: LoadedSet
    result: EvalResult
    paths: dict[str, Path]
    attributes: dict[str, LandmarkMetrics] = field(default_factory=dict)
    num_domains: int = 0
    skipped: SkipReport = field(default_factory=SkipReport)


def evaluate_checkpoint(
    checkpoint: str | Path,
    data: DatasetConfig,
    out_dir: str | Path,
    *,
    name: str | None = None,
    device: str | torch.device = "cpu",
    batch_size: int = 32,
    num_workers: int = 0,
    progress: bool = True,
) -> CheckpointEvaluation:
    """Evaluate ``checkpoint`` on ``data`` and write the reports into ``out_dir``.

    Args:
        checkpoint: A ``sepbn train`` checkpoint (``last.pt`` / ``best.pt``).
        data: The dataset, as in a config's ``data.test`` entry.
        out_dir: Output folder, created if missing.
        name: File name prefix; ``None`` = the dataset's display name.
        device: Where the model runs.
        batch_size: Faces per batch.
        num_workers: DataLoader worker processes.
        progress: Show a progress bar.

    Raises:
        CheckpointError: A bad checkpoint, or one without a branch for the data's protocol.
        DatasetError: Unreadable data.
    """
    model, config = load_model_from_checkpoint(checkpoint, map_location=device)
    loaded = load_records(data, config.seed)
    protocol = loaded.protocol.name
    if is_cross_protocol(model) and protocol not in model.protocols:
        raise CheckpointError(
            f"{checkpoint} has no branch for protocol {protocol!r}; valid: {list(model.protocols)}"
        )
    if not is_cross_protocol(model) and model.num_points != loaded.protocol.num_points:
        raise CheckpointError(
            f"{checkpoint} is a {model.num_points}-point model; {loaded.name} is "
            f"{protocol!r} data with {loaded.protocol.num_points} points"
        )
    dataset = make_eval_set(loaded, config)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate_landmarks,
    )
    num_domains = num_model_domains(model)
    if num_domains:
        logger.info(
            "brute-force SepBN model: best of %d domains per face (oracle, Table II)", num_domains
        )
    result = evaluate_model(model, loader, protocol, device=device, progress=progress)
    out = Path(out_dir)
    prefix = name or loaded.name
    skipped = loaded.skipped
    listing = skipped.write_csv(out / f"{prefix}_skipped.csv", dataset=loaded.name)
    paths = result.save(out, prefix, skipped={**skipped.summary_counts(), "file": listing.name})
    paths["skipped"] = listing
    attributes: dict[str, LandmarkMetrics] = {}
    # The faces in dataset order: records that failed the checks are not in the dataset.
    faces = [loaded.records[i] for i in dataset.record_index.tolist()]
    if any(r.attributes for r in faces):
        attributes = attribute_table(result, faces)
        paths["attributes"] = out / f"{prefix}_attributes.json"
        paths["attributes"].write_text(
            json.dumps({k: v.to_dict() for k, v in attributes.items()}, indent=2)
        )
    return CheckpointEvaluation(loaded, result, paths, attributes, num_domains, skipped)
