"""Rendering: the landmarks sit on the drawn features, and occlusion flags on the occluders."""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np
from scipy.ndimage import map_coordinates

from sepbn.data.synthetic import (
    SyntheticFaceConfig,
    make_synthetic_records,
    render_face,
    sample_face_params,
)


def test_landmarks_sit_on_the_drawn_features() -> None:
    """Local contrast around the landmarks peaks at zero offset, and pupils are dark."""
    cfg = SyntheticFaceConfig(occlusion_prob=0.0, domain_probs=(1.0, 0.0, 0.0), blur_prob=0.0)
    records = make_synthetic_records(50, "wflw", seed=21, config=cfg)
    contour = np.r_[0:33, 33:51, 55:60, 60:96]  # contour, brows, nose base, eyes, lips
    radius = 3
    contrast = np.zeros((2 * radius + 1, 2 * radius + 1))
    pupil_darker = []
    for r in records:
        gray = cv2.cvtColor(r.image, cv2.COLOR_RGB2GRAY).astype(np.float32)
        mean = cv2.blur(gray, (5, 5))
        std = np.sqrt(np.maximum(cv2.blur(gray * gray, (5, 5)) - mean * mean, 0.0))
        lm = r.landmarks[contour]
        for dy in range(-radius, radius + 1):
            for dx in range(-radius, radius + 1):
                at = [lm[:, 1] + dy, lm[:, 0] + dx]
                contrast[dy + radius, dx + radius] += map_coordinates(std, at, order=1).mean()
        pupils = map_coordinates(gray, [r.landmarks[96:98, 1], r.landmarks[96:98, 0]], order=1)
        cheeks = 0.5 * (r.landmarks[[4, 28]] + r.landmarks[[54, 28]])  # between jaw and nose
        skin = map_coordinates(gray, [cheeks[:, 1], cheeks[:, 0]], order=1)
        pupil_darker.append(pupils.mean() < 0.7 * skin.mean())
    peak = np.unravel_index(contrast.argmax(), contrast.shape)
    assert peak == (radius, radius), contrast
    ring2 = np.r_[contrast[radius - 2, :], contrast[radius + 2, :]].max()
    assert contrast[radius, radius] > 1.1 * ring2
    assert np.mean(pupil_darker) > 0.9


def test_occluded_flags_match_the_pixels() -> None:
    cfg = SyntheticFaceConfig(occlusion_prob=1.0)
    size = cfg.image_size
    covered_changed, n_covered = 0, 0
    for i in range(12):
        p = sample_face_params(2, i, cfg)
        face = render_face(p, size)
        clear = render_face(replace(p, occluders=()), size)
        lm = face.landmarks("300w")
        flags = face.occluded(lm)
        assert p.attributes["occlusion"] and face.occluder_mask is not None
        ij = np.round(lm).astype(int)
        inside = ((ij >= 0) & (ij < size)).all(1)
        changed = np.abs(face.image.astype(int) - clear.image.astype(int)).sum(-1)
        far = cv2.distanceTransform((face.occluder_mask == 0).astype(np.uint8), cv2.DIST_L2, 5)
        for k in np.flatnonzero(inside):
            x, y = ij[k]
            if flags[k]:
                n_covered += 1
                covered_changed += changed[y, x] > 0
            elif far[y, x] > 10:  # beyond the reach of the blur
                assert changed[y, x] == 0
    assert n_covered > 20 and covered_changed / n_covered > 0.9
