"""MTFL (Multi-Task Facial Landmark, Zhang et al., ECCV 2014): 5 points on loose face crops.

One face per line, space separated::

    path x1 x2 x3 x4 x5 y1 y2 y3 y4 y5 [gender smile glasses head_pose]

``path`` is relative to the MTFL folder (the original lists write it with backslashes and a
leading space; both are accepted). The points are the left eye centre, right eye centre, nose
tip, left and right mouth corner ("left" = the image's left): the ``wider5`` protocol. The
four optional attribute columns are MTFL's integer codes: gender (1 male, 2 female), smile
(1 yes, 2 no), glasses (1 yes, 2 no) and head pose (1 left profile, 2 left, 3 frontal,
4 right, 5 right profile).

Splits: ``train`` = ``new_training.txt`` (10,000 faces: ``lfw_5590/`` and ``net_7876/``),
``test`` = ``new_testing.txt`` (2,995 ``AFLW/`` faces); the 80 x 80 redistribution names its
lists so. The original lists ``training.txt`` / ``testing.txt`` are used when the ``new_``
ones are absent.

Coordinates: the ``lfw_5590`` and ``net_7876`` rows are read as 0-based pixels, the ``AFLW``
rows (the test split) as 1-based: 1 is subtracted from x and y (``aflw_one_based=False``
keeps the published values). Measured on the 80 x 80 redistribution with
``scripts/mtfl_box_rule.py --mirror --mtcnn``:

* Mirror check, x only: for each near-frontal face, the column about which its pixels best
  match their mirror image, against the mean x of the eye centres and mouth corners. The
  published labels sit right of it by +0.19 px (``lfw_5590``, 574 faces), +0.26 px
  (``net_7876``, 511) and +1.08 px (``AFLW``, 312), standard errors 0.03-0.06 px. The same
  check gives -0.02 px on synthetic faces with exact 0-based labels and +0.55 px (1.0% of
  the eye distance) on the 300-W training crops as this project reads them.
* MTCNN check: MTCNN's five points minus the labels, median over each part: (+0.15, +0.14)
  px for ``lfw_5590``, (+0.06, +0.13) for ``net_7876``, (-1.12, -0.89) for ``AFLW``.

So the ``AFLW`` labels sit about 1 px right of and below where the train part's convention
puts them, in both axes, as 1-based coordinates do. (The ``lfw_5590`` values are all
multiples of 0.08: quarter-pixel coordinates of the 250 x 250 LFW images times 80/250.)

Misregistered rows: in ``new_training.txt`` the 2,350 ``net_7876/_*.jpg`` rows (lines
7651-10000) are labelled about 28 px above their face: MTCNN's points lie (-0.2, +27.9) px
from them (medians), and every one is off by more than half an eye distance, against 0.2%
of the other ``net_7876`` rows. The 97 rows with a point outside the crop are among them.
They are left out by default (``drop_misregistered``) and reported, so ``train`` keeps 7,650.

The face box: the crops are loose (the face fills roughly the central 60-70%), so the box is
derived from the five points by :func:`face_box_from_five` so that MTFL faces are framed like
300-W faces, whose box is the tight box of their 68 points (squared by the transforms).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sepbn.data.errors import DatasetError, SkipReport
from sepbn.data.formats._common import (
    NOT_A_NUMBER,
    ErrorPolicy,
    check_split,
    number_problem,
    parse_rows,
    read_lines,
)
from sepbn.data.records import FaceRecord

NUM_POINTS = 5
MTFL_SPLITS = ("train", "test")
# Per split: the 80 x 80 redistribution's list first, then the original MTFL name.
LIST_FILES = {
    "train": ("new_training.txt", "training.txt"),
    "test": ("new_testing.txt", "testing.txt"),
}
_TOKENS = 1 + 2 * NUM_POINTS  # 11: path, 5 x, 5 y
_TOKENS_ATTR = _TOKENS + 4  # 15: with gender, smile, glasses, head pose
HEAD_POSES = ("left_profile", "left", "frontal", "right", "right_profile")  # codes 1..5
# Image-path prefix of the part whose coordinates are 1-based (module docstring).
ONE_BASED_PART = "AFLW/"
# Image-path prefix of the rows of the 80 x 80 redistribution (lists named new_*.txt) whose
# labels lie about 28 px above their face (module docstring).
MISREGISTERED_PART = "net_7876/_"
MISREGISTERED = "label about 28 px above its face (net_7876/_* rows of the 80x80 lists)"

# The box rule, fitted by least squares on the 1675 300-W training crops
# (scripts/mtfl_box_rule.py). With e, m the midpoints of the eyes and of the mouth corners:
#   side   = BOX_SIDE_EYE_MOUTH |m - e| + BOX_SIDE_EYES |right eye - left eye|
#   centre = (e + m) / 2 + BOX_SHIFT_DOWN (m - e) + BOX_SHIFT_NOSE n_perp
# where n_perp is the nose tip's offset from (e + m) / 2 across the eye-mouth axis (the box
# moves away from the side the nose points to: a turned head shows more of the other cheek).
# IoU of this square with the square 68-point box: mean 0.856, 5th percentile 0.736 on the
# training crops; mean 0.853, 5th percentile 0.734 on the 506 held-out 300-W test faces
# (against 0.783 / 0.628 with the side from |m - e| alone and no nose term).
BOX_SIDE_EYE_MOUTH = 0.971
BOX_SIDE_EYES = 1.302
BOX_SHIFT_DOWN = 0.143
BOX_SHIFT_NOSE = -1.095


def face_box_from_five(points: np.ndarray) -> np.ndarray:
    """The square face box of 5-point faces, framed like the tight box of 300-W's 68 points.

    The rule and how well it fits: see the constants above. A square that would leave one of
    the five points out (11 train and 31 test faces of MTFL, 35 of them with an estimated yaw
    beyond 30 degrees) is grown to hold them; this leaves the 300-W IoU unchanged.

    Args:
        points: Left eye, right eye, nose tip, left and right mouth corner, in pixels.

    Shape:
        - points: ``(..., 5, 2)``.
        - output: ``(..., 4)`` as ``x_min, y_min, x_max, y_max`` (a square).
    """
    p = np.asarray(points, dtype=np.float64)
    eyes = (p[..., 0, :] + p[..., 1, :]) / 2  # (..., 2)
    mouth = (p[..., 3, :] + p[..., 4, :]) / 2
    down = mouth - eyes
    eye_mouth = np.linalg.norm(down, axis=-1)  # (...,)
    inter_ocular = np.linalg.norm(p[..., 1, :] - p[..., 0, :], axis=-1)
    # Unit eye-to-mouth direction; straight down when eyes and mouth coincide.
    with np.errstate(invalid="ignore", divide="ignore"):
        axis = np.where(eye_mouth[..., None] > 0, down / eye_mouth[..., None], [0.0, 1.0])
    mid = (eyes + mouth) / 2
    nose = p[..., 2, :] - mid
    nose_across = nose - np.sum(nose * axis, axis=-1, keepdims=True) * axis
    centre = mid + BOX_SHIFT_DOWN * down + BOX_SHIFT_NOSE * nose_across
    half = (BOX_SIDE_EYE_MOUTH * eye_mouth + BOX_SIDE_EYES * inter_ocular)[..., None] / 2
    # Profiles beyond 300-W's range can push the nose out; grow the square to hold all five.
    lo = np.minimum(centre - half, p.min(axis=-2))
    hi = np.maximum(centre + half, p.max(axis=-2))
    centre, half = (lo + hi) / 2, np.max(hi - lo, axis=-1, keepdims=True) / 2
    return np.concatenate([centre - half, centre + half], axis=-1)


def _list_file(path: Path, split: str | None) -> Path:
    if not path.is_dir():
        return path
    check_split("mtfl", split, MTFL_SPLITS)
    assert split is not None  # check_split accepts "train" and "test" only
    for name in LIST_FILES[split]:
        if (path / name).is_file():
            return path / name
    raise DatasetError(str(path), f"no MTFL {split} list: looked for {list(LIST_FILES[split])}")


def _attributes(tokens: list[str]) -> tuple[dict[str, bool] | None, str | None]:
    """MTFL's four integer codes (finite numbers) as named flags, or None and why not."""
    gender, smile, glasses, pose = (float(t) for t in tokens)
    if not all(c in (1.0, 2.0) for c in (gender, smile, glasses)):
        return None, f"gender, smile and glasses must be 1 or 2, got {' '.join(tokens[:3])}"
    if pose not in (1.0, 2.0, 3.0, 4.0, 5.0):
        return None, f"head pose must be 1..5, got {tokens[3]}"
    flags = {"male": gender == 1, "smiling": smile == 1, "glasses": glasses == 1}
    # "pose" as in WFLW (large pose), so `sepbn eval` reports a profile subset.
    flags["pose"] = pose in (1.0, 5.0)
    flags.update({f"pose_{name}": pose == k for k, name in enumerate(HEAD_POSES, start=1)})
    return flags, None


