"""What the checkpoint analyses read: a trained network for one protocol and its faces.

Shared by ``sepbn analyze attention`` and ``sepbn analyze embedding``: the checkpoint is
rebuilt without a config file (a cross-protocol model is cut to the branch of the data's
protocol), and the faces are cropped as for evaluation (no augmentation, no cache), in the
order of the records, so that sample ``i`` of the loader is record ``i``. Records whose image
fails the checks a dataset applies are dropped (or raise) before either is used.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn
from torch.utils.data import DataLoader

from sepbn.config import DatasetConfig, ExperimentConfig
from sepbn.data.datasets import LandmarkDataset, collate_landmarks
from sepbn.data.errors import DatasetError
from sepbn.data.transforms import FaceCropTransform
from sepbn.data.validation import check_records
from sepbn.engine.checkpoint import CheckpointError
from sepbn.engine.data_builder import LoadedSet, load_records
from sepbn.engine.model_builder import load_model_from_checkpoint
from sepbn.models import is_cross_protocol

__all__ = ["eval_loader", "load_model_and_faces"]


def load_model_and_faces(
    checkpoint: str | Path, data: DatasetConfig, device: str = "cpu"
) -> tuple[nn.Module, ExperimentConfig, LoadedSet]:
    """The checkpoint's network for the data's protocol (``model(x) -> (N, L, 2)``), the
    config it was trained with, and the data's records.

    Raises:
        CheckpointError: A bad checkpoint, or a cross-protocol one without that branch.
        DatasetError: Unreadable data.
    """
    model, config = load_model_from_checkpoint(checkpoint, map_location=device)
    loaded = load_records(data, config.seed)
    kept = check_records(loaded.records, data.on_error, loaded.cache_skipped)
    if not kept:
        first = loaded.cache_skipped.skipped[0]
        raise DatasetError(first.source, f"{first.reason}; no faces left", "no faces left")
    loaded.records = [loaded.records[i] for i in kept]
    protocol = loaded.protocol.name
    if is_cross_protocol(model):
        if protocol not in model.protocols:
            raise CheckpointError(
                f"{checkpoint} has no branch for protocol {protocol!r}; "
                f"valid: {list(model.protocols)}"
            )
        model = model.single_protocol(protocol)
    return model.to(device).eval(), config, loaded


def eval_loader(loaded: LoadedSet, config: ExperimentConfig, batch_size: int = 32) -> DataLoader:
    """Evaluation crops of ``loaded`` at the checkpoint's input size and box scale, in order."""
    transform = FaceCropTransform(
        loaded.protocol, config.model.input_size, config.data.box_scale, augment=None
    )
    dataset = LandmarkDataset(loaded.records, loaded.protocol, transform, seed=config.seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_landmarks)
