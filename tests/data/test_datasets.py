"""Landmark datasets, multi-protocol concatenation, collate and distributed sampling."""

from __future__ import annotations

from collections import Counter

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, RandomSampler
from torch.utils.data.distributed import DistributedSampler

from helpers import break_pts_folder, pts_faces
from sepbn.data.cache import prepare_cache
from sepbn.data.datasets import (
    LandmarkDataset,
    MultiProtocolDataset,
    collate_landmarks,
    worker_init_fn,
)
from sepbn.data.domains import pose_domain
from sepbn.data.errors import DatasetError, SkipReport
from sepbn.data.protocols import get_protocol
from sepbn.data.records import FaceRecord, box_from_landmarks
from sepbn.data.transforms import AugmentConfig, FaceCropTransform, apply_affine, invert_affine

P300, PAFLW = get_protocol("300w"), get_protocol("aflw")
KEYS = {
    "image",
    "landmarks",
    "valid",
    "matrix",
    "orig_landmarks",
    "norm",
    "protocol_id",
    "index",
    "domain",
}


def _smooth_image(rng: np.random.Generator, size: int = 200) -> np.ndarray:
    coarse = rng.integers(0, 256, size=(12, 12, 3), dtype=np.uint8)
    return cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)


def _records(n: int, protocol: str = "300w", seed: int = 0, size: int = 200) -> list[FaceRecord]:
    """In-memory faces: smooth random images, random landmarks around the centre."""
    rng = np.random.default_rng(seed)
    num_points = get_protocol(protocol).num_points
    recs = []
    for i in range(n):
        pts = size / 2 + rng.uniform(-0.2, 0.2, size=(num_points, 2)) * size
        valid = np.ones(num_points, bool)
        if protocol == "aflw":
            valid[rng.integers(0, num_points)] = False
            pts[~valid] = 0.0
        recs.append(
            FaceRecord(
                None,
                pts,
                box_from_landmarks(pts, valid),
                protocol,
                valid=valid,
                source=f"{protocol}.txt:{i + 1}",
                image=_smooth_image(rng, size),
                domain=1 if i == 0 else None,
            )
        )
    return recs


def _dataset(recs, protocol="300w", augment=None, **kw) -> LandmarkDataset:
    return LandmarkDataset(
        recs, protocol, FaceCropTransform(protocol, output_size=64, augment=augment), **kw
    )


