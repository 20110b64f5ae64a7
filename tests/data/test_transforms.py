"""Face crop + augmentation in one warp: geometry, pixel convention, flip, photometric."""

from __future__ import annotations

import cmath
import math

import cv2
import numpy as np
import pytest
import torch

from sepbn.data.protocols import get_protocol
from sepbn.data.transforms import (
    AugmentConfig,
    FaceCropTransform,
    apply_affine,
    compose_affine,
    crop_matrix,
    invert_affine,
    is_mirrored,
    required_margin,
)

P300 = get_protocol("300w")


def _reference_point(p, box, size, box_scale, angle, shear, flip, offsets):
    """One point through the steps of paper Sec. V-A, written out with complex numbers."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    x0, y0, x1, y1 = (
        x0 + offsets[0] * w,
        y0 + offsets[1] * h,
        x1 + offsets[2] * w,
        y1 + offsets[3] * h,
    )
    centre = complex((x0 + x1) / 2, (y0 + y1) / 2)
    side = max(x1 - x0, y1 - y0) * box_scale
    z = complex(*p) - centre  # relative to the (jittered) box centre
    z = complex(z.real + shear * z.imag, z.imag)  # horizontal shear
    z = z * cmath.exp(1j * math.radians(angle))  # rotation
    z = z * size / side  # square box -> S pixels
    z = z + complex((size - 1) / 2, (size - 1) / 2)  # box centre -> crop centre
    if flip:
        z = complex(size - 1 - z.real, z.imag)
    return z.real, z.imag


def _landmarks(rng, n=68, centre=(150.0, 160.0), spread=40.0):
    return np.asarray(centre) + rng.uniform(-spread, spread, size=(n, 2))


def test_crop_matrix_hand_computed():
    box = np.array([10.0, 20.0, 110.0, 120.0])
    # Side 100 -> 100 px: a pure shift taking the box centre (60, 70) to (49.5, 49.5).
    np.testing.assert_allclose(
        crop_matrix(box, 100, box_scale=1.0), [[1, 0, -10.5], [0, 1, -20.5]], atol=1e-12
    )
    # Twice the window at the same output: scale 0.5, centre still to 49.5.
    np.testing.assert_allclose(
        crop_matrix(box, 100, box_scale=2.0), [[0.5, 0, 19.5], [0, 0.5, 14.5]], atol=1e-12
    )
    # Mirror: x -> 99 - x.
    np.testing.assert_allclose(
        crop_matrix(box, 100, box_scale=1.0, flip=True), [[-1, 0, 109.5], [0, 1, -20.5]]
    )
    # A wide box is squared by its width, around its centre.
    m = crop_matrix(np.array([0.0, 0.0, 200.0, 50.0]), 100, box_scale=1.0)
    np.testing.assert_allclose(apply_affine(m, np.array([[100.0, 25.0]])), [[49.5, 49.5]])
    assert m[0, 0] == pytest.approx(0.5)


def test_crop_matrix_matches_stepwise_reference():
    rng = np.random.default_rng(1)
    for _ in range(50):
        box = np.array([30.0, 40.0, 30.0 + rng.uniform(20, 200), 40.0 + rng.uniform(20, 200)])
        params = dict(
            box_scale=rng.uniform(0.8, 1.6),
            angle=rng.uniform(-40, 40),
            shear=rng.uniform(-0.3, 0.3),
            flip=bool(rng.random() < 0.5),
            corner_offsets=rng.uniform(-0.15, 0.15, size=4),
        )
        size = int(rng.integers(32, 256))
        pts = rng.uniform(0, 300, size=(7, 2))
        m = crop_matrix(box, size, **params)
        expected = [
            _reference_point(
                p, box, size, params["box_scale"], params["angle"], params["shear"],
                params["flip"], params["corner_offsets"],
            )
            for p in pts
        ]  # fmt: skip
        np.testing.assert_allclose(apply_affine(m, pts), expected, atol=1e-9)
        assert is_mirrored(m) == params["flip"]


@pytest.mark.parametrize("seed", range(6))
def test_bright_pixel_lands_on_transformed_landmark(seed):
    """cv2.warpAffine's pixel-centre convention and ours agree (a delta image)."""
    rng = np.random.default_rng(seed)
    image = np.zeros((240, 240, 3), np.uint8)
    px, py = int(rng.integers(100, 140)), int(rng.integers(100, 140))
    image[py, px] = 255
    landmarks = np.tile(np.array([[px, py]], dtype=np.float64), (68, 1))
    box = np.array([90.0, 95.0, 150.0, 160.0])  # 65 px -> upsampled, so the tent is resolved
    t = FaceCropTransform(P300, output_size=128, augment=AugmentConfig())
    crop, pts, _ = t(image, landmarks, box, rng=rng)
    w = crop[..., 0].astype(np.float64)
    ys, xs = np.mgrid[: w.shape[0], : w.shape[1]]
    centroid = np.array([(w * xs).sum(), (w * ys).sum()]) / w.sum()
    np.testing.assert_allclose(centroid, pts[0], atol=0.1)
    iy, ix = np.unravel_index(np.argmax(w), w.shape)
    assert abs(ix - pts[0, 0]) <= 0.5 + 1e-9 and abs(iy - pts[0, 1]) <= 0.5 + 1e-9


