"""FaceParams.mirrored: the mirrored parameters render the mirror image."""

from __future__ import annotations

import numpy as np

from sepbn.data.protocols import PROTOCOLS
from sepbn.data.synthetic import SyntheticFaceConfig, render_face, sample_face_params


def test_mirrored_parameters_render_the_mirror_image() -> None:
    cfg = SyntheticFaceConfig(noise_std=0.0, occlusion_prob=0.6)
    size = cfg.image_size
    flip = PROTOCOLS["300w"].flip
    for i in range(6):
        p = sample_face_params(9, i, cfg)
        a, b = render_face(p, size), render_face(p.mirrored(size), size)
        np.testing.assert_allclose(flip(a.landmarks("300w"), size), b.landmarks("300w"), atol=1e-9)
        assert b.params.domain == (0, 2, 1)[p.domain]
        diff = np.abs(a.image[:, ::-1].astype(int) - b.image.astype(int))
        assert diff.mean() < 0.2 and np.percentile(diff, 99) <= 2
        occluded = a.occluded(a.landmarks("300w"))
        np.testing.assert_array_equal(occluded[list(PROTOCOLS["300w"].flip_perm)],
                                      b.occluded(b.landmarks("300w")))  # fmt: skip
