"""The pre-cropped face cache: pixel geometry, reuse, staleness, errors, real faces."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest

from helpers import pts_faces
from sepbn.data.cache import (
    CACHE_MARGIN,
    CACHE_SIZE,
    FaceCache,
    cache_crop_size,
    crop_for_cache,
    prepare_cache,
)
from sepbn.data.errors import DatasetError
from sepbn.data.image_io import load_image
from sepbn.data.records import FaceRecord, box_from_landmarks
from sepbn.data.transforms import (
    AugmentConfig,
    apply_affine,
    crop_matrix,
    invert_affine,
    required_margin,
)


def _ramp(h: int, w: int) -> tuple[np.ndarray, callable]:
    """A linear RGB ramp and its exact value at any (x, y)."""
    coef = np.array([[0.4, 0.25, 8.0], [0.1, 0.5, 20.0], [0.3, 0.3, 5.0]])  # per channel a, b, c
    coef[:, :2] *= 300 / max(h, w)  # stays within 0..255

    def value(xy: np.ndarray) -> np.ndarray:
        return xy @ coef[:, :2].T + coef[:, 2]

    ys, xs = np.mgrid[:h, :w].astype(np.float64)
    img = value(np.stack([xs, ys], axis=-1)).round().clip(0, 255).astype(np.uint8)
    return img, value


def _records(
    n: int, size: int = 300, tmp_path: Path | None = None, seed: int = 0
) -> list[FaceRecord]:
    """Faces on ramp images; written as PNG files when ``tmp_path`` is given."""
    rng = np.random.default_rng(seed)
    img, _ = _ramp(size, size)
    recs = []
    for i in range(n):
        centre = rng.uniform(0.4, 0.6, 2) * size
        pts = centre + rng.uniform(-0.15, 0.15, size=(68, 2)) * size
        kw: dict = {"image": img} if tmp_path is None else {}
        path = None
        if tmp_path is not None:
            path = tmp_path / f"face_{i}.png"
            cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        recs.append(
            FaceRecord(
                path,
                pts,
                box_from_landmarks(pts),
                "300w",
                source=f"list.txt:{i + 1}",
                attributes={"pose": bool(i % 2)} if i % 3 else {},
                domain=i % 3 if i % 2 else None,
                **kw,
            )
        )
    return recs


def _check_ramp(crop: np.ndarray, matrix: np.ndarray, value, size: int, tol: float) -> None:
    c = crop.shape[0]
    q = np.stack(np.meshgrid(np.arange(c, dtype=float), np.arange(c, dtype=float)), -1).reshape(
        -1, 2
    )
    src = apply_affine(invert_affine(matrix), q)
    inside = ((src > 2) & (src < size - 3)).all(axis=1)
    assert inside.mean() > 0.2
    err = np.abs(crop.reshape(-1, 3)[inside].astype(float) - value(src[inside]))
    assert err.max() <= tol
    # Outside the photo the cache is black.
    outside = ((src < -2) | (src > size + 1)).any(axis=1)
    if outside.any():
        assert crop.reshape(-1, 3)[outside].max() == 0


@pytest.mark.parametrize(("image_size", "crop_size"), [(300, 256), (1400, 96)])
def test_cached_pixels_follow_the_cache_matrix(tmp_path, image_size, crop_size):
    """Each cached pixel is the photo at its inverse-mapped centre (warped / area-averaged)."""
    recs = _records(3, size=image_size)
    cache = prepare_cache(recs, tmp_path / "c", "300w", crop_size=crop_size, progress=False)
    _, value = _ramp(image_size, image_size)
    for i in range(len(cache)):
        scale = cache.matrix[i, 0, 0]
        assert (scale < 1 / 1.5) == (image_size == 1400)  # both resampling paths covered
        _check_ramp(np.asarray(cache.images[i]), cache.matrix[i], value, image_size, tol=1.6)
        s0 = (recs[i].box[2:] - recs[i].box[:2]).max()
        assert scale == pytest.approx(crop_size / (CACHE_MARGIN * s0))
        np.testing.assert_allclose(
            cache.matrix[i], crop_matrix(recs[i].box, crop_size, CACHE_MARGIN)
        )


def test_crop_for_cache_matches_plain_warp_for_smooth_content():
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, size=(30, 30, 3), dtype=np.uint8)
    big = cv2.resize(small, (900, 900), interpolation=cv2.INTER_CUBIC)  # smooth at fine scale
    m = crop_matrix(np.array([300.0, 320.0, 600.0, 610.0]), 64, 2.0)  # 0.1x
    fast = crop_for_cache(big, m, 64).astype(float)
    # Reference: blur to the target scale, then sample at the exact inverse-mapped centres.
    ref = cv2.warpAffine(cv2.GaussianBlur(big, (0, 0), 4.0), m, (64, 64), flags=cv2.INTER_LINEAR)
    assert np.abs(fast - ref).mean() < 3.0


def test_index_arrays_round_trip(tmp_path):
    recs = _records(6, tmp_path=tmp_path)
    cache = prepare_cache(recs, tmp_path / "c", "300w", crop_size=64, progress=False)
    assert len(cache) == 6 and cache.images.shape == (6, 64, 64, 3)
    np.testing.assert_allclose(cache.orig_landmarks, np.stack([r.landmarks for r in recs]))
    np.testing.assert_allclose(cache.landmarks, apply_affine(cache.matrix, cache.orig_landmarks))
    back = apply_affine(invert_affine(cache.matrix), cache.landmarks)
    assert np.abs(back - cache.orig_landmarks).max() < 1e-3
    np.testing.assert_allclose(cache.boxes, np.stack([r.box for r in recs]))
    np.testing.assert_array_equal(
        cache.domain, [-1 if r.domain is None else r.domain for r in recs]
    )
    assert cache.sources == [r.source for r in recs]
    assert cache.image_paths == [str(r.image_path) for r in recs]
    assert [cache.attributes_of(i) for i in range(6)] == [r.attributes for r in recs]
    np.testing.assert_array_equal(cache.record_index, np.arange(6))
    # Face boxes in cache pixels: centred, margin x smaller than the crop.
    cb = cache.crop_boxes()
    np.testing.assert_allclose((cb[:, :2] + cb[:, 2:]) / 2, 31.5, atol=1e-9)
    np.testing.assert_allclose((cb[:, 2:] - cb[:, :2]).max(axis=1), 64 / CACHE_MARGIN)


def test_default_margin_holds_the_default_augmentation():
    assert required_margin(AugmentConfig()) <= CACHE_MARGIN


def test_reuse_staleness_and_protocol_refusal(tmp_path):
    recs = _records(4, tmp_path=tmp_path)
    out = tmp_path / "c"
    first = prepare_cache(recs, out, "300w", crop_size=48, progress=False)
    stamp = (out / "images.u8").stat().st_mtime_ns
    again = prepare_cache(recs, out, "300w", crop_size=48, progress=False)
    assert again.fingerprint == first.fingerprint
    assert (out / "images.u8").stat().st_mtime_ns == stamp  # reused, not rewritten

    recs[2].landmarks = recs[2].landmarks + 1.0
    moved = prepare_cache(recs, out, "300w", crop_size=48, progress=False)
    assert moved.fingerprint != first.fingerprint
    np.testing.assert_allclose(moved.orig_landmarks[2], recs[2].landmarks)

    os.utime(recs[0].image_path, ns=(1, 1))  # an edited photo
    touched = prepare_cache(recs, out, "300w", crop_size=48, progress=False)
    assert touched.fingerprint != moved.fingerprint
    assert prepare_cache(recs, out, "300w", crop_size=40, progress=False).crop_size == 40

    wflw = [FaceRecord(r.image_path, np.zeros((98, 2)), r.box, "wflw") for r in recs]
    with pytest.raises(DatasetError, match="holds a cache for protocol '300w', not 'wflw'"):
        prepare_cache(wflw, out, "wflw", progress=False)
    with pytest.raises(DatasetError, match="prepared for protocol '300w', not 'wflw'"):
        FaceCache.open(out, "wflw")
    assert len(FaceCache.open(out, "300w")) == 4


def test_incomplete_or_damaged_cache_is_rejected_then_rebuilt(tmp_path):
    recs = _records(3)
    out = tmp_path / "c"
    prepare_cache(recs, out, "300w", crop_size=32, progress=False)
    with open(out / "images.u8", "r+b") as f:
        f.truncate(100)
    with pytest.raises(DatasetError, match="100 bytes, expected"):
        FaceCache.open(out)
    assert len(prepare_cache(recs, out, "300w", crop_size=32, progress=False)) == 3
    (out / "meta.json").unlink()
    with pytest.raises(DatasetError, match=r"missing meta\.json"):
        FaceCache.open(out)
    meta = json.loads(json.dumps({"version": 99}))
    (out / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match="version 99"):
        FaceCache.open(out)


def test_bad_records_raise_or_are_skipped(tmp_path):
    recs = _records(5, tmp_path=tmp_path)
    recs[1].image_path = tmp_path / "missing.png"
    recs[3].landmarks = recs[3].landmarks * 50  # far outside the box: validate_record fails
    with pytest.raises(DatasetError, match=r"list.txt:2 .*image file not found"):
        prepare_cache(recs, tmp_path / "a", "300w", crop_size=32, progress=False)
    cache = prepare_cache(
        recs, tmp_path / "b", "300w", crop_size=32, on_error="skip", progress=False
    )
    assert len(cache) == 3
    np.testing.assert_array_equal(cache.record_index, [0, 2, 4])
    assert [s[0] for s in cache.skipped] == [f"list.txt:2 ({recs[1].image_path})", "list.txt:4"]
    other = [
        FaceRecord(
            None,
            np.zeros((98, 2)),
            np.array([0, 0, 9, 9.0]),
            "wflw",
            image=np.zeros((9, 9, 3), np.uint8),
        )
    ]
    with pytest.raises(DatasetError, match="protocol 'wflw', but the cache is for '300w'"):
        prepare_cache(other, tmp_path / "d", "300w", progress=False)
    with pytest.raises(ValueError, match="on_error must be"):
        prepare_cache(recs, tmp_path / "e", "300w", on_error="ignore", progress=False)  # type: ignore[arg-type]


def test_pickle_remaps_instead_of_copying_pixels(tmp_path):
    cache = prepare_cache(_records(4), tmp_path / "c", "300w", crop_size=128, progress=False)
    _ = cache.images[0]
    blob = pickle.dumps(cache)
    assert len(blob) < cache.images.nbytes / 4
    clone = pickle.loads(blob)
    np.testing.assert_array_equal(clone.images, cache.images)


def test_progress_bar(tmp_path, capsys):
    prepare_cache(_records(3), tmp_path / "c", "300w", crop_size=32, progress=True)
    err = capsys.readouterr().err
    assert "prepare 300w cache" in err and "3/3" in err


@pytest.mark.realdata
def test_real_300w_faces(data_root, tmp_path):
    recs = pts_faces(data_root / "300W_train_crops" / "lfpw" / "trainset", 10)
    cache = prepare_cache(recs, tmp_path / "c", "300w", progress=False)
    assert len(cache) == 10
    for i, r in enumerate(recs):
        photo = load_image(r.image_path)
        direct = cv2.warpAffine(
            photo, cache.matrix[i], (cache.crop_size,) * 2, flags=cv2.INTER_LINEAR
        )
        assert np.abs(direct.astype(int) - cache.images[i].astype(int)).mean() < 1.0
    back = apply_affine(invert_affine(cache.matrix), cache.landmarks)
    assert np.abs(back - np.stack([r.landmarks for r in recs])).max() < 1e-3
    # Every face (and the 2.7-box-side margin around it) lies inside the 280 px crop.
    assert cache.landmarks.min() > 0 and cache.landmarks.max() < cache.crop_size - 1


def test_cache_crop_size_grows_with_the_input_above_128_px() -> None:
    assert cache_crop_size(64) == cache_crop_size(128) == CACHE_SIZE == 280
    assert cache_crop_size(256) == 560
    assert cache_crop_size(129) == 283  # ceil(280 * 129 / 128) = ceil(282.19)


def test_reading_and_preparing_skips_are_kept_beside_meta_json(tmp_path):
    import csv

    from sepbn.data.errors import SkipReport

    recs = _records(3, tmp_path=tmp_path)
    recs[2].image_path.write_bytes(b"")  # found while preparing
    read = SkipReport([DatasetError("list.txt:9", "expected 197 tokens, got 3", "token count")])
    cache = prepare_cache(
        recs, tmp_path / "c", "300w", crop_size=32, on_error="skip", progress=False, skipped=read
    )
    assert len(cache) == 2
    report = cache.skip_report()
    assert [(e.source, e.category) for e in report.skipped] == [
        ("list.txt:9", "token count"),
        (f"list.txt:3 ({recs[2].image_path})", "image file is empty"),
    ]
    meta = json.loads((tmp_path / "c" / "meta.json").read_text())
    assert [s[0] for s in meta["skipped"]] == [e.source for e in report.skipped]
    with (tmp_path / "c" / "skipped.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["file"], r["line"], r["category"]) for r in rows] == [
        ("list.txt", "9", "token count"),
        ("list.txt", "3", "image file is empty"),
    ]
    assert rows[1]["image"] == str(recs[2].image_path)
    # Reused as long as nothing changes; a changed list of reading skips rebuilds it.
    again = prepare_cache(
        recs, tmp_path / "c", "300w", 32, on_error="skip", progress=False, skipped=read
    )
    assert again.fingerprint == cache.fingerprint
    fewer = prepare_cache(recs, tmp_path / "c", "300w", 32, on_error="skip", progress=False)
    assert fewer.fingerprint != cache.fingerprint and len(fewer.skipped) == 1


@pytest.mark.parametrize(
    ("meta", "expected"),
    [
        ([1, 2, 3], "cache metadata must be a JSON object, got list"),
        ("cache", "cache metadata must be a JSON object, got str"),
        ({"version": 1, "protocol": "300w"}, "cache metadata 'protocol' has the wrong type (str)"),
        ("COUNT", "cache metadata 'count' has the wrong type (str)"),
        ("PROTOCOL", "damaged or incomplete cache"),
    ],
)
def test_a_meta_json_of_the_wrong_shape_is_one_line_naming_it(tmp_path, meta, expected):
    recs = _records(2)
    out = tmp_path / "c"
    prepare_cache(recs, out, "300w", crop_size=32, progress=False)
    good = json.loads((out / "meta.json").read_text())
    if meta == "COUNT":
        meta = {**good, "count": "2"}
    elif meta == "PROTOCOL":  # the right type, but not a protocol
        meta = {**good, "protocol": {"name": "300w"}}
    (out / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError) as info:
        FaceCache.open(out)
    assert str(info.value).startswith(str(out)) and expected in str(info.value)
    if expected.startswith("cache metadata"):
        assert str(info.value).startswith(f"{out / 'meta.json'}: ")
        with pytest.raises(DatasetError, match="cache metadata"):  # not rebuilt over it
            prepare_cache(recs, out, "300w", crop_size=32, progress=False)


def _no_temporaries(folder: Path) -> None:
    assert not [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]
    assert not (folder / "meta.json").exists()  # an unfinished cache never reads as complete


def test_a_full_disk_while_preparing_is_one_line_and_leaves_no_temporary(tmp_path, monkeypatch):
    import errno

    import sepbn.data.cache

    def full_disk(*args, **kwargs) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(sepbn.data.cache.np, "savez", full_disk)  # after images.u8.tmp
    out = tmp_path / "c"
    with pytest.raises(DatasetError) as info:
        prepare_cache(_records(3), out, "300w", crop_size=32, progress=False)
    assert str(info.value) == (
        f"{out}: cannot write the cache: no space left on device (the disk is full)"
    )
    _no_temporaries(out)


@pytest.mark.parametrize("failure", [KeyboardInterrupt, "bad record"])
def test_any_failure_while_preparing_removes_the_temporaries(tmp_path, monkeypatch, failure):
    import sepbn.data.cache

    recs = _records(3, tmp_path=tmp_path)
    if failure == "bad record":
        recs[2].image_path = tmp_path / "missing.png"
        expected: type[BaseException] = DatasetError
    else:
        calls = []

        def interrupted(*args, **kwargs):
            calls.append(1)
            if len(calls) == 2:
                raise KeyboardInterrupt
            return crop_for_cache(*args, **kwargs)

        monkeypatch.setattr(sepbn.data.cache, "crop_for_cache", interrupted)
        expected = KeyboardInterrupt
    out = tmp_path / "c"
    with pytest.raises(expected):
        prepare_cache(recs, out, "300w", crop_size=32, progress=False)
    _no_temporaries(out)
