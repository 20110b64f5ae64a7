"""The evaluator on hand-made batches: mapping back to the image, metrics, reports.

The models here look up a known prediction per face: each image carries its face
number in pixel (0, 0) of channel 0, so the expected predictions, NMEs and best
domains are computed independently of the evaluator (OpenCV for the affine
inverse, a loop for Eq. 8).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from sepbn.analysis.pose_bins import POSE_BIN_EDGES
from sepbn.data.protocols import get_protocol
from sepbn.data.records import FaceRecord, box_from_landmarks
from sepbn.engine.evaluator import (
    EvalResult,
    evaluate,
    evaluate_best_of_domains,
    evaluate_model,
    predict,
)
from sepbn.metrics import LandmarkMetrics
from sepbn.models import is_cross_protocol
from sepbn.nn import DomainBatchNorm2d, SepBatchNorm2d, num_model_domains

S = 32  # input size
NAMES = ["aflw", "wider5"]  # dataset protocol ids 0 and 1


def nme_reference(pred: np.ndarray, gt: np.ndarray, d: float, valid: np.ndarray) -> float:
    """Eq. 8 for one face, point by point."""
    dists = [math.dist(p, g) for p, g, v in zip(pred, gt, valid) if v]
    return sum(dists) / len(dists) / d


class FakeFaces(Dataset):
    """Faces of several protocols with random crops and known per-face predictions.

    Attributes:
        samples: Contract-conformant sample dicts.
        records: One FaceRecord per face (for the sources in the CSV).
        expected: Face number -> ``(K, L, 2)`` predictions in original pixels, one
            per domain (K = 1 for plain models).
        outputs: Face number -> ``(K, L, 2)`` the same, as model outputs (crop / S).
    """

    def __init__(
        self,
        protocols: list[str],
        num_domains: int = 1,
        seed: int = 0,
        shapes: list[np.ndarray] | None = None,
    ) -> None:
        rng = np.random.default_rng(seed)
        self.samples, self.records, self.expected, self.outputs = [], [], [], []
        for i, name in enumerate(protocols):
            p = get_protocol(name)
            gt = rng.uniform(30, 170, (p.num_points, 2)) if shapes is None else shapes[i]
            valid = np.ones(p.num_points, bool)
            if name == "aflw":
                valid[rng.choice(p.num_points, 3, replace=False)] = False
            box = box_from_landmarks(gt, valid)
            # Similarity crop: the box centre to the crop centre, rotated, scaled to S.
            angle = rng.uniform(-30, 30)
            scale = S / (1.3 * max(box[2] - box[0], box[3] - box[1]))
            centre = (box[:2] + box[2:]) / 2
            matrix = cv2.getRotationMatrix2D(tuple(centre), angle, scale)
            matrix[:, 2] += (S - 1) / 2 - centre
            # Predictions: the ground truth plus a known error per domain.
            preds = gt + rng.normal(0, 3, (num_domains, p.num_points, 2))
            crop_preds = np.stack([cv2.transform(q[None], matrix)[0] for q in preds])
            image = np.zeros((3, S, S), np.uint8)
            image[0, 0, 0] = i  # the face number, read back by the models
            self.samples.append(
                {
                    "image": torch.from_numpy(image),
                    "landmarks": torch.from_numpy(cv2.transform(gt[None], matrix)[0]).float(),
                    "valid": torch.from_numpy(valid),
                    "matrix": torch.from_numpy(matrix),
                    "orig_landmarks": torch.from_numpy(gt),
                    "norm": torch.tensor(float(p.normalizer(gt, box)), dtype=torch.float64),
                    "protocol_id": torch.tensor(NAMES.index(name)),
                    "index": torch.tensor(i),
                    "domain": torch.tensor(-1),
                }
            )
            self.records.append(
                FaceRecord(None, gt, box, name, valid=valid, source=f"faces.txt:{i + 1}")
            )
            self.expected.append(preds)
            self.outputs.append(torch.from_numpy(crop_preds / S).float())

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict:
        return self.samples[i]


def collate(samples: list[dict]) -> dict:
    """The project's collate contract, written out for these tests."""
    batch = {k: torch.stack([s[k] for s in samples]) for k in ("image", "matrix")}
    for k in ("protocol_id", "index", "domain", "norm"):
        batch[k] = torch.stack([s[k] for s in samples])
    batch["targets"] = {}
    for pid in sorted(set(batch["protocol_id"].tolist())):
        rows = (batch["protocol_id"] == pid).nonzero().squeeze(1)
        group = [samples[r] for r in rows.tolist()]
        batch["targets"][NAMES[pid]] = {
            "rows": rows,
            **{
                k: torch.stack([s[k] for s in group])
                for k in ("landmarks", "valid", "orig_landmarks")
            },
        }
    return batch