def test_warp_samples_linear_ramp_at_inverse_mapped_pixel_centres():
    """Every crop pixel equals the source ramp at the inverse-mapped pixel centre."""
    ys, xs = np.mgrid[:300, :300].astype(np.float64)
    ramps = [0.5 * xs + 0.3 * ys + 10, 0.2 * xs + 0.6 * ys + 5, 0.7 * xs + 0.1 * ys + 2]
    image = np.stack(ramps, axis=-1).round().clip(0, 255).astype(np.uint8)
    t = FaceCropTransform(P300, output_size=64, augment=AugmentConfig(flip_prob=0.5))
    for seed in range(4):
        crop, _, m = t(
            image, None, np.array([100.0, 110.0, 190.0, 200.0]), rng=np.random.default_rng(seed)
        )
        q = np.stack(np.meshgrid(np.arange(64.0), np.arange(64.0)), axis=-1).reshape(-1, 2)
        src = apply_affine(invert_affine(m), q)
        inside = ((src > 1) & (src < 298)).all(axis=1)
        sx, sy = src[inside].T
        # Bilinear interpolation of the rounded ramp is within 0.5 of the exact ramp.
        want = np.stack(
            [0.5 * sx + 0.3 * sy + 10, 0.2 * sx + 0.6 * sy + 5, 0.7 * sx + 0.1 * sy + 2], -1
        )
        got = crop.reshape(-1, 3)[inside].astype(np.float64)
        assert inside.mean() > 0.9
        assert np.abs(got - want).max() <= 1.01


def test_crop_inverse_map_round_trip_with_flip_order():
    rng = np.random.default_rng(0)
    t = FaceCropTransform(P300, augment=AugmentConfig())
    image = np.zeros((320, 320, 3), np.uint8)
    mirrored = 0
    for _ in range(40):
        lms = _landmarks(rng)
        _, crop_pts, m = t(image, lms, np.array([110.0, 120.0, 190.0, 200.0]), rng=rng)
        order = t.point_order(m)
        back = apply_affine(invert_affine(m), crop_pts)
        assert np.abs(back - lms[order]).max() < 1e-3
        # Semantic order in the original image: undo the permutation (an involution).
        assert np.abs(back[order] - lms).max() < 1e-3
        mirrored += is_mirrored(m)
    assert 5 < mirrored < 35  # flip probability 0.5 is in use


def test_flip_uses_protocol_permutation_and_mirrors_pixels():
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, size=(200, 220, 3), dtype=np.uint8)
    lms = _landmarks(rng, centre=(110, 100), spread=30)
    box = np.array([70.0, 60.0, 150.0, 140.0])
    plain = FaceCropTransform(P300, output_size=96)
    flip_only = AugmentConfig(rotation=0, box_jitter=0, shear=0, flip_prob=1.0)
    flipped = FaceCropTransform(P300, output_size=96, augment=flip_only)
    crop0, pts0, _ = plain(image, lms, box)
    crop1, pts1, m1 = flipped(image, lms, box, rng=rng)
    np.testing.assert_allclose(pts1, P300.flip(pts0, width=96), atol=1e-9)
    np.testing.assert_array_equal(flipped.point_order(m1), P300.flip_perm)
    # Same sampling grid mirrored: pixel columns reversed (up to interpolation rounding).
    assert np.abs(crop1.astype(int) - crop0[:, ::-1].astype(int)).max() <= 1


