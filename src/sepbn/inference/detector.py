"""Landmarks on a user's photo: crop each face box, run the network, map back to the photo."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from sepbn.data.protocols import get_protocol, protocol_for_num_points
from sepbn.data.records import box_from_landmarks
from sepbn.data.transforms import FaceCropTransform, apply_affine, invert_affine
from sepbn.errors import ConfigError
from sepbn.models import is_cross_protocol, to_model_input


class LandmarkDetector:
    """A trained landmark network wrapped for photos.

    Each face box is cropped exactly as in evaluation (square box times ``box_scale``,
    resized to the input size), the network predicts the landmarks in the crop, and the
    crop's affine matrix maps them back to photo pixels.

    Detector boxes rarely match the box convention the network was trained with (a tight
    box around the landmarks for 300-W, the official rectangle for WFLW). ``refine_steps``
    re-crops each face around the tight box of the previous prediction, which moves any
    reasonable starting box to the training convention of landmark-derived boxes.

    Args:
        model: A single-protocol model (``model(x) -> (N, L, 2)``, coordinates / S), or a
            cross-protocol model together with ``protocol``.
        protocol: The protocol key of the model's output.
        input_size: S, the model's input side.
        box_scale: The training crop's box enlargement.
        device: Where the model runs.
        refine_steps: Re-crops around the previous prediction's landmark box.
    """

    def __init__(
        self,
        model: nn.Module,
        protocol: str,
        input_size: int = 128,
        box_scale: float = 1.25,
        device: str | torch.device = "cpu",
        refine_steps: int = 1,
    ) -> None:
        self.protocol = get_protocol(protocol)
        if is_cross_protocol(model):
            if self.protocol.name not in model.protocols:
                raise ConfigError(
                    f"model has no branch for protocol {self.protocol.name!r}; "
                    f"valid: {list(model.protocols)}"
                )
            model = model.single_protocol(self.protocol.name)
        if refine_steps < 0:
            raise ValueError(f"refine_steps must be >= 0, got {refine_steps}")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.transform = FaceCropTransform(self.protocol, input_size, box_scale, augment=None)
        self.refine_steps = int(refine_steps)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        protocol: str | None = None,
        device: str | torch.device = "cpu",
        refine_steps: int = 1,
    ) -> LandmarkDetector:
        """Load a ``sepbn train`` checkpoint (its embedded config gives size and crop).

        Args:
            path: The checkpoint (``last.pt`` or ``best.pt``).
            protocol: Needed for a cross-protocol (CNT stage 1) checkpoint with several
                branches; otherwise the model's only protocol.
            device: Where the model runs.
            refine_steps: See the class docstring.
        """
        from sepbn.engine.model_builder import load_model_from_checkpoint

        model, config = load_model_from_checkpoint(path, map_location="cpu")
        protocols = list(getattr(model, "protocols", []))
        if protocol is None:
            if len(protocols) > 1:
                raise ConfigError(
                    f"{path} has branches {protocols}: choose one with protocol=... (--protocol)"
                )
            if protocols:
                protocol = protocols[0]
            else:
                train_protocols = [d.protocol for d in config.data.train if d.protocol]
                protocol = protocol_for_num_points(int(model.num_points), train_protocols)
        return cls(
            model,
            protocol,
            input_size=config.model.input_size,
            box_scale=config.data.box_scale,
            device=device,
            refine_steps=refine_steps,
        )

    @torch.inference_mode()
    def _predict_once(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        crops, matrices = [], []
        for box in boxes:
            crop, _, matrix = self.transform(image, None, box)
            crops.append(crop)
            matrices.append(matrix)
        batch = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2)  # (F, 3, S, S) uint8
        out = self.model(to_model_input(batch, self.device)).float().cpu().numpy()  # (F, L, 2)
        crop_px = out.astype(np.float64) * self.transform.output_size
        return apply_affine(invert_affine(np.stack(matrices)), crop_px)

    def predict(
        self, image: np.ndarray, boxes: Sequence[Sequence[float]] | np.ndarray
    ) -> np.ndarray:
        """Landmarks of every face box in photo pixels.

        Args:
            image: ``(H, W, 3)`` uint8 RGB photo.
            boxes: ``(F, 4)`` face boxes ``x_min, y_min, x_max, y_max``.

        Returns:
            ``(F, L, 2)`` float64 landmarks, 0-based photo pixels.
        """
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        if len(boxes) == 0:
            return np.zeros((0, self.protocol.num_points, 2))
        landmarks = self._predict_once(image, boxes)
        for _ in range(self.refine_steps):
            refined = np.stack([box_from_landmarks(p) for p in landmarks])
            landmarks = self._predict_once(image, refined)
        return landmarks