def face_numbers(x: Tensor) -> Tensor:
    """Read back the face number the dataset wrote into each image."""
    assert x.is_floating_point() and float(x.min()) >= 0 and float(x.max()) <= 1
    return (x[:, 0, 0, 0] * 255).round().long()


class TableModel(nn.Module):
    """Single-protocol model returning the known prediction of each face."""

    def __init__(self, dataset: FakeFaces) -> None:
        super().__init__()
        self.outputs = [o[0] for o in dataset.outputs]
        self.conv = nn.Conv2d(3, 1, 1)  # real work for autocast; its output adds 0
        self.calls: list[dict] = []

    def forward(self, x: Tensor) -> Tensor:
        feature = self.conv(x)
        self.calls.append(
            {
                "training": self.training,
                "inference": torch.is_inference_mode_enabled(),
                "dtype": feature.dtype,
                "n": x.shape[0],
            }
        )
        table = torch.stack([self.outputs[i] for i in face_numbers(x).tolist()])
        return table + 0 * feature.float().mean((1, 2, 3))[:, None, None]


class CrossTableModel(nn.Module):
    """Cross-protocol model; its protocol ids differ from the dataset's on purpose."""

    def __init__(self, dataset: FakeFaces) -> None:
        super().__init__()
        self.protocols = ["wider5", "aflw"]
        self.dataset = dataset
        self.seen_ids: list[Tensor] = []

    def forward(self, x: Tensor, protocol_ids: Tensor) -> dict[str, Tensor]:
        self.seen_ids.append(protocol_ids.clone())
        numbers = face_numbers(x)
        out = {}
        for pid, name in enumerate(self.protocols):
            rows = (protocol_ids == pid).nonzero().squeeze(1).tolist()
            if rows:
                out[name] = torch.stack([self.dataset.outputs[numbers[r]][0] for r in rows])
        return out


def expected_nmes(dataset: FakeFaces, protocol: str, domain: int = 0) -> tuple[list, list]:
    faces = [i for i, r in enumerate(dataset.records) if r.protocol == protocol]
    nmes = []
    for i in faces:
        s = dataset.samples[i]
        nmes.append(
            nme_reference(
                dataset.expected[i][domain],
                s["orig_landmarks"].numpy(),
                float(s["norm"]),
                s["valid"].numpy(),
            )
        )
    return faces, nmes


def mixed_dataset(**kwargs) -> FakeFaces:
    return FakeFaces(["aflw", "wider5", "aflw", "aflw", "wider5", "aflw", "wider5"], **kwargs)


def test_single_protocol_model_maps_back_to_image() -> None:
    data = FakeFaces(["aflw"] * 5)
    model = TableModel(data).train()
    loader = DataLoader(data, batch_size=2, collate_fn=collate)
    preds = predict(model, loader, protocol=get_protocol("aflw"), progress=False)
    assert preds.protocol == "aflw" and len(preds) == 5
    np.testing.assert_array_equal(preds.indices, np.arange(5))
    assert preds.landmarks.dtype == np.float64
    # Within float32 rounding of the model output (crop coordinates / S).
    np.testing.assert_allclose(preds.landmarks, np.stack([e[0] for e in data.expected]), atol=2e-4)
    np.testing.assert_array_equal(preds.gt, np.stack([r.landmarks for r in data.records]))
    np.testing.assert_array_equal(preds.valid, np.stack([r.valid for r in data.records]))
    np.testing.assert_array_equal(preds.domains, -1)
    # Eval mode and inference mode during the run; training mode restored after.
    assert model.training
    assert all(not c["training"] and c["inference"] for c in model.calls)
    assert [c["n"] for c in model.calls] == [2, 2, 1]


def test_evaluate_metrics_match_reference() -> None:
    data = FakeFaces(["aflw"] * 6, seed=1)
    loader = DataLoader(data, batch_size=4, collate_fn=collate)
    result = evaluate(TableModel(data), loader, "aflw", progress=False)
    _, nmes = expected_nmes(data, "aflw")
    np.testing.assert_allclose(result.nmes, nmes, rtol=1e-4)
    assert result.metrics == LandmarkMetrics.from_errors(result.nmes)
    assert result.sources == [f"faces.txt:{i}" for i in range(1, 7)]  # loader.dataset.records
    np.testing.assert_array_equal(result.indices, np.arange(6))