def test_sampled_ranges_and_cache_margin_bound():
    rng = np.random.default_rng(0)
    box = np.array([100.0, 100.0, 180.0, 200.0])  # s0 = 100
    aug = AugmentConfig()
    t = FaceCropTransform(P300, output_size=128, augment=aug)
    plain = crop_matrix(box, 128, t.box_scale)
    angles, flips, extents = [], [], []
    corners = np.array([[-0.5, -0.5], [127.5, -0.5], [127.5, 127.5], [-0.5, 127.5]])
    for _ in range(3000):
        m = t.sample_matrix(box, rng)
        lin = m[:, :2] * np.array([[-1.0, 1.0], [1.0, 1.0]]) if is_mirrored(m) else m[:, :2]
        # The first column is k (cos, sin) whatever the shear: its angle is the rotation.
        angles.append(math.degrees(math.atan2(lin[1, 0], lin[0, 0])))
        flips.append(is_mirrored(m))
        src = apply_affine(invert_affine(m), corners) - np.array([140.0, 150.0])
        extents.append(np.abs(src).max() * 2 / 100.0)  # window side in box sides
    angles = np.array(angles)
    assert angles.min() >= -25 - 1e-9 and angles.max() <= 25 + 1e-9
    assert angles.min() < -23 and angles.max() > 23
    assert 0.45 < np.mean(flips) < 0.55
    bound = required_margin(aug, t.box_scale)
    assert bound == pytest.approx(
        0.3 + 1.3 * 1.25 * (math.cos(0.4363) + math.sin(0.4363)) * 1.1, abs=1e-3
    )
    assert max(extents) <= bound and max(extents) > 0.75 * bound
    # Without augmentation the window is box_scale box sides and the crop is deterministic.
    assert required_margin(None, 1.25) == 1.25
    np.testing.assert_allclose(FaceCropTransform(P300).sample_matrix(box), plain)


def test_deterministic_and_reproducible():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(300, 300, 3), dtype=np.uint8)
    lms = _landmarks(rng)
    box = np.array([110.0, 120.0, 190.0, 200.0])
    t_eval = FaceCropTransform(P300)
    a, b = t_eval(image, lms, box), t_eval(image, lms, box, rng=np.random.default_rng(5))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    t = FaceCropTransform(P300, augment=AugmentConfig())
    c = t(image, lms, box, rng=np.random.default_rng(7))
    d = t(image, lms, box, rng=np.random.default_rng(7))
    e = t(image, lms, box, rng=np.random.default_rng(8))
    for x, y in zip(c, d):
        np.testing.assert_array_equal(x, y)
    assert not np.allclose(c[2], e[2])
    with pytest.raises(ValueError, match="needs an rng"):
        t(image, lms, box)


def test_invalid_points_zeroed_and_permuted_with_flip():
    rng = np.random.default_rng(0)
    image = np.zeros((300, 300, 3), np.uint8)
    lms = _landmarks(rng)
    valid = np.ones(68, bool)
    valid[[0, 36]] = False  # jaw start and left eye corner; mirrors are 16 and 45
    aug = AugmentConfig(flip_prob=1.0)
    _, pts, _ = FaceCropTransform(P300, augment=aug)(
        image, lms, np.array([110, 120, 190, 200.0]), valid, rng
    )
    assert (pts[[16, 45]] == 0).all()
    assert (pts[[0, 36]] != 0).all()


