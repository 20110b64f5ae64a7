"""Landmarks on a user's photo: find the faces, crop each, run the network, map back.

:class:`LandmarkDetector` is the Python API behind ``sepbn predict``::

    detector = LandmarkDetector.from_checkpoint("runs/x/stage1/best.pt")
    for face in detector.predict("photo.jpg"):
        face.landmarks, face.box, face.score, face.quality

**Quality score.** A landmark network answers for any crop, face or not, so each face also
gets a ``quality`` in ``(0, 1]``: the network is run a second time on a crop shifted by 8% of
the box and enlarged by 10% (in the same batch as the final pass), and

    quality = exp(-d / 0.05),   d = mean_l ||p_l - p'_l|| / s

where ``p`` and ``p'`` are the two predictions in photo pixels and ``s`` is the side
``sqrt(w h)`` of ``p``'s tight box. On a face, a trained network's landmarks stay on the
face features when the crop moves; on a crop without a face they follow the crop (the network
draws its mean face in the new crop), so ``d`` is large and the quality low. With the small
CPU model of ``tests/conftest.py``, faces of the 300-W test photos score 0.45-0.7 and noise or
background crops below 0.16 (``tests/inference/test_landmark_detector_api.py``). It is a
ranking signal (sort or threshold faces with it), not a
calibrated probability.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sepbn.data.protocols import PROTOCOLS, LandmarkProtocol, get_protocol, protocol_for_num_points
from sepbn.data.transforms import FaceCropTransform, apply_affine, invert_affine
from sepbn.inference.backends import (
    LandmarkBackend,
    OnnxBackend,
    TorchBackend,
    TorchScriptBackend,
    check_finite_weights,
    is_torchscript,
    model_num_points,
    resolve_device,
)
from sepbn.inference.errors import InferenceError
from sepbn.inference.face_detection import (
    DEFAULT_FACE_DETECTOR,
    FaceDetector,
    build_face_detector,
)
from sepbn.inference.image_input import ImageLike, as_rgb
from sepbn.models import is_cross_protocol

__all__ = ["QUALITY_SCALE", "Face", "LandmarkDetector", "check_boxes"]

#: ``d`` (mean disagreement per box side) at which the quality is 1/e.
QUALITY_SCALE = 0.05
_JITTER_SHIFT = 0.08  # of the box side, in x and y
_JITTER_SCALE = 1.10


@dataclass(frozen=True)
class Face:
    """One face of a photo.

    Attributes:
        landmarks: ``(L, 2)`` x, y in pixels of the photo, 0-based.
        box: ``(4,)`` the face box the landmarks were predicted from (``x_min, y_min,
            x_max, y_max``, the detector's box after its correction, or the box given).
        score: The face detector's confidence; 1.0 for a box that was given.
        quality: Agreement of two differently cropped predictions (module docstring).
    """

    landmarks: np.ndarray
    box: np.ndarray
    score: float
    quality: float

    def to_dict(self, decimals: int = 2) -> dict[str, Any]:
        """JSON-ready ``{"box", "score", "quality", "landmarks"}``."""
        return {
            "box": np.round(self.box, decimals).tolist(),
            "score": round(float(self.score), 4),
            "quality": round(float(self.quality), 4),
            "landmarks": np.round(self.landmarks, decimals).tolist(),
        }


def check_boxes(
    boxes: np.ndarray | Sequence[Sequence[float]], shape: tuple[int, ...]
) -> np.ndarray:
    """``(F, 4)`` float64 boxes, each finite, non-empty and overlapping the image.

    Args:
        boxes: ``x_min, y_min, x_max, y_max`` per face.
        shape: The image's shape, ``(H, W, ...)``.

    Raises:
        InferenceError: A box that is not 4 numbers, is empty, or lies wholly outside.
    """
    array = np.asarray(boxes, dtype=np.float64)
    if array.size % 4 or (array.ndim > 1 and array.shape[-1] != 4):
        raise InferenceError(f"boxes must be x_min,y_min,x_max,y_max each, got {array.tolist()}")
    array = array.reshape(-1, 4)
    height, width = shape[:2]
    for box in array:
        text = ",".join(f"{v:g}" for v in box)
        if not np.isfinite(box).all() or box[2] <= box[0] or box[3] <= box[1]:
            raise InferenceError(
                f"box {text} is empty or not finite (need x_min<x_max, y_min<y_max)"
            )
        if box[2] <= 0 or box[3] <= 0 or box[0] >= width or box[1] >= height:
            raise InferenceError(f"box {text} lies wholly outside the {width}x{height} image")
    return array


class LandmarkDetector:
    """A trained landmark network and a face detector, wrapped for photos.

    Each face box is cropped exactly as in evaluation (square box times ``box_scale``,
    resized to the input size), the network predicts the landmarks in the crop, and the
    crop's affine matrix maps them back to photo pixels. All faces handed over in one call,
    of one photo or of many, go through the network together, ``batch_size`` crops at a time.

    Detector boxes rarely match the box convention the network was trained with (the tight
    box of the landmarks). ``refine_steps`` re-crops each face around the tight box of the
    previous prediction, which moves any reasonable starting box to that convention.

    Args:
        model: A single-protocol model (``model(x) -> (N, L, 2)``, coordinates / S), a
            cross-protocol model together with ``protocol``, or a :class:`LandmarkBackend`
            (e.g. :class:`~sepbn.inference.backends.OnnxBackend`).
        protocol: The protocol key of the model's output.
        input_size: S, the model's input side.
        box_scale: The training crop's box enlargement.
        device: Where a PyTorch model runs; ``None`` = CUDA when available, else the CPU.
        refine_steps: Re-crops around the previous prediction's landmark box.
        face_detector: Finds the faces when :meth:`predict` gets no boxes: a registry name
            (``"haar"``, ... see :func:`build_face_detector`; built on first use), a
            :class:`FaceDetector`, or ``None`` (boxes must then be given).
        batch_size: Crops per network call.

    Raises:
        InferenceError: A protocol the model has no branch for, or whose point count is
            not the model's; a device that is not there.
    """

    def __init__(
        self,
        model: nn.Module | LandmarkBackend,
        protocol: str,
        input_size: int = 128,
        box_scale: float = 1.25,
        device: str | torch.device | None = "cpu",
        refine_steps: int = 1,
        face_detector: str | FaceDetector | None = DEFAULT_FACE_DETECTOR,
        batch_size: int = 64,
    ) -> None:
        try:
            self.protocol: LandmarkProtocol = get_protocol(protocol)
        except (KeyError, ValueError) as exc:
            raise InferenceError(str(exc).strip("'\"")) from None
        if isinstance(model, nn.Module):
            if is_cross_protocol(model):
                if self.protocol.name not in model.protocols:
                    raise InferenceError(
                        f"the model has no branch for protocol {self.protocol.name!r}; "
                        f"valid: {list(model.protocols)}"
                    )
                model = model.single_protocol(self.protocol.name)
            backend: LandmarkBackend = TorchBackend(model, resolve_device(device))
        else:
            backend = model
        if backend.num_points != self.protocol.num_points:
            raise InferenceError(
                f"the model predicts {backend.num_points} points, protocol "
                f"{self.protocol.name!r} has {self.protocol.num_points}; valid: "
                f"{_protocols_with(backend.num_points)}"
            )
        if refine_steps < 0:
            raise InferenceError(f"refine_steps must be >= 0, got {refine_steps}")
        if batch_size < 1:
            raise InferenceError(f"batch_size must be >= 1, got {batch_size}")
        self.backend = backend
        self.transform = FaceCropTransform(self.protocol, input_size, box_scale, augment=None)
        self.refine_steps = int(refine_steps)
        self.batch_size = int(batch_size)
        self._face_detector = face_detector

    @property
    def model(self) -> nn.Module:
        """The PyTorch network (not available with the ONNX backend)."""
        if not isinstance(self.backend, TorchBackend):
            raise AttributeError(f"a {type(self.backend).__name__} has no PyTorch model")
        return self.backend.model

    @property
    def device(self) -> torch.device:
        """Where the network runs."""
        return getattr(self.backend, "device", torch.device("cpu"))

    @property
    def face_detector(self) -> FaceDetector:
        """The face detector, built from its name on first use."""
        if self._face_detector is None:
            raise InferenceError("no face detector: pass the face boxes (--box)")
        if isinstance(self._face_detector, str):
            self._face_detector = build_face_detector(self._face_detector)
        return self._face_detector

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        protocol: str | None = None,
        device: str | torch.device | None = None,
        refine_steps: int = 1,
        detector: str | FaceDetector | None = DEFAULT_FACE_DETECTOR,
        backend: str | None = None,
        batch_size: int = 64,
    ) -> LandmarkDetector:
        """Load a ``sepbn train`` checkpoint (its embedded config gives size and crop).

        Args:
            path: The checkpoint (``last.pt`` or ``best.pt``), or a file written by
                ``sepbn export`` (ONNX or TorchScript).
            protocol: Needed for a cross-protocol (CNT stage 1) checkpoint with several
                branches; otherwise the model's only protocol (it is checked against the
                model's point count).
            device: Where the model runs; ``None`` = CUDA when available, else the CPU.
            refine_steps: See the class docstring.
            detector: The face detector (a registry name or an instance), see the class.
            backend: ``"torch"``, ``"onnx"`` or ``"torchscript"``; ``None``: ``"onnx"`` for a
                ``.onnx`` file, ``"torchscript"`` for a TorchScript archive, else ``"torch"``.
            batch_size: Crops per network call.

        Raises:
            CheckpointError: The file is missing, not a sepbn checkpoint, or corrupt.
            InferenceError: A protocol that does not fit the model, a missing device, weights
                that hold NaN or inf.
        """
        if backend is None:
            backend = "onnx" if Path(path).suffix.lower() == ".onnx" else "torch"
            backend = "torchscript" if backend == "torch" and is_torchscript(path) else backend
        if backend in ("onnx", "torchscript"):
            exported: OnnxBackend | TorchScriptBackend = (
                OnnxBackend(path)
                if backend == "onnx"
                else TorchScriptBackend(path, resolve_device(device))
            )
            meta = exported.metadata
            if protocol is not None and protocol != meta["protocol"]:
                raise InferenceError(
                    f"{path} was exported for protocol {meta['protocol']!r}, not {protocol!r}"
                )
            return cls(
                exported,
                meta["protocol"],
                int(meta["input_size"]),
                float(meta["box_scale"]),
                refine_steps=refine_steps,
                face_detector=detector,
                batch_size=batch_size,
            )
        if backend != "torch":
            raise InferenceError(
                f"unknown backend {backend!r}; valid: ['torch', 'onnx', 'torchscript']"
            )
        from sepbn.engine.model_builder import load_model_from_checkpoint

        resolved = resolve_device(device)  # before loading, so a bad device fails fast
        model, config = load_model_from_checkpoint(path, map_location="cpu")
        check_finite_weights(model, path)
        protocol = checkpoint_protocol(model, config, protocol, path)
        return cls(
            model,
            protocol,
            input_size=config.model.input_size,
            box_scale=config.data.box_scale,
            device=resolved,
            refine_steps=refine_steps,
            face_detector=detector,
            batch_size=batch_size,
        )

    # ------------------------------------------------------------------ public predictions

    def detect_faces(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The face detector's ``(F, 4)`` boxes and ``(F,)`` scores on an RGB photo."""
        boxes, scores = self.face_detector(image)
        return np.asarray(boxes, np.float64).reshape(-1, 4), np.asarray(scores, np.float64)

    def predict(
        self, image: ImageLike, boxes: Sequence[Sequence[float]] | np.ndarray | None = None
    ) -> list[Face]:
        """Every face of one photo.

        Args:
            image: A path, an ``np.ndarray`` (RGB ``(H, W, 3)``, gray ``(H, W)``, RGBA) or a
                PIL image (see :func:`sepbn.inference.image_input.as_rgb`).
            boxes: ``(F, 4)`` face boxes ``x_min, y_min, x_max, y_max`` in the photo's
                (display) pixels; ``None`` runs the face detector.

        Returns:
            One :class:`Face` per box, in the detector's order (best score first); empty
            when no face is found.
        """
        return self.predict_many([image], None if boxes is None else [boxes])[0]

    def predict_many(
        self,
        images: Sequence[ImageLike],
        boxes: Sequence[np.ndarray | Sequence[Sequence[float]] | None] | None = None,
        scores: Sequence[np.ndarray | None] | None = None,
    ) -> list[list[Face]]:
        """Every face of several photos, all crops batched together.

        Args:
            images: Photos, as for :meth:`predict`.
            boxes: Per photo, its face boxes or ``None`` (detect); ``None`` detects in all.
            scores: Per photo, the detector scores of given boxes (default 1.0 each).

        Returns:
            Per photo, its faces.
        """
        rgbs = [as_rgb(image) for image in images]
        all_boxes, all_scores = [], []
        for i, rgb in enumerate(rgbs):
            given = None if boxes is None else boxes[i]
            if given is None:
                found, found_scores = self.detect_faces(rgb)
            else:
                found = check_boxes(given, rgb.shape)
                known = None if scores is None else scores[i]
                found_scores = np.ones(len(found)) if known is None else np.asarray(known, float)
            all_boxes.append(found)
            all_scores.append(found_scores)
        landmarks, quality = self._landmarks(rgbs, all_boxes, with_quality=True)
        faces: list[list[Face]] = []
        start = 0
        for found, found_scores in zip(all_boxes, all_scores):
            stop = start + len(found)
            faces.append(
                [
                    Face(landmarks[j], found[j - start], float(found_scores[j - start]), quality[j])
                    for j in range(start, stop)
                ]
            )
            start = stop
        return faces

    def predict_boxes(
        self, image: np.ndarray, boxes: Sequence[Sequence[float]] | np.ndarray
    ) -> np.ndarray:
        """Landmarks of given face boxes as one array (no quality score, no detector).

        Args:
            image: ``(H, W, 3)`` uint8 RGB photo.
            boxes: ``(F, 4)`` face boxes ``x_min, y_min, x_max, y_max``.

        Returns:
            ``(F, L, 2)`` float64 landmarks, 0-based photo pixels.
        """
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        return self._landmarks([image], [boxes], with_quality=False)[0]

    # ------------------------------------------------------------------ the network passes

    def _landmarks(
        self, images: Sequence[np.ndarray], boxes: Sequence[np.ndarray], with_quality: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(F, L, 2)`` landmarks and ``(F,)`` quality (NaN without) of all boxes, in order."""
        owner = np.repeat(np.arange(len(images)), [len(b) for b in boxes])  # (F,) image index
        given = np.concatenate([np.reshape(b, (-1, 4)) for b in boxes]).astype(np.float64)
        current = given
        num_faces = len(current)
        if num_faces == 0:
            return np.zeros((0, self.protocol.num_points, 2)), np.zeros(0)
        with np.errstate(all="ignore"):  # a box beyond float range: _check_finite says so
            for step in range(self.refine_steps + 1):
                if step == self.refine_steps and with_quality:  # the final pass and its jitter
                    out = self._predict_crops(
                        images,
                        np.concatenate([owner, owner]),
                        np.concatenate([current, _jitter(current)]),
                    )
                    _check_finite(out, np.concatenate([given, given]))
                    landmarks, moved = out[:num_faces], out[num_faces:]
                    return landmarks, _quality(landmarks, moved)
                landmarks = self._predict_crops(images, owner, current)
                _check_finite(landmarks, given)  # else the next crop is made from a NaN box
                current = _tight_boxes(landmarks)
        return landmarks, np.full(num_faces, np.nan)

    def _predict_crops(
        self, images: Sequence[np.ndarray], owner: np.ndarray, boxes: np.ndarray
    ) -> np.ndarray:
        """Crop ``boxes[i]`` from ``images[owner[i]]``, run the network, map back to the photo."""
        out = []
        for start in range(0, len(boxes), self.batch_size):
            crops, matrices = [], []
            for i in range(start, min(start + self.batch_size, len(boxes))):
                crop, _, matrix = self.transform(images[owner[i]], None, boxes[i])
                crops.append(crop)
                matrices.append(matrix)
            normalized = self.backend(np.stack(crops))  # (B, L, 2), coordinates / S
            crop_px = normalized * self.transform.output_size
            out.append(apply_affine(invert_affine(np.stack(matrices)), crop_px))
        return np.concatenate(out)  # (F, L, 2)


def checkpoint_protocol(model: nn.Module, config: Any, protocol: str | None, path: Any) -> str:
    """The protocol to predict with: the asked one if the model has it, else the model's own.

    Raises:
        InferenceError: A cross-protocol model without that branch (or several branches and
            none asked for), or a protocol whose point count is not the model's.
    """
    branches = list(model.protocols) if is_cross_protocol(model) else []
    if branches:
        if protocol is None:
            if len(branches) > 1:
                raise InferenceError(
                    f"{path} has branches {branches}: choose one with protocol=... (--protocol)"
                )
            return branches[0]
        if protocol not in branches:
            raise InferenceError(f"{path} has no branch {protocol!r}; valid: {branches}")
        return protocol
    num_points = model_num_points(model)
    if protocol is not None:
        asked = get_protocol(protocol)
        if asked.num_points != num_points:
            raise InferenceError(
                f"{path} is a {num_points}-point model; protocol {protocol!r} has "
                f"{asked.num_points} points (valid: {_protocols_with(num_points)})"
            )
        return protocol
    hints = [d.protocol for d in config.data.train if d.protocol]
    try:
        return protocol_for_num_points(num_points, hints)
    except ValueError as exc:
        raise InferenceError(f"{path}: {exc}") from None


def _protocols_with(num_points: int) -> list[str]:
    return [name for name, p in PROTOCOLS.items() if p.num_points == num_points]


def _check_finite(landmarks: np.ndarray, boxes: np.ndarray) -> None:
    """Raise for the first face whose ``(F, L, 2)`` landmarks hold NaN or inf.

    Raises:
        InferenceError: Naming the face's given box.
    """
    bad = ~np.isfinite(landmarks).all(axis=(1, 2))
    if bad.any():
        box = ",".join(f"{v:g}" for v in boxes[int(np.argmax(bad))])
        raise InferenceError(
            f"the face box {box} gives landmarks that are not finite (NaN or inf): a box far "
            "larger than the photo, or a network that outputs NaN"
        )


def _tight_boxes(landmarks: np.ndarray) -> np.ndarray:
    """``(F, 4)`` tight boxes of ``(F, L, 2)`` landmarks (``box_from_landmarks`` per face)."""
    return np.concatenate([landmarks.min(axis=1), landmarks.max(axis=1)], axis=1)


def _jitter(boxes: np.ndarray) -> np.ndarray:
    """The boxes moved by ``_JITTER_SHIFT`` of their side and enlarged by ``_JITTER_SCALE``."""
    side = np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))[:, None]
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2 + _JITTER_SHIFT * side
    half = (boxes[:, 2:] - boxes[:, :2]) / 2 * _JITTER_SCALE
    return np.concatenate([centre - half, centre + half], axis=1)


def _quality(landmarks: np.ndarray, moved: np.ndarray) -> np.ndarray:
    """``exp(-d / QUALITY_SCALE)``, ``d`` the mean point distance per tight-box side."""
    boxes = _tight_boxes(landmarks)
    side = np.sqrt(np.clip((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), 1e-12, None))
    d = np.linalg.norm(landmarks - moved, axis=2).mean(axis=1) / side
    return np.exp(-d / QUALITY_SCALE)