def test_mixed_batches_single_and_cross_protocol_models() -> None:
    data = mixed_dataset(seed=2)
    loader = DataLoader(data, batch_size=3, collate_fn=collate)
    faces, nmes = expected_nmes(data, "wider5")
    single = TableModel(data)
    cross = CrossTableModel(data)
    assert is_cross_protocol(cross) and not is_cross_protocol(single)
    for model in (single, cross):
        result = evaluate(model, loader, "wider5", progress=False)
        np.testing.assert_array_equal(result.indices, faces)
        np.testing.assert_allclose(result.nmes, nmes, rtol=1e-4)
    # Only the wider5 faces were run, with the model's own id for wider5.
    assert sum(c["n"] for c in single.calls) == len(faces)
    assert all(ids.tolist() == [0] * len(ids) for ids in cross.seen_ids)
    aflw = evaluate(cross, loader, "aflw", progress=False)
    np.testing.assert_allclose(aflw.nmes, expected_nmes(data, "aflw")[1], rtol=1e-4)


def test_protocol_errors() -> None:
    data = mixed_dataset()
    loader = DataLoader(data, batch_size=3, collate_fn=collate)
    with pytest.raises(ValueError, match=r"several protocols \['aflw', 'wider5'\]"):
        predict(TableModel(data), loader, progress=False)
    with pytest.raises(ValueError, match=r"no face of protocol '300w'.*\['aflw', 'wider5'\]"):
        predict(TableModel(data), loader, protocol="300w", progress=False)
    batch = collate([data[0]])
    batch["targets"] = {"cofw": batch["targets"]["aflw"]}  # a protocol the model lacks
    with pytest.raises(ValueError, match=r"no branch for protocol 'cofw'; it has \['wider5'"):
        predict(CrossTableModel(data), [batch], progress=False)
    # A single-protocol model that predicts another protocol's point count.
    other = FakeFaces(["wider5"])
    model = TableModel(other)
    only_aflw = DataLoader(FakeFaces(["aflw"]), batch_size=1, collate_fn=collate)
    with pytest.raises(ValueError, match=r"model output \(1, 5, 2\) does not match"):
        predict(model, only_aflw, progress=False)


def test_images_must_be_uint8() -> None:
    data = FakeFaces(["aflw"])
    batch = collate([data[0]])
    batch["image"] = batch["image"].float()
    with pytest.raises(TypeError, match="must be uint8"):
        predict(TableModel(data), [batch], progress=False)


def test_amp_on_cpu() -> None:
    data = FakeFaces(["aflw"] * 3, seed=3)
    loader = DataLoader(data, batch_size=3, collate_fn=collate)
    model = TableModel(data)
    plain = evaluate(model, loader, "aflw", progress=False)
    mixed = evaluate(model, loader, "aflw", amp=True, progress=False)
    assert [c["dtype"] for c in model.calls] == [torch.float32, torch.bfloat16]
    np.testing.assert_allclose(mixed.nmes, plain.nmes, rtol=1e-6)


def test_save_writes_csv_json_and_png(tmp_path: Path) -> None:
    data = FakeFaces(["aflw"] * 4, seed=4)
    loader = DataLoader(data, batch_size=2, collate_fn=collate)
    result = evaluate(TableModel(data), loader, "aflw", progress=False)
    paths = result.save(tmp_path / "out", "vanilla")
    assert paths["per_image"].name == "vanilla_per_image.csv"
    with paths["per_image"].open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["index"], r["source"]) for r in rows] == [
        (str(i), f"faces.txt:{i + 1}") for i in range(4)
    ]
    np.testing.assert_array_equal([float(r["nme"]) for r in rows], result.nmes)
    summary = json.loads((tmp_path / "out" / "vanilla_summary.json").read_text())
    assert summary["protocol"] == "aflw" and summary["name"] == "vanilla"
    assert summary["metrics"]["nme"] == pytest.approx(float(np.mean(result.nmes)))
    assert "best_of_domains" not in summary
    png = cv2.imread(str(tmp_path / "out" / "vanilla_ced.png"))
    assert png is not None and png.std() > 5