def test_photometric_is_off_by_default_and_keeps_geometry():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(300, 300, 3), dtype=np.uint8)
    image = np.ascontiguousarray(np.repeat(np.repeat(image[::6, ::6], 6, 0), 6, 1))  # blocky
    lms = _landmarks(rng)
    box = np.array([110.0, 120.0, 190.0, 200.0])
    assert not AugmentConfig().photometric
    base = FaceCropTransform(P300, augment=AugmentConfig())
    c0, p0, m0 = base(image, lms, box, rng=np.random.default_rng(4))

    def run(**kw):
        t = FaceCropTransform(P300, augment=AugmentConfig(**kw))
        crop, pts, m = t(image, lms, box, rng=np.random.default_rng(4))
        np.testing.assert_array_equal(m, m0)  # photometric draws come after geometry
        np.testing.assert_array_equal(pts, p0)
        return crop

    gray = run(grayscale_prob=1.0)
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    assert not (c0[..., 0] == c0[..., 1]).all()
    bright = run(brightness=0.3)
    mid = (c0 > 80) & (c0 < 170)  # away from clipping the shift is one constant
    shift = bright.astype(int)[mid] - c0[mid]
    assert shift.min() == shift.max() != 0
    blurred = run(blur_prob=1.0, blur_sigma=(1.5, 1.5))
    np.testing.assert_array_equal(blurred, cv2.GaussianBlur(c0, (0, 0), sigmaX=1.5))
    occluded = run(occlusion_prob=1.0, occlusion_size=(0.3, 0.3))
    changed = (occluded != c0).any(axis=-1)
    ys, xs = np.nonzero(changed)
    patch = occluded[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    side = int(0.3 * 128)
    assert patch.shape[:2] == (side, side) and (patch == patch[0, 0]).all()


def test_affine_helpers_batched_torch_and_inverse():
    rng = np.random.default_rng(0)
    mats = np.stack(
        [
            crop_matrix(
                np.array([0, 0, 50.0, 60]), 64, 1.2, *rng.uniform(-30, 30, 1), 0.1, bool(i % 2)
            )
            for i in range(5)
        ]
    )
    pts = rng.uniform(0, 60, size=(5, 11, 2))
    loop = np.stack([pts[i] @ mats[i, :, :2].T + mats[i, :, 2] for i in range(5)])
    np.testing.assert_allclose(apply_affine(mats, pts), loop, atol=1e-12)
    np.testing.assert_allclose(apply_affine(mats[0], pts), pts @ mats[0, :, :2].T + mats[0, :, 2])
    inv = invert_affine(mats)
    np.testing.assert_allclose(apply_affine(inv, apply_affine(mats, pts)), pts, atol=1e-9)
    eye = compose_affine(inv, mats)
    np.testing.assert_allclose(eye, np.tile([[1.0, 0, 0], [0, 1, 0]], (5, 1, 1)), atol=1e-12)
    out = apply_affine(torch.from_numpy(mats), torch.from_numpy(pts).float())
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), loop, atol=1e-3)
    np.testing.assert_allclose(invert_affine(torch.from_numpy(mats)).numpy(), inv, atol=1e-12)
    np.testing.assert_array_equal(is_mirrored(mats), [False, True, False, True, False])


def test_errors_name_the_value():
    with pytest.raises(ValueError, match="rotation must be in"):
        AugmentConfig(rotation=-1)
    with pytest.raises(ValueError, match="occlusion_size"):
        AugmentConfig(occlusion_size=(0.5, 0.2))
    with pytest.raises(ValueError, match=r"unknown augment option.*'rotate'"):
        AugmentConfig.from_dict({"rotate": 10})
    assert AugmentConfig.from_dict({"blur_sigma": [1, 2]}).blur_sigma == (1, 2)
    with pytest.raises(ValueError, match="border must be one of"):
        FaceCropTransform(P300, border="reflect")  # type: ignore[arg-type]
    t = FaceCropTransform("300w")
    image = np.zeros((50, 50, 3), np.uint8)
    with pytest.raises(ValueError, match=r"\(68, 2\) for protocol '300w', got \(5, 2\)"):
        t(image, np.zeros((5, 2)), np.array([0, 0, 40, 40.0]))
    with pytest.raises(ValueError, match="positive width and height"):
        t(image, None, np.array([10, 10, 10, 40.0]))
    with pytest.raises(ValueError, match="uint8"):
        t(image.astype(np.float32), None, np.array([0, 0, 40, 40.0]))
