"""Faces followed through a video: the face detector now and then, landmarks every frame.

On a video the face moves little from one frame to the next, so the box each face is cropped
from can come from its previous landmarks (their tight box: the box convention the network was
trained on, so no re-crop is needed) instead of from the face detector, the most expensive
step. :class:`FaceTracker` runs the face detector only

* on the first frame, and every ``detect_every`` frames after the last detection (new faces
  entering the picture are found then);
* when a followed face's ``quality`` falls below ``min_quality`` (a cut, an occlusion, the
  face leaving the frame) or its box has left the frame: the detector runs again on that
  frame at once.

After a detection, each face found takes over the identity (``track_id``) of the followed
face whose box it overlaps most (intersection over union at least :data:`MATCH_IOU`,
greedily, best pairs first); the others get new identities, and followed faces that no
detection matched end.

**Smoothing.** A landmark network's answer moves by a little from frame to frame even on a
still face; with ``smooth`` each face's points (in every scheme) go through a One Euro filter
(:mod:`sepbn.inference.one_euro`) keyed by the frames' times. The next frame's crop is made
from the unsmoothed points, so the filter's lag never feeds back into the crops. ``quality``
and ``confidence`` are those of the unsmoothed prediction.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass

import numpy as np

from sepbn.inference.detector import LandmarkDetector
from sepbn.inference.errors import InferenceError
from sepbn.inference.face import Face, SchemePoints
from sepbn.inference.one_euro import BETA, D_CUTOFF, MIN_CUTOFF, LandmarkSmoother

__all__ = ["DETECT_EVERY", "MATCH_IOU", "MIN_QUALITY", "FaceTracker", "box_iou"]

#: Frames between two runs of the face detector while every face is followed well.
DETECT_EVERY = 10
#: A followed face below this quality sends the frame back to the face detector.
MIN_QUALITY = 0.2
#: Least overlap of a detection with a followed face's box to keep its ``track_id``.
MATCH_IOU = 0.3


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(A, B)`` intersection over union of ``(A, 4)`` and ``(B, 4)`` boxes."""
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


@dataclass
class _Track:
    track_id: int
    box: np.ndarray  # (4,) tight box of the last unsmoothed landmarks: the next crop
    score: float
    smoothers: dict[str, LandmarkSmoother]


class FaceTracker:
    """Follow the faces of one video, frame by frame (module docstring).

    Args:
        detector: The landmark network and its face detector.
        detect_every: Frames between face detections (1: every frame, no tracking).
        min_quality: A followed face below it makes the frame run the face detector.
        smooth: One Euro filter on each face's points.
        min_cutoff, beta, d_cutoff: The filter's parameters (:mod:`sepbn.inference.one_euro`).

    Raises:
        InferenceError: ``detect_every`` below 1, a ``min_quality`` outside ``[0, 1]``.
    """

    def __init__(
        self,
        detector: LandmarkDetector,
        detect_every: int = DETECT_EVERY,
        min_quality: float = MIN_QUALITY,
        smooth: bool = True,
        min_cutoff: float = MIN_CUTOFF,
        beta: float = BETA,
        d_cutoff: float = D_CUTOFF,
    ) -> None:
        if detect_every < 1:
            raise InferenceError(f"detect_every must be >= 1, got {detect_every}")
        if not 0.0 <= min_quality <= 1.0:
            raise InferenceError(f"min_quality must be in [0, 1], got {min_quality}")
        LandmarkSmoother(min_cutoff, beta, d_cutoff)  # a bad parameter fails here, not later
        self.detector = detector
        self.detect_every = int(detect_every)
        self.min_quality = float(min_quality)
        self.smooth = smooth
        self.filter_args = (min_cutoff, beta, d_cutoff)
        self.detections = 0  # face detector runs, for the curious and the benchmark
        self._tracks: list[_Track] = []
        self._ids = itertools.count()
        self._since_detection = 0

    def __call__(self, image: np.ndarray, t: float) -> list[Face]:
        """The faces of the next frame, ``t`` seconds into the video, with their ``track_id``.

        Args:
            image: ``(H, W, 3)`` uint8 RGB frame.
            t: Its time in seconds, increasing from frame to frame.
        """
        faces: list[Face] | None = None
        boxes = np.reshape([track.box for track in self._tracks], (-1, 4))
        height, width = image.shape[:2]
        inside = (
            (boxes[:, 2] > 0) & (boxes[:, 3] > 0) & (boxes[:, 0] < width) & (boxes[:, 1] < height)
        )
        if self._tracks and inside.all() and self._since_detection < self.detect_every:
            scores = np.array([track.score for track in self._tracks])
            (faces,) = self.detector.predict_many([image], [boxes], [scores], refine_steps=0)
            if min(face.quality for face in faces) < self.min_quality:
                faces = None  # lost one: find the faces again, on this frame
        if faces is None:
            boxes, scores = self.detector.detect_faces(image)
            self.detections += 1
            self._since_detection = 0
            (faces,) = self.detector.predict_many([image], [boxes], [scores])
            self._match([_tight_box(face.landmarks) for face in faces])
        self._since_detection += 1
        return [self._follow(track, face, t) for track, face in zip(self._tracks, faces)]

    def _match(self, boxes: list[np.ndarray]) -> None:
        """New tracks in the order of ``boxes``: each takes the id of the old track it
        overlaps most (greedy, IoU >= MATCH_IOU), or a new one."""
        old = self._tracks
        iou = box_iou(np.reshape(boxes, (-1, 4)), np.reshape([t.box for t in old], (-1, 4)))
        taken: dict[int, _Track] = {}
        for flat in np.argsort(-iou, axis=None):
            i, j = np.unravel_index(flat, iou.shape)
            if iou[i, j] < MATCH_IOU:
                break
            if int(i) not in taken and old[j] not in taken.values():
                taken[int(i)] = old[j]
        self._tracks = [
            taken.get(i) or _Track(next(self._ids), box, 1.0, {}) for i, box in enumerate(boxes)
        ]

    def _follow(self, track: _Track, face: Face, t: float) -> Face:
        """Move ``track`` to ``face`` and return the face as written: smoothed, with its id."""
        track.box, track.score = _tight_box(face.landmarks), face.score
        if not self.smooth:
            return dataclasses.replace(face, track_id=track.track_id)
        primary = self.detector.protocol.name
        landmarks = self._smoothed(track, primary, face.landmarks, t)
        schemes = {
            name: SchemePoints(
                landmarks if name == primary else self._smoothed(track, name, p.landmarks, t),
                p.confidence,
            )
            for name, p in face.schemes.items()
        }
        return dataclasses.replace(
            face, landmarks=landmarks, schemes=schemes, track_id=track.track_id
        )

    def _smoothed(self, track: _Track, scheme: str, points: np.ndarray, t: float) -> np.ndarray:
        if scheme not in track.smoothers:
            track.smoothers[scheme] = LandmarkSmoother(*self.filter_args)
        return track.smoothers[scheme](points, t)


def _tight_box(landmarks: np.ndarray) -> np.ndarray:
    return np.concatenate([landmarks.min(axis=0), landmarks.max(axis=0)])
