"""validate_record: each check fires on a crafted bad record and passes a good one."""

from __future__ import annotations

import numpy as np
import pytest

from sepbn.data.errors import DatasetError
from sepbn.data.records import FaceRecord, box_from_landmarks
from sepbn.data.validation import validate_record


def _face(n: int = 5, protocol: str = "wider5", **kw: object) -> FaceRecord:
    # A 5-point face inside the box (100, 100)-(200, 200).
    pts = np.array([[130.0, 140.0], [170.0, 140.0], [150.0, 160.0], [135.0, 180.0], [165, 180]])
    fields = {
        "image_path": None,
        "landmarks": pts[:n],
        "box": np.array([100.0, 100.0, 200.0, 200.0]),
        "protocol": protocol,
        "source": "faces.txt:7",
    }
    fields.update(kw)
    return FaceRecord(**fields)  # type: ignore[arg-type]


def test_good_record_passes_unchanged() -> None:
    rec = _face()
    before = {k: np.copy(v) for k, v in vars(rec).items() if isinstance(v, np.ndarray)}
    assert validate_record(rec) is None
    assert validate_record(rec, image_shape=(300, 300, 3)) is None
    for name, value in before.items():  # a check, not a repair
        np.testing.assert_array_equal(getattr(rec, name), value, err_msg=name)
    # The same face in a smaller image fails: the image shape is checked, not ignored.
    with pytest.raises(DatasetError, match="outside the 100x300 image"):
        validate_record(rec, image_shape=(300, 100, 3))


def test_wrong_point_count_names_protocol_and_source() -> None:
    with pytest.raises(
        DatasetError, match=r"faces\.txt:7: 4 landmarks, but protocol 'wider5' has 5"
    ):
        validate_record(_face(n=4))


def test_unknown_protocol_lists_valid_ones() -> None:
    with pytest.raises(DatasetError, match=r"unknown landmark protocol 'nope'; valid: \[.*'300w'"):
        validate_record(_face(protocol="nope"))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_landmark_names_point(bad: float) -> None:
    rec = _face()
    rec.landmarks[3, 1] = bad
    with pytest.raises(DatasetError, match=r"non-finite landmark coordinates at point\(s\) \[3\]"):
        validate_record(rec)


def test_non_finite_invalid_point_is_still_an_error() -> None:
    # Readers store 0.0 at unannotated points; NaN would poison losses through masking.
    rec = _face(valid=np.array([True, True, True, True, False]))
    rec.landmarks[4] = np.nan
    with pytest.raises(DatasetError, match="non-finite"):
        validate_record(rec)


def test_no_valid_points() -> None:
    with pytest.raises(DatasetError, match="no valid"):
        validate_record(_face(valid=np.zeros(5, bool)))


@pytest.mark.parametrize(
    "box",
    [
        [100.0, 100.0, 101.0, 200.0],  # width exactly 1 px
        [100.0, 100.0, 200.0, 100.5],  # height below 1 px
        [200.0, 100.0, 100.0, 200.0],  # x_max < x_min
    ],
)
def test_degenerate_box(box: list[float]) -> None:
    with pytest.raises(DatasetError, match=r"faces\.txt:7: degenerate box"):
        validate_record(_face(box=np.array(box)))


def test_box_with_nan() -> None:
    with pytest.raises(DatasetError, match="box must be 4 finite numbers"):
        validate_record(_face(box=np.array([100.0, np.nan, 200.0, 200.0])))


def test_landmark_far_outside_box_uses_tolerance() -> None:
    # Box size 100, default tolerance 1.0: x = 200 + 100 is the limit.
    rec = _face()
    rec.landmarks[2] = [299.0, 150.0]
    validate_record(rec)
    rec.landmarks[2] = [301.0, 150.0]
    with pytest.raises(DatasetError, match=r"landmark\(s\) \[2\] lie more than 1 x the box size"):
        validate_record(rec)
    validate_record(rec, box_tolerance=1.5)


def test_invalid_points_are_not_checked_against_the_box() -> None:
    rec = _face(valid=np.array([True, True, True, True, False]))
    rec.landmarks[4] = [-150.0, 0.0]  # far from the box and the image, but not annotated
    assert validate_record(rec, image_shape=(300, 300)) is None
    rec.valid[4] = True  # the same point annotated fails both checks, the box's first
    with pytest.raises(DatasetError, match=r"landmark\(s\) \[4\] lie more than 1 x the box size"):
        validate_record(rec, image_shape=(300, 300))
    with pytest.raises(DatasetError, match=r"\[4\] lie more than 0.5 x the box size .* image"):
        validate_record(rec, image_shape=(300, 300), box_tolerance=5.0)


def test_outside_image_border_tolerance() -> None:
    # Image 220 wide: the last column is 219; 50% of the 100 px box allows x <= 269.
    rec = _face(box=np.array([150.0, 100.0, 250.0, 200.0]))
    rec.landmarks[:, 0] += 60.0
    rec.landmarks[1, 0] = 268.0
    validate_record(rec, image_shape=(300, 220, 3))
    rec.landmarks[1, 0] = 270.5
    with pytest.raises(
        DatasetError, match=r"\[1\] lie more than 0.5 x the box size .* 220x300 image"
    ):
        validate_record(rec, image_shape=(300, 220, 3))
    rec.landmarks[1, 0] = 200.0
    rec.landmarks[0, 1] = -51.0
    rec.box = np.array([150.0, -10.0, 250.0, 90.0])
    with pytest.raises(DatasetError, match=r"\[0\]"):
        validate_record(rec, image_shape=(300, 220))


def test_shape_errors() -> None:
    with pytest.raises(DatasetError, match=r"landmarks must have shape \(L, 2\)"):
        validate_record(_face(landmarks=np.zeros((5, 3))))
    with pytest.raises(DatasetError, match=r"occluded must have shape \(5,\)"):
        validate_record(_face(occluded=np.zeros(4, bool)))
    with pytest.raises(ValueError, match="image_shape"):
        validate_record(_face(), image_shape=(300,))


# Bad input, round two (issue 22).


@pytest.mark.parametrize("domain", ["left", 1.0, True, -2, 2**40])
def test_domain_must_be_an_integer_label(domain: object) -> None:
    with pytest.raises(DatasetError, match=r"domain must be None or an integer in -1\.\.") as info:
        validate_record(_face(domain=domain))
    assert info.value.category == "bad domain"
    for good in (None, -1, 0, 2, np.int64(1)):
        validate_record(_face(domain=good))


def test_a_huge_box_does_not_stretch_the_border_allowance() -> None:
    # Points spread to +-1e300 make a box so large that half of it covered any image.
    rec = _face()
    rec.landmarks[0] = (1e300, 1e300)
    rec.landmarks[1] = (-1e300, -1e300)
    rec.box = box_from_landmarks(rec.landmarks)
    validate_record(rec)  # without the image nothing says the box is wrong
    with pytest.raises(DatasetError, match=r"\[0, 1\] lie more than 0.5 x the image's larger side"):
        validate_record(rec, image_shape=(300, 300, 3))


def test_a_box_far_from_its_image_is_refused() -> None:
    rec = _face()
    rec.box = np.array([-5000.0, -5000.0, 5000.0, 5000.0])  # holds the points, dwarfs the image
    with pytest.raises(DatasetError, match="lies outside the 300x300 image or is more than 2 x"):
        validate_record(rec, image_shape=(300, 300, 3))