def test_sample_contract_and_values():
    recs = _records(3)
    ds = _dataset(recs, augment=AugmentConfig(), protocol_id=2)
    s = ds[1]
    assert set(s) >= KEYS and s["protocol"] == "300w"
    assert s["image"].dtype == torch.uint8 and s["image"].shape == (3, 64, 64)
    assert s["image"].is_contiguous()
    assert s["landmarks"].dtype == torch.float32 and s["landmarks"].shape == (68, 2)
    assert s["valid"].dtype == torch.bool and s["valid"].shape == (68,)
    assert s["matrix"].dtype == torch.float64 and s["matrix"].shape == (2, 3)
    assert s["orig_landmarks"].dtype == torch.float64 and s["orig_landmarks"].shape == (68, 2)
    for key in ("norm", "protocol_id", "index", "domain"):
        assert s[key].shape == ()
    assert s["norm"].dtype == torch.float64 and s["norm"].item() == pytest.approx(
        float(P300.normalizer(recs[1].landmarks, recs[1].box))
    )
    assert (s["protocol_id"].item(), s["index"].item()) == (2, 1)
    # The crop is the original warped by the sample's matrix, and the matrix maps the
    # ground truth onto the crop landmarks.
    m = s["matrix"].numpy()
    direct = cv2.warpAffine(recs[1].image, m, (64, 64), flags=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(s["image"].permute(1, 2, 0).numpy(), direct)
    np.testing.assert_allclose(
        apply_affine(m, s["orig_landmarks"].numpy()), s["landmarks"].numpy(), atol=1e-4
    )
    with pytest.raises(IndexError, match="index 3 out of range"):
        ds[3]


@pytest.mark.parametrize("augment", [None, AugmentConfig()])
def test_cache_samples_map_from_the_original_image(tmp_path, augment):
    recs = _records(4)
    cache = prepare_cache(recs, tmp_path / "c", "300w", crop_size=160, progress=False)
    from_cache = LandmarkDataset(cache, "300w", FaceCropTransform(P300, 64, augment=augment))
    from_recs = _dataset(recs, augment=augment)
    for i in range(4):
        a, b = from_cache[i], from_recs[i]
        # Same draws, same final original -> crop matrix, same landmarks.
        np.testing.assert_allclose(a["matrix"].numpy(), b["matrix"].numpy(), atol=1e-9)
        np.testing.assert_allclose(a["landmarks"].numpy(), b["landmarks"].numpy(), atol=1e-4)
        np.testing.assert_array_equal(a["orig_landmarks"].numpy(), b["orig_landmarks"].numpy())
        assert a["norm"] == b["norm"]
        back = apply_affine(
            invert_affine(a["matrix"].numpy()), a["landmarks"].numpy().astype(float)
        )
        assert np.abs(back - a["orig_landmarks"].numpy()).max() < 1e-3
        # Two resamplings (photo -> cache -> crop) of a smooth image match one.
        assert (a["image"].float() - b["image"].float()).abs().mean() < 2.0


def test_cache_margin_checks(tmp_path):
    cache = prepare_cache(
        _records(2), tmp_path / "c", "300w", crop_size=64, margin=1.5, progress=False
    )
    with pytest.warns(UserWarning, match="can reach"):
        LandmarkDataset(cache, "300w", FaceCropTransform(P300, augment=AugmentConfig()))
    with pytest.raises(ValueError, match="smaller than the transform's crop"):
        LandmarkDataset(cache, "300w", FaceCropTransform(P300, box_scale=1.6))
    with pytest.raises(DatasetError, match="cache holds protocol '300w'"):
        LandmarkDataset(cache, "aflw", FaceCropTransform(PAFLW))


def test_randomness_is_a_function_of_seed_epoch_and_index():
    recs = _records(3)
    ds = _dataset(recs, augment=AugmentConfig())
    first = [ds[i]["matrix"] for i in range(3)]
    assert torch.equal(ds[0]["matrix"], first[0])  # same epoch, same draw
    assert not torch.equal(first[0], first[1])  # different index, different draw
    ds.set_epoch(1)
    assert not torch.equal(ds[0]["matrix"], first[0])
    ds.set_epoch(0)
    twin = _dataset(recs, augment=AugmentConfig())
    assert all(torch.equal(twin[i]["matrix"], first[i]) for i in range(3))
    other = _dataset(recs, augment=AugmentConfig(), seed=1)
    assert not torch.equal(other[0]["matrix"], first[0])


def test_flip_permutes_valid_ground_truth_and_pose_domain():
    recs = _records(2, protocol="aflw")
    flip = AugmentConfig(flip_prob=1.0)
    ds = _dataset(recs, "aflw", augment=flip)
    perm = list(PAFLW.flip_perm)
    s = ds[0]
    np.testing.assert_array_equal(s["valid"].numpy(), recs[0].valid[perm])
    np.testing.assert_array_equal(s["orig_landmarks"].numpy(), recs[0].landmarks[perm])
    back = apply_affine(invert_affine(s["matrix"].numpy()), s["landmarks"].numpy().astype(float))
    v = s["valid"].numpy()
    assert np.abs(back[v] - s["orig_landmarks"].numpy()[v]).max() < 1e-3
    assert (s["landmarks"].numpy()[~v] == 0).all()
    assert s["domain"].item() == 2  # record domain 1 (left profile) mirrored
    assert _dataset(recs, "aflw", augment=flip, mirror_domains=False)[0]["domain"].item() == 1
    assert _dataset(recs, "aflw")[0]["domain"].item() == 1


def test_domain_from_record_else_estimated():
    recs = _records(5)
    ds = _dataset(recs)
    est = pose_domain(np.stack([r.landmarks for r in recs]), P300)
    assert ds.domains[0] == 1  # set on the record
    np.testing.assert_array_equal(ds.domains[1:], est[1:])
    assert [ds[i]["domain"].item() for i in range(5)] == ds.domains.tolist()


def test_record_errors_name_the_source():
    recs = _records(2)
    recs[1].protocol = "wflw"
    with pytest.raises(DatasetError, match=r"300w.txt:2: protocol 'wflw', dataset is '300w'"):
        _dataset(recs)
    with pytest.raises(ValueError, match="transform is for protocol 'aflw'"):
        LandmarkDataset(_records(1), "300w", FaceCropTransform(PAFLW))
    bad = _records(1)
    bad[0].image = None
    with pytest.raises(DatasetError, match="no image_path and no image"):
        _dataset(bad)


def _multi(augment=None) -> MultiProtocolDataset:
    return MultiProtocolDataset(
        [
            _dataset(_records(5, "aflw", seed=1), "aflw", augment=augment, protocol_id=7),
            _dataset(_records(3, "300w", seed=2), augment=augment),
            _dataset(_records(2, "aflw", seed=3), "aflw", augment=augment),
        ]
    )


def test_multi_protocol_ids_sizes_and_indices():
    multi = _multi(AugmentConfig())
    assert [p.name for p in multi.protocols] == ["aflw", "300w"]
    assert [ds.protocol_id for ds in multi.datasets] == [0, 1, 0]
    assert multi.sizes == [5, 3, 2] and len(multi) == 10
    assert multi.locate(0) == (0, 0) and multi.locate(5) == (1, 0) and multi.locate(9) == (2, 1)
    s = multi[6]
    assert s["protocol"] == "300w" and s["protocol_id"].item() == 1 and s["index"].item() == 6
    assert torch.equal(s["matrix"], multi.datasets[1][1]["matrix"])
    assert multi[-1]["index"].item() == 9
    multi.set_epoch(3)
    assert all(ds.epoch == 3 for ds in multi.datasets)
    with pytest.raises(ValueError, match="at least one dataset"):
        MultiProtocolDataset([])


def test_sampling_probability_proportional_to_size():
    multi = _multi()
    size_w = multi.sampling_weights("size")
    assert size_w.dtype == torch.float64 and size_w.shape == (10,)
    np.testing.assert_allclose(size_w.numpy(), np.full(10, 0.1))
    bal = multi.sampling_weights("balanced").numpy()
    np.testing.assert_allclose([bal[:5].sum(), bal[5:8].sum(), bal[8:].sum()], [1 / 3] * 3)
    with pytest.raises(ValueError, match="mode must be 'size' or 'balanced'"):
        multi.sampling_weights("equal")  # type: ignore[arg-type]
    # Uniform shuffling over the concatenation draws datasets in proportion to size.
    gen = torch.Generator().manual_seed(0)
    draws = list(
        RandomSampler(range(len(multi)), replacement=True, num_samples=20000, generator=gen)
    )
    counts = Counter(multi.locate(i)[0] for i in draws)
    np.testing.assert_allclose([counts[d] / 20000 for d in range(3)], [0.5, 0.3, 0.2], atol=0.015)


def test_collate_groups_targets_per_protocol():
    multi = _multi(AugmentConfig())
    samples = [multi[i] for i in (6, 0, 9, 5, 2)]
    batch = collate_landmarks(samples)
    assert batch["image"].shape == (5, 3, 64, 64) and batch["image"].dtype == torch.uint8
    assert batch["protocol_id"].tolist() == [1, 0, 0, 1, 0]
    assert batch["index"].tolist() == [6, 0, 9, 5, 2]
    assert batch["matrix"].shape == (5, 2, 3) and batch["norm"].shape == (5,)
    assert batch["domain"].shape == (5,)
    assert list(batch["targets"]) == ["aflw", "300w"]
    aflw, w300 = batch["targets"]["aflw"], batch["targets"]["300w"]
    assert aflw["rows"].tolist() == [1, 2, 4] and w300["rows"].tolist() == [0, 3]
    assert aflw["rows"].dtype == torch.int64
    assert aflw["landmarks"].shape == (3, 19, 2) and aflw["landmarks"].dtype == torch.float32
    assert w300["landmarks"].shape == (2, 68, 2) and w300["valid"].shape == (2, 68)
    assert aflw["orig_landmarks"].dtype == torch.float64
    for pos, row in enumerate(aflw["rows"].tolist()):
        assert torch.equal(aflw["landmarks"][pos], samples[row]["landmarks"])
        assert torch.equal(aflw["valid"][pos], samples[row]["valid"])
    single = collate_landmarks([multi[5], multi[7]])
    assert list(single["targets"]) == ["300w"]
    with pytest.raises(ValueError, match="empty batch"):
        collate_landmarks([])


@pytest.mark.parametrize("num_workers", [0, 2])
def test_distributed_sampler_ranks_are_disjoint_and_cover(num_workers):
    multi = _multi(AugmentConfig())
    seen: list[list[int]] = []
    for rank in range(2):
        sampler = DistributedSampler(multi, num_replicas=2, rank=rank, shuffle=True, seed=0)
        sampler.set_epoch(1)
        loader = DataLoader(
            multi,
            batch_size=3,
            sampler=sampler,
            collate_fn=collate_landmarks,
            num_workers=num_workers if rank == 0 else 0,
            worker_init_fn=worker_init_fn,
        )
        indices: list[int] = []
        for batch in loader:
            indices += batch["index"].tolist()
            for name, tgt in batch["targets"].items():
                num_points = get_protocol(name).num_points
                assert tgt["landmarks"].shape == (len(tgt["rows"]), num_points, 2)
                ids = batch["protocol_id"][tgt["rows"]]
                assert (ids == multi.protocols.index(get_protocol(name))).all()
        seen.append(indices)
    assert len(seen[0]) == len(seen[1]) == 5
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == list(range(10))


@pytest.mark.realdata
def test_real_faces_from_cache_map_back_to_the_photo(data_root, tmp_path):
    recs = pts_faces(data_root / "300W_train_crops" / "helen" / "trainset", 6)
    cache = prepare_cache(recs, tmp_path / "c", "300w", progress=False)
    ds = LandmarkDataset(cache, "300w", FaceCropTransform(P300, augment=AugmentConfig()))
    raw = LandmarkDataset(recs, "300w", FaceCropTransform(P300, augment=AugmentConfig()))
    for i in range(len(ds)):
        a, b = ds[i], raw[i]
        np.testing.assert_allclose(a["matrix"].numpy(), b["matrix"].numpy(), atol=1e-9)
        back = apply_affine(
            invert_affine(a["matrix"].numpy()), a["landmarks"].numpy().astype(float)
        )
        assert np.abs(back - a["orig_landmarks"].numpy()).max() < 1e-3
        assert (a["image"].float() - b["image"].float()).abs().mean() < 4.0
    # The evaluation crop (box x 1.25) holds every annotated point with a margin.
    evaluation = LandmarkDataset(cache, "300w", FaceCropTransform(P300))
    for i in range(len(evaluation)):
        s = evaluation[i]
        assert s["valid"].all() and (s["landmarks"] > 5).all() and (s["landmarks"] < 122).all()


def test_every_sample_carries_its_source_from_records_and_cache(tmp_path):
    recs = _records(3)
    recs[2].source = ""  # a hand-made record: its image path stands in
    recs[2].image_path = tmp_path / "hand.png"
    cache = prepare_cache(recs, tmp_path / "c", "300w", crop_size=160, progress=False)
    expected = ["300w.txt:1", "300w.txt:2", str(tmp_path / "hand.png")]
    for source in (recs, cache):
        ds = LandmarkDataset(source, "300w", FaceCropTransform(P300, 64))
        assert [ds[i]["source"] for i in range(3)] == expected
        batch = collate_landmarks([ds[2], ds[0]])
        assert batch["source"] == [expected[2], expected[0]]
    multi = _multi()
    assert multi[5]["source"] == "300w.txt:1"  # the concatenation keeps each set's own


# Bad input, round two (issue 22): one validation path for cached and uncached data.


def _bad_pts_folder(folder, write_pts_folder):
    """Five faces: f0 undecodable, f1 a JPEG libjpeg calls corrupt, f2 with a point at 1e300."""
    write_pts_folder(folder, 5)
    return break_pts_folder(folder)


def test_cached_and_uncached_datasets_keep_the_same_faces(tmp_path, write_pts_folder):
    from sepbn.data.formats import read_pts_folder

    folder = _bad_pts_folder(tmp_path / "faces", write_pts_folder)
    records = read_pts_folder(folder)  # the reader cannot see inside the images
    assert len(records) == 5
    transform = FaceCropTransform(P300, 64)
    with pytest.raises(DatasetError, match=r"f0\.pts \(.*f0\.jpg\): not a decodable image"):
        LandmarkDataset(records, "300w", transform)
    skipped = SkipReport()
    uncached = LandmarkDataset(records, "300w", transform, on_error="skip", report=skipped)
    cache = prepare_cache(records, tmp_path / "c", "300w", on_error="skip", progress=False)
    cached = LandmarkDataset(cache, "300w", transform)
    assert uncached.sources == cached.sources == [str(folder / f"f{i}.pts") for i in (3, 4)]
    assert uncached.record_index.tolist() == cached.record_index.tolist() == [3, 4]
    assert [e.category for e in skipped.skipped] == [
        "not a decodable image",
        "corrupt JPEG data",
        "landmarks far outside the image",
    ]
    assert [e.category for e in cache.skip_report().skipped] == [
        e.category for e in skipped.skipped
    ]
    for a, b in zip((uncached[i] for i in range(2)), (cached[i] for i in range(2))):
        np.testing.assert_allclose(a["orig_landmarks"], b["orig_landmarks"])
    assert all(np.isfinite(uncached.norm)) and all(np.isfinite(cached.norm))


def test_no_faces_left_is_one_line(tmp_path):
    (tmp_path / "f0.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" + b"IEND\xaeB`\x82")
    records = _records(1)
    records[0].image, records[0].image_path = None, tmp_path / "f0.png"
    with pytest.raises(DatasetError, match=r"\(.*f0\.png\): not a decodable image; no faces left"):
        LandmarkDataset(records, "300w", FaceCropTransform(P300, 64), on_error="skip")