def read_mtfl(
    path: str | Path,
    split: str | None = None,
    *,
    image_root: str | Path | None = None,
    on_error: str = "raise",
    report: SkipReport | None = None,
    check_images: bool = True,
    aflw_one_based: bool = True,
    drop_misregistered: bool = True,
) -> list[FaceRecord]:
    """Read an MTFL list as 5-point records (protocol ``"wider5"``).

    Args:
        path: The MTFL folder (then ``split`` picks the list) or a list file.
        split: ``"train"`` or ``"test"``; required for a folder, optional for a file.
        image_root: Folder the image paths are relative to; default: the list's folder.
        on_error: ``"raise"`` or ``"skip"`` bad lines and missing images.
        report: Collects skipped records.
        check_images: Check that every referenced image file exists.
        aflw_one_based: Read the ``AFLW/`` rows (the test split) as 1-based: subtract 1
            from x and y. False keeps the published values, e.g. to compare with published
            MTFL scores.
        drop_misregistered: Leave out the ``net_7876/_*`` rows of the 80 x 80 lists
            (``new_*.txt``), whose labels do not match their images; each is reported in
            ``report`` and the final warning, never raised.

    Returns:
        One record per kept line; ``box`` from :func:`face_box_from_five`; ``attributes`` from the
        optional columns (``male``, ``smiling``, ``glasses``, ``pose`` for a profile, and
        one ``pose_<class>`` flag per head-pose class), empty without them; ``source``
        ``"file:line"``. Points outside the image are kept and valid.

    Raises:
        DatasetError: With ``on_error="raise"``, the first bad line (wrong token count, a
            token that is not a finite number, an attribute code out of range, a missing
            image, a face whose box is degenerate), naming file and line.
    """
    check_split("mtfl", split, (None, *MTFL_SPLITS))
    path = _list_file(Path(path), split)
    lines = read_lines(path)
    root = Path(image_root) if image_root is not None else path.parent
    policy = ErrorPolicy.create(on_error, report, path)
    rows: list[tuple[int, list[str]]] = []
    for lineno, line in enumerate(lines, start=1):
        tokens = line.split()
        if not tokens:
            continue
        if len(tokens) not in (_TOKENS, _TOKENS_ATTR):
            policy.fail(
                f"{path}:{lineno}",
                f"expected {_TOKENS} tokens (path, x1..x5, y1..y5) or {_TOKENS_ATTR} (and "
                f"gender, smile, glasses, head pose), got {len(tokens)}",
                "wrong number of tokens",
            )
            continue
        rows.append((lineno, tokens))
    if not rows:
        return policy.finish([])
    names = [t[0].replace("\\", "/") for _, t in rows]
    values, problems = parse_rows([t[1:_TOKENS] for _, t in rows])  # (F, 10)
    points = np.stack([values[:, :NUM_POINTS], values[:, NUM_POINTS:]], axis=-1)  # (F, 5, 2)
    if aflw_one_based:
        points[[n.startswith(ONE_BASED_PART) for n in names]] -= 1.0
    redistributed = path.name.startswith("new_")
    with np.errstate(invalid="ignore", over="ignore"):  # rows with inf/NaN are dropped below
        boxes = face_box_from_five(points)  # (F, 4)
    records = []
    for f, (lineno, tokens) in enumerate(rows):
        source = f"{path}:{lineno}"
        problem = problems[f]
        if problem is not None:
            # Again with a number in the path's place, so that "token i" counts the line.
            problem = number_problem(["0", *tokens[1:_TOKENS]]) or problem
        elif len(tokens) == _TOKENS_ATTR:
            problem = number_problem(["0"] * _TOKENS + tokens[_TOKENS:])
        if problem is not None:
            policy.fail(source, problem, NOT_A_NUMBER)
            continue
        attributes: dict[str, bool] = {}
        if len(tokens) == _TOKENS_ATTR:
            flags, reason = _attributes(tokens[_TOKENS:])
            if flags is None:
                policy.fail(source, str(reason), "attribute code out of range")
                continue
            attributes = flags
        if drop_misregistered and redistributed and names[f].startswith(MISREGISTERED_PART):
            reason = f"{MISREGISTERED}; drop_misregistered=False keeps it"
            policy.note(DatasetError(source, reason, MISREGISTERED))
            continue
        image = root / names[f]
        if check_images and not policy.check_image(image, source):
            continue
        record = FaceRecord(
            image_path=image,
            landmarks=points[f],
            box=boxes[f],
            protocol="wider5",
            attributes=attributes,
            source=source,
        )
        if policy.accept(record):
            records.append(record)
    return policy.finish(records)