class DomainTableModel(nn.Module):
    """A brute-force SepBN model: a DomainBatchNorm2d picks the per-domain prediction.

    With zero scale, branch k outputs its shift, set to the one-hot vector of k, so
    the prediction under domain k is the dataset's k-th prediction of each face.
    """

    def __init__(self, dataset: FakeFaces, num_domains: int) -> None:
        super().__init__()
        self.dataset = dataset
        self.norm = DomainBatchNorm2d(num_domains, num_domains)
        with torch.no_grad():
            for k, branch in enumerate(self.norm.branches):
                branch.weight.zero_()
                branch.bias.copy_(torch.eye(num_domains)[k])

    def forward(self, x: Tensor) -> Tensor:
        k = self.norm.num_domains
        onehot = self.norm(x.new_zeros(x.shape[0], k, 1, 1)).flatten(1)  # (N, K)
        table = torch.stack([self.dataset.outputs[i] for i in face_numbers(x).tolist()])
        return torch.einsum("nk,nklc->nlc", onehot, table)  # (N, L, 2)


class CrossDomainModel(nn.Module):
    """The same as a cross-protocol model with one branch."""

    def __init__(self, dataset: FakeFaces, num_domains: int) -> None:
        super().__init__()
        self.protocols = ["aflw"]
        self.inner = DomainTableModel(dataset, num_domains)

    def forward(self, x: Tensor, protocol_ids: Tensor) -> dict[str, Tensor]:
        assert protocol_ids.tolist() == [0] * x.shape[0]
        return {"aflw": self.inner(x)}


@pytest.mark.parametrize("cross", [False, True])
def test_best_of_domains_keeps_the_oracle_choice(cross: bool, tmp_path: Path) -> None:
    data = FakeFaces(["aflw"] * 7, num_domains=3, seed=5)
    loader = DataLoader(data, batch_size=3, collate_fn=collate)
    model = CrossDomainModel(data, 3) if cross else DomainTableModel(data, 3)
    result = evaluate_best_of_domains(model, loader, "aflw", num_domains=3, progress=False)
    per_domain = np.array([expected_nmes(data, "aflw", k)[1] for k in range(3)])  # (K, N)
    np.testing.assert_array_equal(result.best_domain, per_domain.argmin(0))
    assert len(set(result.best_domain.tolist())) > 1  # the choice differs between faces
    np.testing.assert_allclose(result.nmes, per_domain.min(0), rtol=1e-4)
    best = np.stack([data.expected[i][k] for i, k in enumerate(result.best_domain)])
    np.testing.assert_allclose(result.predictions.landmarks, best, atol=2e-4)
    summary = json.loads(result.save(tmp_path, "bf")["summary"].read_text())
    assert summary["best_of_domains"]["domain_counts"] == np.bincount(per_domain.argmin(0)).tolist()
    assert "oracle" in summary["best_of_domains"]["note"]
    with pytest.raises(ValueError, match="num_domains must be a positive integer"):
        evaluate_best_of_domains(model, loader, "aflw", num_domains=0)


def test_eval_result_indices_follow_predictions() -> None:
    data = FakeFaces(["aflw"] * 2)
    loader = DataLoader(data, batch_size=2, collate_fn=collate)
    result = evaluate(TableModel(data), loader, records=data.records[::-1], progress=False)
    assert isinstance(result, EvalResult)
    assert result.sources == ["faces.txt:2", "faces.txt:1"]
    assert result.indices is result.predictions.indices


def test_evaluate_model_chooses_the_evaluation_of_the_model() -> None:
    data = FakeFaces(["aflw"] * 7, num_domains=3, seed=5)
    loader = DataLoader(data, batch_size=3, collate_fn=collate)
    brute = DomainTableModel(data, 3)
    assert num_model_domains(brute) == 3 and num_model_domains(TableModel(data)) == 0
    chosen = evaluate_model(brute, loader, "aflw", progress=False)
    oracle = evaluate_best_of_domains(brute, loader, "aflw", 3, progress=False)
    np.testing.assert_array_equal(chosen.best_domain, oracle.best_domain)
    np.testing.assert_array_equal(chosen.nmes, oracle.nmes)
    plain = TableModel(data)
    chosen = evaluate_model(plain, loader, "aflw", progress=False)
    assert chosen.best_domain is None
    np.testing.assert_array_equal(chosen.nmes, evaluate(plain, loader, "aflw", progress=False).nmes)


