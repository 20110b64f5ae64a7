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

**Confidence per point.** Each landmark gets its own score from how much it moves between
views of the face:

    confidence_l = exp(-d_l / 0.05),   d_l = mean_v ||p_l - p^v_l|| / s

over the views ``v``: with ``confidence="full"`` (the default) the shifted crop of
``quality``, a crop shifted the other way by 8% and shrunk to 0.9, and the mirrored crop
(its prediction flipped back, points reordered by the scheme's flip permutation), all in
the final pass's batch (three crops per face more than ``quality`` alone needs); with
``confidence="shift"`` only the shifted crop (no extra work; then ``quality`` is the
geometric mean of the point confidences). A point the network is sure of (a visible eye
corner) stays put when the crop moves; a guessed one (an occluded or blurred contour point)
moves with the crop. On real faces ``"full"`` ranks the points by their error with Spearman
0.35 (300-W common) and 0.53 (WFLW test), ``"shift"`` 0.19 and 0.43 (docs/benchmarks.md §9.2,
``benchmarks/bench_confidence.py``).

**Several schemes from one model.** A cross-protocol (CNT) model has one branch per landmark
scheme on a shared backbone; ``protocols=["300w", "wider5"]`` (``--protocol all``) runs all
its branches on each crop in one backbone pass and gives every face its points in each
scheme (:attr:`Face.schemes`). The crops are refined around the points of the detector's
``protocol`` (with ``from_checkpoint``: the scheme with the most points asked for), whose
points are also :attr:`Face.landmarks`. The detector of a model with several branches runs
all of them on every crop (the backbone once; each branch is one convolution and its head),
so that any of its schemes can be asked for per call.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from sepbn.data.protocols import LandmarkProtocol, get_protocol
from sepbn.data.transforms import FaceCropTransform, apply_affine, invert_affine
from sepbn.inference.backends import (
    BranchesBackend,
    LandmarkBackend,
    OnnxBackend,
    TorchBackend,
    TorchScriptBackend,
    check_finite_weights,
    is_torchscript,
    resolve_device,
)
from sepbn.inference.boxes import check_boxes
from sepbn.inference.errors import InferenceError
from sepbn.inference.face import Face, SchemePoints
from sepbn.inference.face_detection import (
    DEFAULT_FACE_DETECTOR,
    FaceDetector,
    build_face_detector,
)
from sepbn.inference.image_input import ImageLike, as_rgb
from sepbn.inference.schemes import (
    checkpoint_protocol,
    parse_protocols,
    protocols_with,
    richest_scheme,
)
from sepbn.models import is_cross_protocol

__all__ = [
    "CONFIDENCE_MODES",
    "QUALITY_SCALE",
    "Face",
    "LandmarkDetector",
    "SchemePoints",
    "check_boxes",  # re-exported from sepbn.inference.boxes
]

#: ``d`` (mean disagreement per box side) at which the quality is 1/e.
QUALITY_SCALE = 0.05
_JITTER_SHIFT = 0.08  # of the box side, in x and y
_JITTER_SCALE = 1.10
_BACK_SCALE = 0.90  # the crop shifted the other way is shrunk
#: ``confidence=``: ``"full"``: shifted, back-shifted and mirrored crops; ``"shift"``: the
#: shifted crop of ``quality`` alone (no extra network work).
CONFIDENCE_MODES = ("full", "shift")


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
        protocols: The schemes :meth:`predict` gives each face by default (a cross-protocol
            model's branches; see the module docstring); ``None``: ``protocol`` alone.
        confidence: How the per-point confidence is measured (module docstring): ``"full"``
            (three more crops per face) or ``"shift"`` (none more).

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
        protocols: Sequence[str] | None = None,
        confidence: str = "full",
    ) -> None:
        try:
            self.protocol: LandmarkProtocol = get_protocol(protocol)
        except (KeyError, ValueError) as exc:
            raise InferenceError(str(exc).strip("'\"")) from None
        heads: dict[str, int] | None = getattr(model, "heads", None)
        if isinstance(model, nn.Module):
            resolved = resolve_device(device)
            if is_cross_protocol(model) and len(model.protocols) > 1:
                backend: LandmarkBackend = BranchesBackend(model, resolved)
            elif is_cross_protocol(model):  # one branch: the plain model of it
                backend = TorchBackend(model.single_protocol(model.protocols[0]), resolved)
            else:
                backend = TorchBackend(model, resolved)
        else:
            backend = model
        heads = dict(heads or {self.protocol.name: backend.num_points})
        if self.protocol.name not in heads:
            raise InferenceError(
                f"the model has no branch for protocol {self.protocol.name!r}; valid: {list(heads)}"
            )
        self.heads: dict[str, int] = dict(heads)
        self.protocols = parse_protocols(protocols, list(heads)) or [self.protocol.name]
        if heads[self.protocol.name] != self.protocol.num_points:
            raise InferenceError(
                f"the model predicts {heads[self.protocol.name]} points, protocol "
                f"{self.protocol.name!r} has {self.protocol.num_points}; valid: "
                f"{protocols_with(heads[self.protocol.name])}"
            )
        if refine_steps < 0:
            raise InferenceError(f"refine_steps must be >= 0, got {refine_steps}")
        if batch_size < 1:
            raise InferenceError(f"batch_size must be >= 1, got {batch_size}")
        if confidence not in CONFIDENCE_MODES:
            raise InferenceError(
                f"unknown confidence {confidence!r}; valid: {list(CONFIDENCE_MODES)}"
            )
        self.confidence = confidence
        self.backend = backend
        self.transform = FaceCropTransform(self.protocol, input_size, box_scale, augment=None)
        self.refine_steps = int(refine_steps)
        self.batch_size = int(batch_size)
        self._face_detector = face_detector

    @property
    def model(self) -> nn.Module:
        """The PyTorch network (not available with the ONNX backend); of a cross-protocol
        model with several branches, the whole model."""
        if not isinstance(self.backend, (TorchBackend, BranchesBackend)):
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
        protocol: str | Sequence[str] | None = None,
        device: str | torch.device | None = None,
        refine_steps: int = 1,
        detector: str | FaceDetector | None = DEFAULT_FACE_DETECTOR,
        backend: str | None = None,
        batch_size: int = 64,
        confidence: str = "full",
    ) -> LandmarkDetector:
        """Load a ``sepbn train`` checkpoint (its embedded config gives size and crop).

        Args:
            path: The checkpoint (``last.pt`` or ``best.pt``), or a file written by
                ``sepbn export`` (ONNX or TorchScript).
            protocol: Needed for a cross-protocol (CNT stage 1) checkpoint with several
                branches; otherwise the model's only protocol (it is checked against the
                model's point count). ``"all"``, a comma-separated list (``"wflw,300w"``) or a
                list asks for several schemes (:attr:`Face.schemes`); the one with the most
                points is the detector's ``protocol``.
            device: Where the model runs; ``None`` = CUDA when available, else the CPU.
            refine_steps: See the class docstring.
            detector: The face detector (a registry name or an instance), see the class.
            backend: ``"torch"``, ``"onnx"`` or ``"torchscript"``; ``None``: ``"onnx"`` for a
                ``.onnx`` file, ``"torchscript"`` for a TorchScript archive, else ``"torch"``.
            batch_size: Crops per network call.
            confidence: See the class docstring.

        Raises:
            CheckpointError: The file is missing, not a sepbn checkpoint, or corrupt.
            InferenceError: A protocol that does not fit the model, a missing device, weights
                that hold NaN or inf.
        """
        asked = protocol if isinstance(protocol, (str, type(None))) else ",".join(protocol)
        several = asked is not None and (asked == "all" or "," in asked)
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
            names = list(exported.heads)
            if several:
                schemes = parse_protocols(asked, names) or names
            elif asked is not None and asked not in names:
                raise InferenceError(f"{path} was exported for protocol(s) {names}, not {asked!r}")
            else:
                schemes = [asked or meta["protocol"]]
            return cls(
                exported,
                richest_scheme(schemes, exported.heads),
                int(meta["input_size"]),
                float(meta["box_scale"]),
                refine_steps=refine_steps,
                face_detector=detector,
                batch_size=batch_size,
                protocols=schemes,
                confidence=confidence,
            )
        if backend != "torch":
            raise InferenceError(
                f"unknown backend {backend!r}; valid: ['torch', 'onnx', 'torchscript']"
            )
        from sepbn.engine.model_builder import load_model_from_checkpoint

        resolved = resolve_device(device)  # before loading, so a bad device fails fast
        model, config = load_model_from_checkpoint(path, map_location="cpu")
        check_finite_weights(model, path)
        if several:
            if not is_cross_protocol(model):
                raise InferenceError(
                    f"{path} has one landmark scheme; --protocol {asked} needs a cross-protocol "
                    "(CNT stage 1) checkpoint"
                )
            schemes = parse_protocols(asked, model.protocols) or model.protocols
            primary = richest_scheme(schemes, model.heads)
        else:
            primary = checkpoint_protocol(model, config, asked, path)
            schemes = [primary]
        return cls(
            model,
            primary,
            input_size=config.model.input_size,
            box_scale=config.data.box_scale,
            device=resolved,
            refine_steps=refine_steps,
            face_detector=detector,
            batch_size=batch_size,
            protocols=schemes,
            confidence=confidence,
        )

    # ------------------------------------------------------------------ public predictions

    def detect_faces(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The face detector's ``(F, 4)`` boxes and ``(F,)`` scores on an RGB photo."""
        boxes, scores = self.face_detector(image)
        return np.asarray(boxes, np.float64).reshape(-1, 4), np.asarray(scores, np.float64)

    def predict(
        self,
        image: ImageLike,
        boxes: Sequence[Sequence[float]] | np.ndarray | None = None,
        protocols: str | Sequence[str] | None = None,
    ) -> list[Face]:
        """Every face of one photo.

        Args:
            image: A path, an ``np.ndarray`` (RGB ``(H, W, 3)``, gray ``(H, W)``, RGBA) or a
                PIL image (see :func:`sepbn.inference.image_input.as_rgb`).
            boxes: ``(F, 4)`` face boxes ``x_min, y_min, x_max, y_max`` in the photo's
                (display) pixels; ``None`` runs the face detector.
            protocols: The schemes each face gets in :attr:`Face.schemes` (``"all"``,
                ``"wflw,300w"`` or a list, of the model's :attr:`heads`); ``None``: the
                detector's ``protocols``.

        Returns:
            One :class:`Face` per box, in the detector's order (best score first); empty
            when no face is found.
        """
        return self.predict_many([image], None if boxes is None else [boxes], None, protocols)[0]

    def predict_many(
        self,
        images: Sequence[ImageLike],
        boxes: Sequence[np.ndarray | Sequence[Sequence[float]] | None] | None = None,
        scores: Sequence[np.ndarray | None] | None = None,
        protocols: str | Sequence[str] | None = None,
        refine_steps: int | None = None,
    ) -> list[list[Face]]:
        """Every face of several photos, all crops batched together.

        Args:
            images: Photos, as for :meth:`predict`.
            boxes: Per photo, its face boxes or ``None`` (detect); ``None`` detects in all.
            scores: Per photo, the detector scores of given boxes (default 1.0 each).
            protocols: As for :meth:`predict`.
            refine_steps: Re-crops for this call (default: the detector's); 0 for boxes that
                are already the tight box of the face's landmarks (tracking on a video).

        Returns:
            Per photo, its faces.
        """
        schemes = parse_protocols(protocols, list(self.heads)) or self.protocols
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
        steps = self.refine_steps if refine_steps is None else int(refine_steps)
        points, quality, confidence = self._landmarks(rgbs, all_boxes, True, steps)
        primary = self.protocol.name
        own = schemes == [primary]  # only the detector's scheme: no Face.schemes
        faces: list[list[Face]] = []
        start = 0
        for found, found_scores in zip(all_boxes, all_scores):
            faces.append(
                [
                    Face(
                        points[primary][j],
                        box,
                        float(score),
                        quality[j],
                        confidence[primary][j],
                        {}
                        if own
                        else {n: SchemePoints(points[n][j], confidence[n][j]) for n in schemes},
                    )
                    for j, box, score in zip(range(start, start + len(found)), found, found_scores)
                ]
            )
            start += len(found)
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
        return self._landmarks([image], [boxes], False, self.refine_steps)[0][self.protocol.name]

    # ------------------------------------------------------------------ the network passes

    def _landmarks(
        self,
        images: Sequence[np.ndarray],
        boxes: Sequence[np.ndarray],
        with_quality: bool,
        refine_steps: int,
    ) -> tuple[dict[str, np.ndarray], np.ndarray, dict[str, np.ndarray]]:
        """All boxes, in order: ``{scheme: (F, L_p, 2)}`` landmarks, ``(F,)`` quality and
        ``{scheme: (F, L_p)}`` point confidences (NaN without ``with_quality``)."""
        owner = np.repeat(np.arange(len(images)), [len(b) for b in boxes])  # (F,) image index
        given = np.concatenate([np.reshape(b, (-1, 4)) for b in boxes]).astype(np.float64)
        current = given
        num_faces = len(current)
        primary = self.protocol.name
        if num_faces == 0:
            empty = {n: np.zeros((0, L, 2)) for n, L in self.heads.items()}
            return empty, np.zeros(0), {n: np.zeros((0, L)) for n, L in self.heads.items()}
        with np.errstate(all="ignore"):  # a box beyond float range: _check_finite says so
            for step in range(refine_steps + 1):
                if step == refine_steps and with_quality:  # the final pass and its views
                    views = [current, _jitter(current)]
                    if self.confidence == "full":
                        views += [_jitter(current, -1.0, _BACK_SCALE), current]
                    mirror = np.arange(len(views) * num_faces) >= 3 * num_faces  # the last
                    out = self._predict_crops(
                        images, np.tile(owner, len(views)), np.concatenate(views), mirror
                    )
                    _check_finite(out, np.tile(given, (len(views), 1)))
                    points = {n: v[:num_faces] for n, v in out.items()}
                    side = _box_side(points[primary])
                    confidence = {
                        n: _point_confidence(v[:num_faces], v[num_faces:], side)
                        for n, v in out.items()
                    }
                    quality = _quality(points[primary], out[primary][num_faces : 2 * num_faces])
                    return points, quality, confidence
                points = self._predict_crops(images, owner, current)
                _check_finite(points, given)  # else the next crop is made from a NaN box
                current = _tight_boxes(points[primary])
        nan = {n: np.full(v.shape[:2], np.nan) for n, v in points.items()}
        return points, np.full(num_faces, np.nan), nan

    def _predict_crops(
        self,
        images: Sequence[np.ndarray],
        owner: np.ndarray,
        boxes: np.ndarray,
        mirror: np.ndarray | None = None,
    ) -> dict[str, np.ndarray]:
        """Crop ``boxes[i]`` from ``images[owner[i]]``, run the network, map back to the photo:
        ``{scheme: (F, L_p, 2)}``. Where ``mirror[i]``, the crop is flipped left-right and
        the points flipped back (mirrored and reordered by the scheme's flip permutation)."""
        out: dict[str, list[np.ndarray]] = {}
        size = self.transform.output_size
        for start in range(0, len(boxes), self.batch_size):
            crops, matrices = [], []
            stop = min(start + self.batch_size, len(boxes))
            flipped = np.zeros(stop - start, bool) if mirror is None else mirror[start:stop]
            for i in range(start, stop):
                crop, _, matrix = self.transform(images[owner[i]], None, boxes[i])
                crops.append(np.ascontiguousarray(crop[:, ::-1]) if flipped[i - start] else crop)
                matrices.append(matrix)
            result = self.backend(np.stack(crops))  # (B, L, 2) or {p: (B, L_p, 2)}, / S
            branches = result if isinstance(result, dict) else {self.protocol.name: result}
            back = invert_affine(np.stack(matrices))
            for name, normalized in branches.items():
                crop_px = normalized * size
                if flipped.any():
                    crop_px[flipped] = get_protocol(name).flip(crop_px[flipped], size)
                out.setdefault(name, []).append(apply_affine(back, crop_px))
        return {name: np.concatenate(parts) for name, parts in out.items()}


def _check_finite(points: dict[str, np.ndarray], boxes: np.ndarray) -> None:
    """Raise for the first face whose ``{scheme: (F, L_p, 2)}`` landmarks hold NaN or inf.

    Raises:
        InferenceError: Naming the face's given box.
    """
    bad = np.zeros(len(boxes), dtype=bool)
    for landmarks in points.values():
        bad |= ~np.isfinite(landmarks).all(axis=(1, 2))
    if bad.any():
        box = ",".join(f"{v:g}" for v in boxes[int(np.argmax(bad))])
        raise InferenceError(
            f"the face box {box} gives landmarks that are not finite (NaN or inf): a box far "
            "larger than the photo, or a network that outputs NaN"
        )


def _tight_boxes(landmarks: np.ndarray) -> np.ndarray:
    """``(F, 4)`` tight boxes of ``(F, L, 2)`` landmarks (``box_from_landmarks`` per face)."""
    return np.concatenate([landmarks.min(axis=1), landmarks.max(axis=1)], axis=1)


def _jitter(boxes: np.ndarray, direction: float = 1.0, scale: float = _JITTER_SCALE) -> np.ndarray:
    """The boxes moved by ``direction * _JITTER_SHIFT`` of their side, in x and y, and their
    sides times ``scale``."""
    side = np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))[:, None]
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2 + direction * _JITTER_SHIFT * side
    half = (boxes[:, 2:] - boxes[:, :2]) / 2 * scale
    return np.concatenate([centre - half, centre + half], axis=1)


def _box_side(landmarks: np.ndarray) -> np.ndarray:
    """``(F,)`` side ``sqrt(w h)`` of the tight box of each face's ``(F, L, 2)`` landmarks."""
    boxes = _tight_boxes(landmarks)
    return np.sqrt(np.clip((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), 1e-12, None))


def _quality(landmarks: np.ndarray, moved: np.ndarray) -> np.ndarray:
    """``exp(-d / QUALITY_SCALE)``, ``d`` the mean point distance per tight-box side."""
    d = np.linalg.norm(landmarks - moved, axis=2).mean(axis=1) / _box_side(landmarks)
    return np.exp(-d / QUALITY_SCALE)


def _point_confidence(landmarks: np.ndarray, views: np.ndarray, side: np.ndarray) -> np.ndarray:
    """``(F, L)`` ``exp(-d_l / QUALITY_SCALE)``, ``d_l`` each point's mean distance per ``side``
    to its predictions in the other views (``(V F, L, 2)``, view after view)."""
    moved = views.reshape(-1, *landmarks.shape)  # (V, F, L, 2)
    d = np.linalg.norm(landmarks - moved, axis=3).mean(axis=0) / side[:, None]
    return np.exp(-d / QUALITY_SCALE)