def test_sources_travel_with_the_batches(tmp_path: Path) -> None:
    data = mixed_dataset(seed=6)

    def with_sources(samples: list[dict]) -> dict:
        batch = collate(samples)
        batch["source"] = [f"photo_{s['index'].item()}.jpg" for s in samples]
        return batch

    loader = DataLoader(data, batch_size=3, collate_fn=with_sources)
    result = evaluate(TableModel(data), loader, "wider5", progress=False)
    faces, _ = expected_nmes(data, "wider5")
    assert result.sources == [f"photo_{i}.jpg" for i in faces]  # not the dataset's records
    with result.save(tmp_path, "m")["per_image"].open(newline="") as f:
        assert [r["source"] for r in csv.DictReader(f)] == result.sources


# --------------------------------------------------------------------------- pose bins, health


def five_point_face(yaw: float, rng: np.random.Generator) -> np.ndarray:
    """A wider5 face (eyes, nose tip, mouth corners) whose estimated yaw is ``yaw`` degrees:
    the nose tip sits at ``0.5 - k tan(yaw)`` of the eye-to-eye line, k = 0.65 for eye
    centres (:mod:`sepbn.data.domains`)."""
    t = 0.5 - 0.65 * math.tan(math.radians(yaw))
    unit = np.array([[0.0, 0.0], [1.0, 0.0], [t, 0.6], [0.15, 1.0], [0.85, 1.0]])
    return unit * rng.uniform(50, 90) + rng.uniform(40, 80, 2)


def test_every_evaluation_reports_nme_per_head_pose_bin(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    yaws = [3.0, -10.0, 20.0, 50.0, -35.0, 12.0]  # frontal, frontal, moderate, profile x2, frontal
    data = FakeFaces(["wider5"] * 6, seed=7, shapes=[five_point_face(y, rng) for y in yaws])
    loader = DataLoader(data, batch_size=4, collate_fn=collate)
    result = evaluate(CrossTableModel(data), loader, "wider5", progress=False)
    _, nmes = expected_nmes(data, "wider5")  # the reference loop, face by face
    assert result.pose == pytest.approx(
        {
            "nme_pose_frontal": (nmes[0] + nmes[1] + nmes[5]) / 3,
            "count_pose_frontal": 3,
            "nme_pose_moderate": nmes[2],
            "count_pose_moderate": 1,
            "nme_pose_profile": (nmes[3] + nmes[4]) / 2,
            "count_pose_profile": 2,
            "count_pose_unknown": 0,
        },
        rel=1e-4,
    )
    summary = result.summary()  # the dict of eval/summary.json: one level, with nme beside
    assert summary["nme"] == pytest.approx(np.mean(nmes), rel=1e-4)
    assert summary["count_pose_profile"] == 2 and "nme_pose_moderate" in summary
    saved = json.loads(result.save(tmp_path, "m")["summary"].read_text())
    assert saved["pose_bins"]["edges"] == list(POSE_BIN_EDGES)
    assert saved["pose_bins"]["nme_pose_frontal"] == result.pose["nme_pose_frontal"]
    assert "attention_health" not in saved  # no SepBN layer


def test_unannotated_faces_are_counted_as_unknown_pose() -> None:
    data = FakeFaces(["aflw"] * 3, seed=8)
    data.samples[1]["valid"][:] = True  # every point: a measurable yaw
    for i in (0, 2):  # no nose tip (AFLW point 13): the yaw cannot be measured
        data.samples[i]["valid"][13] = False
    loader = DataLoader(data, batch_size=3, collate_fn=collate)
    pose = evaluate(TableModel(data), loader, "aflw", progress=False).pose
    assert pose["count_pose_unknown"] == 2
    assert sum(v for k, v in pose.items() if k.startswith("count_")) == 3


class SepTableModel(TableModel):
    """TableModel whose (zero-weighted) feature passes a SepBN layer."""

    def __init__(self, dataset: FakeFaces) -> None:
        super().__init__(dataset)
        self.conv = nn.Conv2d(3, 2, 1)
        self.norm = SepBatchNorm2d(2, num_sets=3, num_groups=2, pool_size=2)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x) + 0 * self.norm(self.conv(x)).mean()


def test_evaluation_reports_the_attention_health_of_its_faces() -> None:
    data = FakeFaces(["aflw"] * 5, seed=9)
    loader = DataLoader(data, batch_size=2, collate_fn=collate)
    model = SepTableModel(data)
    result = evaluate(model, loader, "aflw", progress=False)
    health = result.attention_health["norm"]
    assert health.num_samples == 5
    assert result.summary()["attn/norm/entropy"] == health.entropy
    assert not model.norm.keep_attention and model.norm.last_attention is None  # restored
    np.testing.assert_allclose(result.nmes, expected_nmes(data, "aflw")[1], rtol=1e-4)
